"""`reco up/down/status/logs`: the local stack as plain functions."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from reco.settings import Settings
from reco.stack.components import Component, build_components, process_env
from reco.stack.health import tcp_open, wait_until
from reco.stack.supervisor import Supervisor


class ComponentFailed(RuntimeError):
    """A component did not become healthy; the message carries the tail of its log."""


@dataclass
class ComponentStatus:
    name: str
    state: str
    healthy: bool
    url: str | None
    uptime_s: int | None


def up(settings: Settings, console: Console, only: set[str] | None = None) -> list[Component]:
    """Start every component in order and wait for each to be healthy; harmless if running."""
    components = build_components(settings)
    if only is not None:
        check_known(only, {c.name for c in components})
    check_ports_distinct(components)
    supervisor = Supervisor(settings.state_dir)
    check_settings_unchanged(settings, supervisor)
    supervisor.write_config(components)
    supervisor.start_daemon(process_env(settings))
    for component in components:
        if only is not None and component.name not in only:
            continue
        _bring_up(component, supervisor, console)
    return components


class UnknownComponent(KeyError):
    """A component name the stack does not have (a typo must not do nothing)."""


def check_known(names: set[str], known: set[str]) -> None:
    """UnknownComponent naming the unknown components and the known ones."""
    unknown = sorted(names - known)
    if unknown:
        raise UnknownComponent(f"unknown component{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(map(repr, unknown))}; one of: {', '.join(sorted(known))}")


def changed_settings(settings: Settings, running: dict[str, str]) -> list[str]:
    """The RECO_* settings whose exported value differs from the running stack's."""
    names = {f"RECO_{name.upper()}" for name in type(settings).model_fields}
    wanted = process_env(settings)
    return sorted(name for name in names if wanted.get(name) != running.get(name))


def check_settings_unchanged(settings: Settings, supervisor: Supervisor) -> None:
    """Refuse to `up` a running stack under other settings: its programs keep the environment
    supervisord started with, so they would go on running the old ones (and copies no
    longer configured would vanish from `reco status` while still consuming)."""
    running = supervisor.environment() if supervisor.running() else None
    changed = changed_settings(settings, running) if running is not None else []
    if changed:
        raise ComponentFailed(
            f"settings changed since the stack started ({', '.join(changed)}): "
            "run `reco down` then `reco up`")


def check_ports_distinct(components: list[Component]) -> None:
    """Refuse settings that give two components one port: the second would find it taken by the
    first, which the stack did start, and fail with a misleading message."""
    owners: dict[int, list[str]] = {}
    for component in components:
        for port in component.ports:
            owners.setdefault(port, []).append(component.name)
    shared = {port: names for port, names in owners.items() if len(names) > 1}
    if shared:
        raise ComponentFailed("; ".join(
            f"port {port} is given to {' and '.join(names)}" for port, names in shared.items())
            + ": give each its own port in the settings (RECO_*_PORT, or fewer copies)")


def check_ports_free(component: Component, host: str = "127.0.0.1") -> None:
    """Refuse to start a component on a port something else answers on: that process (a system
    service, an orphan of an earlier run) would pass the health probe while ours fails."""
    taken = [port for port in component.ports if tcp_open(host, port)]
    if taken:
        ports = ", ".join(str(p) for p in taken)
        raise ComponentFailed(
            f"{component.name}: port {ports} on {host} is already in use by a process that "
            f"`reco up` did not start (a system service such as redis-server or postgresql, or "
            f"one left over from an earlier run). Stop it (`ss -ltnp` shows which) or give "
            f"{component.name} another port in the settings."
        )


def started_and_healthy(component: Component, supervisor: Supervisor) -> bool:
    """Healthy counts only when our process runs: the probe alone accepts any answer."""
    return (supervisor.info(component.name)["statename"] == "RUNNING"
            and component.health())


def _bring_up(component: Component, supervisor: Supervisor, console: Console) -> None:
    started = time.monotonic()
    with console.status(f"[bold]{component.name}[/]: preparing"):
        if not supervisor.is_running(component.name):
            check_ports_free(component)
            if component.prepare is not None:
                try:
                    component.prepare()
                except Exception as exc:  # report any set-up failure with its reason
                    raise ComponentFailed(f"{component.name}: set-up failed: {exc}") from exc
    with console.status(f"[bold]{component.name}[/]: starting, waiting until healthy"):
        supervisor.start(component.name)
        healthy = wait_until(
            lambda: started_and_healthy(component, supervisor), component.startup_timeout_s,
            interval_s=0.5,
            alive=lambda: supervisor.info(component.name)["statename"] not in ("FATAL", "EXITED"),
        )
    if not healthy:
        state = supervisor.info(component.name)["statename"]
        raise ComponentFailed(
            f"{component.name} is not healthy after {component.startup_timeout_s:.0f}s "
            f"(process state {state}). Last lines of {supervisor.log_path(component.name)}:\n"
            + supervisor.tail(component.name, 40)
        )
    notes: list[str] = []
    if component.ready is not None:
        with console.status(f"[bold]{component.name}[/]: initialising"):
            try:
                notes = component.ready() or []
            except Exception as exc:  # a refused topic, a failed migration: say which
                raise ComponentFailed(f"{component.name}: initialisation failed: {exc}") from exc
    elapsed = time.monotonic() - started
    console.print(f"[green]✓[/] {component.name:<22} {elapsed:5.1f}s  {component.url or ''}")
    for note in notes:
        console.print(f"  [yellow]{escape(note)}[/]")


def down(settings: Settings) -> bool:
    """Stop every component (reverse order) and the process runner itself; False when no
    stack ran under the state folder."""
    supervisor = Supervisor(settings.state_dir)
    if not supervisor.running():
        return False
    supervisor.shutdown()
    return True


def status(settings: Settings) -> list[ComponentStatus]:
    supervisor = Supervisor(settings.state_dir)
    info = supervisor.all_info()
    rows = []
    for component in build_components(settings):
        proc = info.get(component.name)
        state = proc["statename"] if proc else "STOPPED"
        running = state == "RUNNING"
        rows.append(ComponentStatus(
            name=component.name, state=state, healthy=running and component.health(),
            url=component.url,
            uptime_s=(proc["now"] - proc["start"]) if running else None,
        ))
    return rows


def logs(settings: Settings, name: str, lines: int) -> str:
    check_known({name}, {c.name for c in build_components(settings)} | {"supervisord"})
    return Supervisor(settings.state_dir).tail(name, lines)
