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
missing=()
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
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
