"""`reco up` / `reco down` against real servers, on free ports in a throwaway state folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import psycopg
import pytest
import redis
import yaml
from rich.console import Console

from reco.settings import Settings
from reco.stack import local
from reco.stack import servers as stack_servers
from reco.stack.components import Component, build_components, process_env, settings_env
from reco.stack.health import free_port, wait_until
from reco.stack.prometheus import ALERT_RULES
from reco.stack.supervisor import Supervisor, _pid_alive
from tests.servers import JARS_DIR, scratch_dir
from tests.test_alert_rules import (
    NODE_EXPORTER_SERIES,
    POSTGRES_EXPORTER_SERIES,
    REDIS_EXPORTER_SERIES,
)

pytestmark = pytest.mark.integration
INFRA = {"postgres", "redis", "kafka"}


@pytest.fixture
def stack_settings() -> Settings:
    state = scratch_dir("stack")
    (state / "jars").symlink_to(JARS_DIR)  # reuse the Maven download of the session
    # Its own controller port: kafka_port + 1 stayed unbound until Kafka started, and an
    # outgoing connection could take it meanwhile (the kernel gives those even ports).
    kafka_port = free_port()
    return Settings(
        state_dir=state, pg_port=free_port(), redis_url=f"redis://127.0.0.1:{free_port()}/0",
        kafka_bootstrap=f"127.0.0.1:{kafka_port}", kafka_controller_port=free_port(),
        mlflow_port=free_port(), airflow_port=free_port(),
    )


def _stack_pids(settings: Settings) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(settings.state_dir)], capture_output=True, text=True)
    return found.stdout.split()


def test_up_is_idempotent_down_leaves_nothing_and_data_survives(stack_settings: Settings) -> None:
    console = Console(quiet=True)
    try:
        local.up(stack_settings, console, only=INFRA)
        rows = {r.name: r for r in local.status(stack_settings)}
        assert all(rows[name].healthy for name in INFRA)
        assert rows["mlflow"].state == "STOPPED" and not rows["mlflow"].healthy

        with psycopg.connect(stack_settings.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO users (user_id) VALUES ('kept')")
        redis.Redis.from_url(stack_settings.redis_url).set("kept", "yes")

        local.up(stack_settings, console, only=INFRA)  # second `up`: nothing changes
        assert {r.name for r in local.status(stack_settings) if r.healthy} == INFRA

        local.down(stack_settings)
        assert _stack_pids(stack_settings) == []
        assert not Supervisor(stack_settings.state_dir).running()

        local.up(stack_settings, console, only=INFRA)
        with psycopg.connect(stack_settings.database_url) as conn:
            assert conn.execute("SELECT user_id FROM users").fetchall() == [("kept",)]
        assert redis.Redis.from_url(stack_settings.redis_url).get("kept") == b"yes"
    finally:
        local.down(stack_settings)
    assert _stack_pids(stack_settings) == []


def test_up_refuses_other_settings_while_the_stack_runs(stack_settings: Settings) -> None:
    """Its programs keep the environment supervisord started with: `up` under other settings
    would report a stack that still runs the old ones."""
    console = Console(quiet=True)
    more_copies = stack_settings.model_copy(update={"processor_copies": 2})
    try:
        local.up(stack_settings, console, only={"redis"})
        refused = (r"settings changed since the stack started \(RECO_PROCESSOR_COPIES\): "
                   r"run `reco down` then `reco up`")
        with pytest.raises(local.ComponentFailed, match=refused):
            local.up(more_copies, console, only={"redis"})
        assert "processor-2" not in Supervisor(stack_settings.state_dir).all_info()
        local.up(stack_settings, console, only={"redis"})  # the same settings: fine
        local.down(stack_settings)
        local.up(more_copies, console, only={"redis"})  # after a `down`: fine
    finally:
        local.down(stack_settings)


def test_programs_no_longer_configured_are_stopped_and_removed() -> None:
    """Left running, they would be out of `reco status` and Prometheus but still consume."""
    supervisor = Supervisor(scratch_dir("supervisor"))
    kept, dropped = (Component(name, ["sleep", "600"], health=lambda: True)
                     for name in ("kept", "dropped"))
    try:
        supervisor.write_config([kept, dropped])
        supervisor.start_daemon(dict(os.environ))
        for name in ("kept", "dropped"):
            supervisor.start(name)
        dropped_pid = supervisor.info("dropped")["pid"]
        supervisor.write_config([kept])
        supervisor.start_daemon(dict(os.environ))  # what `reco up` does on a running stack
        assert set(supervisor.all_info()) == {"kept"}
        assert supervisor.is_running("kept")
        assert not _pid_alive(dropped_pid)
    finally:
        supervisor.shutdown()
        shutil.rmtree(supervisor.state_dir, ignore_errors=True)


def test_failing_component_reports_its_log(stack_settings: Settings) -> None:
    # A port that is bound (not listening, so nothing answers on it) makes Redis exit at once:
    # `up` must say why, not hang.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    taken = blocker.getsockname()[1]
    settings = stack_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{taken}/0"})
    try:
        failure = r"redis is not healthy[\s\S]*Address already in use"
        with pytest.raises(local.ComponentFailed, match=failure):
            local.up(settings, Console(quiet=True), only={"redis"})
    finally:
        blocker.close()
        local.down(settings)


def _listening() -> socket.socket:
    """A foreign process on a port: it accepts connections (and answers nothing)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_up_refuses_a_port_another_process_answers_on(stack_settings: Settings) -> None:
    blocker = _listening()
    taken = blocker.getsockname()[1]
    settings = stack_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{taken}/0"})
    try:
        with pytest.raises(local.ComponentFailed,
                           match=f"redis: port {taken} on 127.0.0.1 is already in use"):
            local.up(settings, Console(quiet=True), only={"redis"})
        assert Supervisor(settings.state_dir).info("redis")["statename"] == "STOPPED"
    finally:
        blocker.close()
        local.down(settings)


def test_check_ports_free_names_the_ports_in_use() -> None:
    blocker, free = _listening(), free_port()
    taken = blocker.getsockname()[1]
    component = Component("redis", ["true"], health=lambda: True, ports=(free, taken))
    try:
        with pytest.raises(local.ComponentFailed, match=f"redis: port {taken} on 127.0.0.1 is"):
            local.check_ports_free(component)
    finally:
        blocker.close()
    local.check_ports_free(component)  # both free now


class _Supervisor:
    """Stands in for supervisord's process state only."""

    def __init__(self, state: str) -> None:
        self.state = state

    def info(self, name: str) -> dict:
        return {"statename": self.state}


@pytest.mark.parametrize(("state", "probe", "healthy"), [
    ("RUNNING", True, True), ("RUNNING", False, False),
    ("BACKOFF", True, False),  # ours crash-loops while something else answers the probe
    ("STARTING", True, False), ("FATAL", True, False),
])
def test_healthy_needs_our_process_running_and_the_probe(state: str, probe: bool,
                                                         healthy: bool) -> None:
    component = Component("redis", ["true"], health=lambda: probe)
    assert local.started_and_healthy(component, _Supervisor(state)) is healthy


def test_every_listening_component_declares_its_ports(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:19092")
    ports = {c.name: c.ports for c in build_components(settings)}
    assert ports["postgres"] == (settings.pg_port,)
    assert ports["redis"] == (6379,)
    assert ports["kafka"] == (19092, 19093)
    assert ports["processor"] == (settings.processor_metrics_port,)
    assert ports["prometheus"] == (settings.prometheus_port,)
    assert ports["redis-exporter"] == (settings.redis_exporter_port,)
    assert ports["postgres-exporter"] == (settings.postgres_exporter_port,)
    assert ports["node-exporter"] == (settings.node_exporter_port,)


@pytest.mark.parametrize("copies", [1, 2, 3])
def test_the_default_ports_are_distinct_up_to_the_partition_count(tmp_path, copies: int) -> None:
    """README's scaling example, RECO_PROCESSOR_COPIES=3, once put the third processor on
    the Redis exporter's port."""
    components = build_components(Settings(state_dir=tmp_path, processor_copies=copies,
                                           archiver_copies=copies))
    ports = [port for c in components for port in c.ports]
    assert len(ports) == len(set(ports))
    local.check_ports_distinct(components)


def test_two_components_on_one_port_are_refused_naming_both(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path, processor_copies=2, archiver_metrics_port=9103)
    with pytest.raises(local.ComponentFailed,
                       match="port 9103 is given to processor-2 and archiver: give each"):
        local.check_ports_distinct(build_components(settings))


def test_logs_of_unknown_component_names_the_known_ones(stack_settings: Settings) -> None:
    with pytest.raises(KeyError, match="unknown component 'nope'.*postgres"):
        local.logs(stack_settings, "nope", 10)


def test_every_copy_of_a_consumer_runs_and_is_scraped(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path, processor_copies=2)
    components = {c.name: c for c in build_components(settings)}
    assert components["processor-2"].command[:2] == ["env", "RECO_PROCESSOR_METRICS_PORT=9103"]
    components["prometheus"].prepare()
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs == {
        "archiver": ["127.0.0.1:9102"], "ingest": ["127.0.0.1:8080"],
        "processor": ["127.0.0.1:9101", "127.0.0.1:9103"],
        "recommendations": ["127.0.0.1:8081"], "redis-exporter": ["127.0.0.1:9121"],
        "postgres-exporter": ["127.0.0.1:9187"], "node-exporter": ["127.0.0.1:9100"],
    }
    assert config["rule_files"] == [str(ALERT_RULES)]


def test_supervised_processes_get_the_real_settings_secrets_included(monkeypatch) -> None:
    secret, keys = "s" * 40, "key-one-0123456789,key-two-0123456789"
    settings = Settings(pg_port=6543, jwt_secret=secret, api_keys=keys, processor_copies=2,
                        pg_password="pg/pass+word@1", airflow_secret="airflow-" + secret)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    seen = Settings()  # what a supervised process reads from its environment
    assert seen.pg_port == 6543 and seen.processor_copies == 2
    assert seen.jwt_secret.get_secret_value() == secret
    assert seen.pg_password.get_secret_value() == "pg/pass+word@1"
    assert seen.airflow_secret.get_secret_value() == "airflow-" + secret
    assert [k.get_secret_value() for k in seen.api_keys] == keys.split(",")
    assert seen.event_weights == settings.event_weights


# '/' and '+' are escaped in a URL: neither the raw nor the escaped form may show.
PG_SECRET = "pg/secret+0123456789"


def _secrets(settings: Settings) -> list[str]:
    password = settings.pg_password.get_secret_value()
    return [password, quote(password, safe=""), settings.airflow_secret.get_secret_value(),
            settings.jwt_secret.get_secret_value(),
            *(key.get_secret_value() for key in settings.api_keys)]


def test_no_supervised_command_line_holds_a_secret(tmp_path) -> None:
    """Command lines show in `ps` to every user of the machine: secrets (MLflow's backend
    store URI among them) go through the environment; the config stays owner-only."""
    settings = Settings(state_dir=tmp_path, pg_password=PG_SECRET,
                        airflow_secret="airflow-secret-0123456789", jwt_secret="j" * 40,
                        api_keys="key-one-0123456789")
    components = build_components(settings)
    supervisor = Supervisor(tmp_path)
    supervisor.write_config(components)
    config = supervisor.config_path.read_text()
    for secret in _secrets(settings):
        assert secret not in config
        for component in components:
            assert not any(secret in arg for arg in component.command), component.name
    assert supervisor.config_path.stat().st_mode & 0o777 == 0o600
    assert process_env(settings)["MLFLOW_BACKEND_STORE_URI"] == settings.pg_url(
        settings.pg_mlflow_database, driver="postgresql+psycopg2")


def test_mlflow_as_the_stack_starts_it_keeps_its_runs_in_postgres(postgres_server,
                                                                   tmp_path) -> None:
    """Started with the stack's command and environment, MLflow finds its backend store in
    the environment (not a local file store), and no process of it shows the password."""
    user, database = "mlflow_env_check", f"mlflow_{uuid.uuid4().hex[:8]}"
    stack_servers.ensure_databases(postgres_server.port, user, PG_SECRET, [database])
    settings = Settings(state_dir=tmp_path, pg_port=postgres_server.port, pg_user=user,
                        pg_password=PG_SECRET, pg_mlflow_database=database,
                        mlflow_port=free_port())
    mlflow = {c.name: c for c in build_components(settings)}["mlflow"]
    proc = subprocess.Popen(mlflow.command, env=process_env(settings), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_until(mlflow.health, 180, alive=lambda: proc.poll() is None)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for process in tree:
            command = " ".join(process.cmdline())
            assert PG_SECRET not in command and quote(PG_SECRET, safe="") not in command
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    with psycopg.connect(settings.pg_url(database)) as conn:
        [(tables,)] = conn.execute("SELECT count(*) FROM information_schema.tables "
                                   "WHERE table_name IN ('experiments', 'runs')").fetchall()
    assert tables == 2
    assert not (tmp_path / "mlruns").exists()


def test_supervised_processes_get_no_api_key_when_none_is_set(monkeypatch) -> None:
    env = settings_env(Settings(api_keys=""))
    assert env["RECO_API_KEYS"] == ""
    monkeypatch.setenv("RECO_API_KEYS", env["RECO_API_KEYS"])
    assert Settings().api_keys == []  # not the one key "[]"


def scrape_exporter(name: str, settings: Settings) -> dict[str, str]:
    """Start component `name` as the stack starts it (command and environment), and return
    its samples (series with labels -> value)."""
    exporter = {c.name: c for c in build_components(settings)}[name]
    assert exporter.prepare is not None and exporter.metrics_url is not None
    exporter.prepare()
    proc = subprocess.Popen(exporter.command, env=process_env(settings),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(exporter.health, 30, alive=lambda: proc.poll() is None)
        return dict(line.rsplit(" ", 1) for line in httpx.get(exporter.metrics_url).text
                    .splitlines() if line and not line.startswith("#"))
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_redis_exporter_reports_the_stacks_redis(redis_url: str, tmp_path) -> None:
    """The exporter as the stack starts it (command and environment) finds the stack's Redis."""
    settings = Settings(state_dir=tmp_path, redis_url=redis_url,
                        redis_exporter_port=free_port())
    client = redis.Redis.from_url(redis_url)
    client.set("exported", "x" * 1_000_000)
    try:
        samples = scrape_exporter("redis-exporter", settings)
    finally:
        client.delete("exported")
    assert samples["redis_up"] == "1"
    assert float(samples["redis_memory_used_bytes"]) > 1_000_000
    assert samples.keys() >= REDIS_EXPORTER_SERIES  # what the alert rules read


def test_the_postgres_exporter_reports_the_stacks_postgres(pg, settings: Settings,
                                                           tmp_path) -> None:
    """The exporter as the stack starts it (command and environment) finds the stack's
    PostgreSQL, and exports what the alert rules and the dashboard read."""
    settings = settings.model_copy(update={"postgres_exporter_port": free_port()})
    samples = scrape_exporter("postgres-exporter", settings)
    assert samples["pg_up"] == "1"
    names = {key.split("{", 1)[0] for key in samples}
    assert names >= POSTGRES_EXPORTER_SERIES
    app_database = f'datname="{settings.pg_database}"'
    [size] = [v for k, v in samples.items()
              if k.startswith("pg_database_size_bytes{") and app_database in k]
    assert float(size) > 1_000_000


def test_the_node_exporter_reports_the_disk_of_the_stacks_state(tmp_path) -> None:
    """The exporter as the stack starts it exports what the rules, the dashboard and the
    status read, among them the space left on the disk that holds the stack's data."""
    settings = Settings(state_dir=tmp_path, node_exporter_port=free_port())
    samples = scrape_exporter("node-exporter", settings)
    names = {key.split("{", 1)[0] for key in samples}
    assert names >= NODE_EXPORTER_SERIES
    mount = _mount_point(tmp_path)
    avail = [float(v) for k, v in samples.items()
             if k.startswith("node_filesystem_avail_bytes{") and f'mountpoint="{mount}"' in k]
    assert len(avail) == 1, samples.keys()
    assert abs(avail[0] - shutil.disk_usage(tmp_path).free) < 2**30  # statfs's f_bavail


def _mount_point(path: Path) -> str:
    path = path.resolve()
    while not path.is_mount():
        path = path.parent
    return str(path)


def test_a_failing_kafka_set_up_command_says_why(tmp_path) -> None:
    """Jars marked complete but missing: java's own message reaches the error, not only its
    exit status."""
    from reco.stack import servers

    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / ".complete").write_text(servers.JARS_POM.read_text())
    with pytest.raises(servers.ServerSetupError,
                       match=r"generating the Kafka cluster id failed \(exit status 1\): "
                             r"[\s\S]*main class kafka\.tools\.StorageTool"):
        servers.prepare_kafka(jars, tmp_path / "kafka", free_port(), free_port())


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from reco.cli import app
    from reco.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        get_settings.cache_clear()
    return result.exit_code, " ".join(result.output.split())


def test_down_where_no_stack_runs_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default state folder, .reco, is relative
    monkeypatch.delenv("RECO_STATE_DIR", raising=False)
    code, output = _cli("down")
    assert code == 0
    # Without whitespace: Rich folds a long path mid-word at 80 columns.
    expected = f"no stack running under {tmp_path.resolve() / '.reco'}"
    assert output.replace(" ", "") == expected.replace(" ", "")


def test_up_only_with_an_unknown_name_starts_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RECO_STATE_DIR", str(tmp_path))
    try:
        code, output = _cli("up", "--only", "rediss")  # nothing would start on any port
        assert code == 2, output
        assert output.startswith("unknown component 'rediss'; one of: ")
        assert "kafka" in output and "stack up" not in output
        assert not Supervisor(tmp_path).running()
    finally:
        local.down(Settings(state_dir=tmp_path))
