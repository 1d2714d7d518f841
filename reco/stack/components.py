"""The components of the local stack: what each runs, how it is prepared, how it is probed."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
from pydantic import SecretStr
from pydantic_settings import NoDecode

from reco import db
from reco.settings import Settings
from reco.stack import prometheus, servers
from reco.stack.health import http_ok, postgres_accepts, redis_ping, tcp_open
from reco.topics import ensure_topics, partition_mismatches, platform_topics


@dataclass(frozen=True)
class Component:
    """One supervised process of the stack."""

    name: str
    command: list[str]
    health: Callable[[], bool]
    url: str | None = None
    prepare: Callable[[], None] | None = None  # one-time set-up before the first start
    # runs once it is healthy (databases, topics); returns notes for the operator, if any
    ready: Callable[[], list[str] | None] | None = None
    startup_timeout_s: float = 60.0
    group: str = "infra"  # "infra" (third-party servers) or "app" (the project's processes)
    metrics_url: str | None = None  # where Prometheus scrapes it
    job: str | None = None  # Prometheus job (copies of one process share it); default: name
    ports: tuple[int, ...] = ()  # where it listens: nothing else may answer there before it starts


@dataclass
class StackPaths:
    root: Path
    logs: Path = field(init=False)
    jars: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.logs = self.root / "logs"
        self.jars = self.root / "jars"


# What the node exporter collects: the disks Kafka, PostgreSQL and Redis write to, and the
# machine's memory and CPU; its other default collectors (hardware sensors, network
# interfaces, systemd, ...) only add series no rule or panel reads.
NODE_COLLECTORS = ("disable-defaults", "filesystem", "meminfo", "cpu", "loadavg")


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow configuration for every Airflow process (and `airflow` CLI calls)."""
    home = settings.state_dir.resolve() / "airflow"
    api = f"http://127.0.0.1:{settings.airflow_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(servers.REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.pg_url(
            settings.pg_airflow_database, driver="postgresql+psycopg2"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": settings.airflow_secret.get_secret_value(),
        "AIRFLOW__API_AUTH__JWT_SECRET": settings.airflow_secret.get_secret_value(),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "PYTHONPATH": str(servers.REPO_ROOT),
        "NO_PROXY": "*",
    }


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as RECO_* variables, so every supervised process sees the same values
    (secrets included: model_dump would mask them)."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        raw = getattr(settings, name)
        if isinstance(raw, SecretStr):
            value = raw.get_secret_value()
        elif isinstance(raw, list) and NoDecode in type(settings).model_fields[name].metadata:
            # Read back comma-separated, not as JSON: an empty list must be "" (JSON's "[]"
            # would come back as the one key "[]"), e.g. RECO_API_KEYS.
            value = ",".join(v.get_secret_value() if isinstance(v, SecretStr) else str(v)
                             for v in raw)
        if value is not None:
            env[f"RECO_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["RECO_STATE_DIR"] = str(settings.state_dir.resolve())
    return env


def process_env(settings: Settings) -> dict[str, str]:
    """Environment every supervised process inherits: the settings plus Airflow's."""
    env = dict(os.environ)
    env.update(airflow_env(settings))
    env.update(settings_env(settings))
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    # MLflow server's --backend-store-uri, read from the environment (the option's envvar):
    # on its command line the password would show in `ps` to every user of the machine.
    env["MLFLOW_BACKEND_STORE_URI"] = mlflow_backend_store_uri(settings)
    # The Redis exporter's address (it may carry a password, so not in its command line,
    # which supervisord's config file holds); the same URL as RECO_REDIS_URL.
    env["REDIS_ADDR"] = settings.redis_url
    # The PostgreSQL exporter's, likewise, in parts: a password is not URL-escaped. The
    # stack's own server speaks no TLS, which lib/pq's default sslmode (require) would refuse.
    env["DATA_SOURCE_URI"] = (f"{settings.pg_host}:{settings.pg_port}/{settings.pg_database}"
                              "?sslmode=disable")
    env["DATA_SOURCE_USER"] = settings.pg_user
    env["DATA_SOURCE_PASS"] = settings.pg_password.get_secret_value()
    return env


def mlflow_backend_store_uri(settings: Settings) -> str:
    return settings.pg_url(settings.pg_mlflow_database, driver="postgresql+psycopg2")


def _reco(*args: str) -> list[str]:
    return [servers.venv_bin("reco"), *args]


def build_components(settings: Settings) -> list[Component]:
    """Components in start order; `reco down` stops them in reverse."""
    paths = StackPaths(settings.state_dir)
    pg_data = paths.root / "postgres"
    kafka_data = paths.root / "kafka"
    host = "127.0.0.1"

    def pg_ready() -> None:
        servers.ensure_databases(
            settings.pg_port, settings.pg_user, settings.pg_password.get_secret_value(),
            [settings.pg_database, settings.pg_mlflow_database, settings.pg_airflow_database],
        )
        db.migrate(settings)

    def kafka_ready() -> list[str]:
        topics = platform_topics(settings)
        counts = asyncio.run(ensure_topics(settings.kafka_bootstrap, topics,
                                           replication=settings.topic_replication))
        return partition_mismatches(topics, counts)

    def airflow_prepare() -> None:
        result = subprocess.run(
            [servers.venv_bin("airflow"), "db", "migrate"],
            env={**os.environ, **airflow_env(settings)}, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise servers.ServerSetupError(f"airflow db migrate failed:\n{result.stderr[-3000:]}")

    mlflow_artifacts = paths.root / "mlflow" / "artifacts"
    prom_config = paths.root / "prometheus" / "prometheus.yml"
    apps = app_components(settings)

    def write_prometheus_config() -> None:
        targets: dict[str, list[str]] = {}
        for c in components:
            if c.metrics_url:
                targets.setdefault(c.job or c.name, []).append(
                    prometheus.metrics_target(c.metrics_url))
        prometheus.write_config(prom_config, targets)

    def prometheus_ready() -> None:
        # Every `up` rewrites the scrape targets (components may have been added) and reloads.
        write_prometheus_config()
        httpx.post(f"http://{host}:{settings.prometheus_port}/-/reload",
                   timeout=5).raise_for_status()

    airflow = servers.venv_bin("airflow")
    exporter = f"http://{host}:{settings.redis_exporter_port}"
    pg_exporter = f"http://{host}:{settings.postgres_exporter_port}"
    node_exporter = f"http://{host}:{settings.node_exporter_port}"
    components = [
        Component(
            "node-exporter",
            [_which("prometheus-node-exporter"),
             f"--web.listen-address={host}:{settings.node_exporter_port}",
             *(f"--collector.{name}" for name in NODE_COLLECTORS)],
            health=partial(http_ok, f"{node_exporter}/"), url=f"{node_exporter}/metrics",
            prepare=lambda: _require("prometheus-node-exporter"),
            metrics_url=f"{node_exporter}/metrics",
            ports=(settings.node_exporter_port,),
        ),
        Component(
            "postgres", servers.postgres_command(pg_data, settings.pg_port),
            health=lambda: postgres_accepts(settings.pg_port),
            url=f"postgresql://{host}:{settings.pg_port}/{settings.pg_database}",
            prepare=lambda: servers.prepare_postgres(pg_data), ready=pg_ready,
            ports=(settings.pg_port,),
        ),
        Component(
            "postgres-exporter",
            [_which("prometheus-postgres-exporter"),
             f"--web.listen-address={host}:{settings.postgres_exporter_port}"],
            health=partial(http_ok, f"{pg_exporter}/"), url=f"{pg_exporter}/metrics",
            prepare=lambda: _require("prometheus-postgres-exporter"),
            metrics_url=f"{pg_exporter}/metrics",
            ports=(settings.postgres_exporter_port,),
        ),
        Component(
            "redis", servers.redis_command(paths.root / "redis", _redis_port(settings)),
            health=lambda: redis_ping(settings.redis_url),
            url=f"redis://{host}:{_redis_port(settings)}", ports=(_redis_port(settings),),
        ),
        Component(
            "redis-exporter",
            [_which("prometheus-redis-exporter"), "-web.listen-address",
             f"{host}:{settings.redis_exporter_port}", "-include-system-metrics"],
            health=partial(http_ok, f"{exporter}/health"), url=f"{exporter}/metrics",
            prepare=lambda: _require("prometheus-redis-exporter"),
            metrics_url=f"{exporter}/metrics",
            ports=(settings.redis_exporter_port,),
        ),
        Component(
            "kafka", servers.kafka_command(paths.jars, kafka_data / "server.properties"),
            health=lambda: tcp_open(host, _kafka_port(settings)),
            url=f"kafka://{settings.kafka_bootstrap}",
            prepare=lambda: servers.prepare_kafka(
                paths.jars, kafka_data, _kafka_port(settings), _controller_port(settings)),
            ready=kafka_ready, startup_timeout_s=90,
            ports=(_kafka_port(settings), _controller_port(settings)),
        ),
        Component(
            "mlflow",
            # The backend store: MLFLOW_BACKEND_STORE_URI (process_env), not an argument.
            [servers.venv_bin("mlflow"), "server",
             "--artifacts-destination", str(mlflow_artifacts),
             "--host", host, "--port", str(settings.mlflow_port), "--workers", "1"],
            health=lambda: http_ok(f"http://{host}:{settings.mlflow_port}/health"),
            url=f"http://{host}:{settings.mlflow_port}", startup_timeout_s=120,
            ports=(settings.mlflow_port,),
        ),
        Component(
            "airflow-api-server", [airflow, "api-server"],
            health=lambda: http_ok(f"http://{host}:{settings.airflow_port}/api/v2/monitor/health"),
            url=f"http://{host}:{settings.airflow_port}",
            prepare=airflow_prepare, startup_timeout_s=180, ports=(settings.airflow_port,),
        ),
        Component(
            "airflow-scheduler", [airflow, "scheduler"],
            health=lambda: _airflow_component_healthy(settings, "scheduler"),
            startup_timeout_s=120,
        ),
        Component(
            "airflow-dag-processor", [airflow, "dag-processor"],
            health=lambda: _airflow_component_healthy(settings, "dag_processor"),
            startup_timeout_s=120,
        ),
        # Airflow's metadata past RECO_AIRFLOW_HISTORY_DAYS, an hour after each start (not in
        # the way of `reco up` and the demo) and daily after, as docker-compose's
        # airflow-housekeeping: no task may touch Airflow's database (reco/airflow_history.py).
        # Nothing to check but the loop running.
        Component(
            "airflow-housekeeping",
            ["sh", "-c", f"sleep 3600; while true; do {shlex.join(_reco('db', 'prune-airflow'))}; "
                         "sleep 86400; done"],
            health=lambda: True,
        ),
        *apps,
        Component(
            "prometheus",
            [_which("prometheus"), f"--config.file={prom_config}",
             f"--storage.tsdb.path={paths.root / 'prometheus' / 'data'}",
             f"--web.listen-address={host}:{settings.prometheus_port}",
             "--storage.tsdb.retention.time=7d", "--web.enable-lifecycle"],
            health=lambda: http_ok(f"http://{host}:{settings.prometheus_port}/-/ready"),
            url=f"http://{host}:{settings.prometheus_port}", ports=(settings.prometheus_port,),
            prepare=lambda: (_require("prometheus"), write_prometheus_config()),
            ready=prometheus_ready,
        ),
    ]
    return components


def app_components(settings: Settings) -> list[Component]:
    """The project's own processes, started once the infrastructure is healthy.

    Consumers scale by running more copies in their group (up to the partition count); copy n
    serves its metrics on the base port + 2*n, and Prometheus scrapes every copy.
    """
    host = "127.0.0.1"
    ingest = f"http://{host}:{settings.ingest_port}"
    reco = f"http://{host}:{settings.reco_port}"
    out = [
        Component("ingest", _reco("run", "ingest"), health=partial(http_ok, f"{ingest}/health"),
                  url=f"{ingest}/docs", group="app", metrics_url=f"{ingest}/metrics",
                  ports=(settings.ingest_port,)),
        Component("recommendations", _reco("run", "recommendations"),
                  health=partial(http_ok, f"{reco}/health"), url=f"{reco}/docs", group="app",
                  metrics_url=f"{reco}/metrics", ports=(settings.reco_port,)),
    ]
    for role, copies in consumer_copies(settings).items():
        for name, port in copies:
            metrics = f"http://{host}:{port}/metrics"
            out.append(Component(
                name, ["env", f"RECO_{role.upper()}_METRICS_PORT={port}", *_reco("run", role)],
                health=partial(http_ok, metrics), url=metrics, group="app",
                metrics_url=metrics, job=role, ports=(port,)))
    return out


def consumer_copies(settings: Settings) -> dict[str, list[tuple[str, int]]]:
    """Each consumer role's copies as (component name, metrics port), copy 0 first: copy n
    serves its metrics on the role's base port + 2*n and is named by `copy_name`. The stack
    starts them; the soak reads their lag.

    With the default bases (9101, 9102) the two roles interleave: processors 9101, 9103, 9105,
    archivers 9102, 9104, 9106, clear of the exporters' standard ports (9100, 9121, 9187) up to
    the partition count. A step of 10 put the third processor on the Redis exporter's 9121."""
    return {role: [(copy_name(role, n), base_port + 2 * n) for n in range(copies)]
            for role, base_port, copies in (
                ("processor", settings.processor_metrics_port, settings.processor_copies),
                ("archiver", settings.archiver_metrics_port, settings.archiver_copies))}


def copy_name(role: str, n: int) -> str:
    """Copy n (n = 0..) of a consumer role: `role`, then `role-2`, `role-3`, ..."""
    return role if n == 0 else f"{role}-{n + 1}"


def _which(name: str) -> str:
    return shutil.which(name) or name


def _require(name: str) -> None:
    if shutil.which(name) is None:
        raise servers.ServerSetupError(f"{name} not found: make install (apt-get install {name})")


def _airflow_component_healthy(settings: Settings, component: str) -> bool:
    try:
        body = httpx.get(
            f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health", timeout=2
        ).json()
    except (httpx.HTTPError, ValueError):
        return False
    return body.get(component, {}).get("status") == "healthy"


def _redis_port(settings: Settings) -> int:
    from urllib.parse import urlparse

    return urlparse(settings.redis_url).port or 6379


def _kafka_port(settings: Settings) -> int:
    return int(settings.kafka_bootstrap.rsplit(":", 1)[1])


def _controller_port(settings: Settings) -> int:
    return settings.kafka_controller_port or _kafka_port(settings) + 1
