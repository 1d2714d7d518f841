"""Real servers for the test suite, on free ports in throwaway folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reco.stack import servers
from reco.stack.health import free_port, postgres_accepts, tcp_open, wait_until

JARS_DIR = servers.REPO_ROOT / ".reco" / "jars"


@dataclass
class ServerProcess:
    name: str
    command: list[str]
    port: int
    workdir: Path
    startup_timeout_s: float = 60.0
    # Ready beyond an open port (PostgreSQL listens before it accepts: "starting up").
    ready: Callable[[], bool] | None = field(default=None, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> ServerProcess:
        if self.process is not None and self.process.poll() is None:
            # Running already: a second server would fail to bind, pass the port check on the
            # first one's port, and take its place here, leaving the first running for ever.
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        ready = self.ready or (lambda: True)
        up = wait_until(lambda: tcp_open("127.0.0.1", self.port) and ready(),
                        self.startup_timeout_s, alive=lambda: self.process.poll() is None)
        if not up:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


_SCRATCH_DIRS: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A folder the `postgres` user can reach too (pytest's tmp folders are root-only); removed
    after a passing session (`remove_scratch_dirs`), kept with its logs after a failing one."""
    path = Path(tempfile.mkdtemp(prefix=f"reco-test-{prefix}-", dir="/tmp"))
    path.chmod(0o755)
    _SCRATCH_DIRS.append(path)
    return path


def remove_scratch_dirs() -> None:
    """Every scratch folder of this session: a demo's stack alone is ~150 MB a run."""
    while _SCRATCH_DIRS:
        shutil.rmtree(_SCRATCH_DIRS.pop(), ignore_errors=True)


def start_postgres() -> ServerProcess:
    workdir = scratch_dir("pg")
    data = workdir / "data"
    servers.prepare_postgres(data)
    port = free_port()
    return ServerProcess("postgres", servers.postgres_command(data, port), port, workdir,
                         ready=lambda: postgres_accepts(port)).start()


def start_redis() -> ServerProcess:
    workdir = scratch_dir("redis")
    port = free_port()
    cmd = servers.redis_command(workdir / "data", port, persist=True)
    return ServerProcess("redis", cmd, port, workdir).start()


def start_kafka() -> ServerProcess:
    workdir = scratch_dir("kafka")
    port, controller = free_port(), free_port()
    config = servers.prepare_kafka(JARS_DIR, workdir / "data", port, controller)
    cmd = servers.kafka_command(JARS_DIR, config, heap="384m")
    return ServerProcess("kafka", cmd, port, workdir, startup_timeout_s=90).start()


def remove(server: ServerProcess) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)
