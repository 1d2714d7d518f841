#!/usr/bin/env bash
# Installs the Debian packages the local stack needs, only those that are missing.
set -euo pipefail

declare -A needs=(
  [python3]=python3
  [java]=openjdk-17-jre-headless
  [mvn]=maven
  [redis-server]=redis-server
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-redis-exporter]=prometheus-redis-exporter
  [prometheus-postgres-exporter]=prometheus-postgres-exporter
  [prometheus-node-exporter]=prometheus-node-exporter
  [wrk]=wrk  # the benchmarks' closed-loop load generator
)
root=false
if [ "$(id -u)" -eq 0 ]; then
  root=true
  # Only root needs runuser (to run PostgreSQL unprivileged); it lives in /usr/sbin, which is
  # not on other users' PATH.
  needs[runuser]=util-linux
fi
# The major version of the `java` on PATH ("1.8.0_392" is 8, "17.0.15" is 17), 0 if unknown.
java_major() {
  local out
  out=$(java -version 2>&1) || true
  [[ $out =~ version\ \"([0-9]+)(\.([0-9]+))? ]] || { echo 0; return; }
  if [ "${BASH_REMATCH[1]}" = 1 ]; then echo "${BASH_REMATCH[3]:-0}"; else echo "${BASH_REMATCH[1]}"; fi
}
missing=()
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
# Kafka 4 and PySpark 4 need Java 17 or newer: an older `java` does not count.
if command -v java >/dev/null 2>&1 && [ "$(java_major)" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
# PostgreSQL's server binaries live outside PATH.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing system packages: ${missing[*]}"
sudo=""
$root || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts the servers it just installed as services (and, under systemd, at every boot);
# the stack runs its own copies on the same ports. Leave servers installed before alone.
for svc in redis-server postgresql prometheus prometheus-redis-exporter \
    prometheus-postgres-exporter prometheus-node-exporter; do
  [[ " ${missing[*]} " == *" $svc "* ]] || continue
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  fi
done
# After the services are stopped: an error here must not leave them running (on their ports).
if [ "$(java_major)" -lt 17 ]; then
  # Debian's alternatives in manual mode keep the older Java as `java`.
  echo "java on PATH is still Java $(java_major), Kafka and Spark need 17+:" \
    "select it with: sudo update-alternatives --config java" >&2
  exit 1
fi
