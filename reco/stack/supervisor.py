"""The process runner of the local stack: supervisord, driven through its XML-RPC interface."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from reco.stack import servers
from reco.stack.components import Component

# Signals that make each server shut down cleanly (postgres: INT is "fast" shutdown).
_STOP_SIGNALS = {"postgres": "INT"}


class Supervisor:
    """One supervisord per state folder; every component is a program it runs."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.config_path = self.state_dir / "supervisord.conf"
        self.socket_path = self.run_dir / "supervisor.sock"
        self.pid_path = self.run_dir / "supervisord.pid"

    @property
    def rpc(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault):
            return False

    def write_config(self, components: list[Component]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sections = [
            f"[unix_http_server]\nfile={self.socket_path}\nchmod=0700\n",
            f"[supervisord]\nlogfile={self.log_dir / 'supervisord.log'}\npidfile={self.pid_path}\n"
            f"childlogdir={self.log_dir}\ndirectory={servers.REPO_ROOT}\n"
            "logfile_maxbytes=10MB\nlogfile_backups=2\n",
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{self.socket_path}\n",
        ]
        for priority, component in enumerate(components, start=1):
            command = shlex.join(component.command).replace("%", "%%")
            sections.append(
                f"[program:{component.name}]\ncommand={command}\n"
                f"priority={priority * 10}\nautostart=false\nautorestart=true\nstartsecs=1\n"
                f"startretries=3\nstopsignal={_STOP_SIGNALS.get(component.name, 'TERM')}\n"
                "stopwaitsecs=60\nstopasgroup=true\nkillasgroup=true\nredirect_stderr=true\n"
                f"stdout_logfile={self.log_path(component.name)}\n"
                "stdout_logfile_maxbytes=20MB\nstdout_logfile_backups=2\n"
            )
        # Owner only: no command line holds a password any more (they show in `ps`, so secrets
        # go through the environment), but the file says where every store is and how each
        # process is run.
        self.config_path.touch(mode=0o600)
        self.config_path.chmod(0o600)
        self.config_path.write_text("\n".join(sections))

    def start_daemon(self, env: dict[str, str]) -> None:
        """Start supervisord, or make a running one pick up added programs."""
        if self.running():
            added, changed, removed = self.rpc.supervisor.reloadConfig()[0]
            for name in removed:
                # No longer configured: left running, it would be out of `reco status`, out of
                # Prometheus' targets, and still consuming.
                self.rpc.supervisor.stopProcessGroup(name, True)
                self.rpc.supervisor.removeProcessGroup(name)
            for name in added:
                self.rpc.supervisor.addProcessGroup(name)
            for name in changed:
                # A running program keeps its old command line until it is restarted.
                if not self.is_running(name):
                    self.rpc.supervisor.removeProcessGroup(name)
                    self.rpc.supervisor.addProcessGroup(name)
            return
        subprocess.run(
            [servers.venv_bin("supervisord"), "-c", str(self.config_path)], env=env, check=True
        )
        deadline = time.monotonic() + 15
        while not self.running():
            if time.monotonic() > deadline:
                log = self.log_dir / "supervisord.log"
                raise RuntimeError(f"supervisord did not start; see {log}")
            time.sleep(0.1)

    def environment(self) -> dict[str, str] | None:
        """The environment the running supervisord was started with, which every program it
        starts inherits; None when it is not running or /proc does not tell."""
        try:
            raw = Path(f"/proc/{int(self.rpc.supervisor.getPID())}/environ").read_bytes()
        except (OSError, ValueError, xmlrpc.client.Fault):
            return None
        pairs = (entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0"))
        return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}

    def info(self, name: str) -> dict:
        return self.rpc.supervisor.getProcessInfo(name)

    def all_info(self) -> dict[str, dict]:
        if not self.running():
            return {}
        return {p["name"]: p for p in self.rpc.supervisor.getAllProcessInfo()}

    def is_running(self, name: str) -> bool:
        return self.info(name)["statename"] in ("RUNNING", "STARTING", "BACKOFF")

    def start(self, name: str) -> None:
        if not self.is_running(name):
            self.rpc.supervisor.startProcess(name, False)

    def stop(self, name: str) -> None:
        if self.is_running(name):
            self.rpc.supervisor.stopProcess(name, True)

    def shutdown(self, timeout_s: float = 90.0) -> None:
        """Stop every program in reverse order, then supervisord itself, and wait for it."""
        if not self.running():
            return
        pid = int(self.pid_path.read_text()) if self.pid_path.exists() else None
        self.rpc.supervisor.shutdown()
        deadline = time.monotonic() + timeout_s
        while pid and _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_path(name)
        if not path.exists():
            return "(no log yet)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
