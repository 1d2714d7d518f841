"""scripts/install-system-deps.sh with stand-in commands: what it installs, and with what."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-system-deps.sh"
PRESENT = ["java", "mvn", "redis-server", "prometheus", "promtool", "prometheus-redis-exporter",
           "prometheus-postgres-exporter", "prometheus-node-exporter", "wrk", "python3"]
RECORDED = ["sudo", "apt-get", "service", "systemctl"]
SYSTEMD = Path("/run/systemd/system").is_dir()

pytestmark = pytest.mark.skipif(
    not list(Path("/usr/lib").glob("postgresql/*/bin/postgres")),
    reason="the script looks for PostgreSQL's binaries on the real file system")


def _java(before: str, after: str, installed: Path) -> str:
    """A `java` that reports version `before`, and `after` once apt-get installed Java 17."""
    return (f'if [ -f {installed} ]; then v="{after}"; else v="{before}"; fi\n'
            'echo "openjdk version \\"$v\\" 2024-01-16" >&2')


def _run(tmp_path: Path, uid: int, absent: tuple[str, ...] = (), java: str = "17.0.15",
         java_after: str = "17.0.15", status: int = 0) -> list[str]:
    """Run the script with only stand-ins on PATH; returns the commands it ran, in order."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    installed = tmp_path / "java-17-installed"
    bin_dir.mkdir()
    log.touch()
    stubs = {"id": f"echo {uid}"}
    stubs |= {name: "exit 0" for name in PRESENT if name not in absent}
    if "java" not in absent:
        stubs["java"] = _java(java, java_after, installed)
    stubs |= {name: f'echo "{name} $*" >> {log}' for name in RECORDED}
    stubs["apt-get"] += f'\ncase "$*" in *openjdk-17*) : > {installed};; esac'
    stubs["sudo"] = f'echo "sudo $*" >> {log}; exec "$@"'
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "sort").symlink_to(shutil.which("sort"))
    result = subprocess.run([shutil.which("bash"), str(SCRIPT)], env={"PATH": str(bin_dir)},
                            capture_output=True, text=True)
    assert result.returncode == status, result.stderr
    if status:
        assert "sudo update-alternatives --config java" in result.stderr
    return log.read_text().splitlines()


def test_a_user_without_runuser_on_path_installs_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path, uid=1000) == []


def test_root_without_runuser_installs_util_linux_without_sudo(tmp_path: Path) -> None:
    calls = _run(tmp_path, uid=0)
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq --no-install-recommends util-linux"]


@pytest.mark.parametrize("server", ["redis-server", "prometheus-redis-exporter",
                                    "prometheus-postgres-exporter", "prometheus-node-exporter"])
def test_a_server_it_installs_is_stopped_and_kept_from_starting_at_boot(tmp_path: Path,
                                                                       server: str) -> None:
    """Debian starts it as a service on install; the stack runs its own on the same port."""
    calls = _run(tmp_path, uid=1000, absent=(server,))
    stop = ([f"sudo systemctl disable --now {server}", f"systemctl disable --now {server}"]
            if SYSTEMD else [f"sudo service {server} stop", f"service {server} stop"])
    assert calls == ["sudo apt-get update -qq", "apt-get update -qq",
                     f"sudo apt-get install -y -qq --no-install-recommends {server}",
                     f"apt-get install -y -qq --no-install-recommends {server}", *stop]


@pytest.mark.parametrize("version", ["11.0.22", "1.8.0_392"])
def test_a_java_older_than_17_gets_java_17(tmp_path: Path, version: str) -> None:
    """Kafka 4 and PySpark 4 need Java 17: an older `java` on PATH does not count."""
    calls = _run(tmp_path, uid=1000, java=version)
    assert calls == ["sudo apt-get update -qq", "apt-get update -qq",
                     "sudo apt-get install -y -qq --no-install-recommends "
                     "openjdk-17-jre-headless",
                     "apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless"]


@pytest.mark.parametrize("version", ["17.0.15", "21.0.2", "21"])
def test_java_17_or_newer_is_enough(tmp_path: Path, version: str) -> None:
    assert _run(tmp_path, uid=1000, java=version) == []


def test_an_older_java_still_selected_after_the_install_is_an_error(tmp_path: Path) -> None:
    # Debian's alternatives in manual mode keep pointing `java` at the older one.
    calls = _run(tmp_path, uid=1000, java="11.0.22", java_after="11.0.22", status=1)
    assert calls[-1] == "apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless"
