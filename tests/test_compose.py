"""docker-compose.yml cannot run here (no Docker engine): check its structure instead."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from reco.commands import run
from reco.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
DEFAULTS = Settings()


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    instructions = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        if line.strip():
            name, _, args = line.strip().partition(" ")
            instructions.append((name.upper(), args.strip()))
    return instructions


DOCKERFILE = _dockerfile()
IMAGE_ENV = dict(pair.split("=", 1) for name, args in DOCKERFILE if name == "ENV"
                 for pair in shlex.split(args))
IMAGE_RUN = " && ".join(args for name, args in DOCKERFILE if name == "RUN")

# Host port each user-facing service must publish (DESIGN.md "Ports").
EXPECTED_PORTS = {
    "ingest": DEFAULTS.ingest_port,
    "recommendations": DEFAULTS.reco_port,
    "kafka": 9092,
    "redis": 6379,
    "postgres": DEFAULTS.pg_port,
    "mlflow": DEFAULTS.mlflow_port,
    "airflow-api-server": DEFAULTS.airflow_port,
    "prometheus": DEFAULTS.prometheus_port,
    "grafana": 3000,
}


def _published(service: dict) -> list[tuple[str, int]]:
    """(host address, host port) of each "[address:]host:container" port mapping."""
    out = []
    for mapping in service.get("ports", []):
        *address, host_port, _container = str(mapping).split(":")
        out.append((address[0] if address else "0.0.0.0", int(host_port)))
    return out


def _host_ports(service: dict) -> set[int]:
    return {port for _address, port in _published(service)}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_or_build(name: str) -> None:
    service = SERVICES[name]
    assert service.get("image") or service.get("build"), name


@pytest.mark.parametrize(("name", "port"), sorted(EXPECTED_PORTS.items()))
def test_published_ports_match_design(name: str, port: int) -> None:
    assert port in _host_ports(SERVICES[name])


@pytest.mark.parametrize("name", ["postgres", "redis", "kafka", "mlflow", "prometheus"])
def test_unauthenticated_servers_are_published_to_the_host_only(name: str) -> None:
    # Redis, Kafka, MLflow and Prometheus run without authentication: never on every
    # interface of the host (PostgreSQL has a password but no TLS).
    assert _published(SERVICES[name]) and all(
        address == "127.0.0.1" for address, _port in _published(SERVICES[name]))


def test_dependencies_name_existing_services() -> None:
    for name, service in SERVICES.items():
        for dep in service.get("depends_on", []):
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"


def test_reco_env_names_are_settings_fields() -> None:
    fields = set(Settings.model_fields)
    for name, service in SERVICES.items():
        for key in service.get("environment", {}) or {}:
            if key.startswith("RECO_"):
                assert key.removeprefix("RECO_").lower() in fields, f"{name}: {key}"


def test_project_services_run_real_cli_commands() -> None:
    commands = {c.name or c.callback.__name__ for c in run.app.registered_commands}
    for name in ("ingest", "recommendations", "processor", "archiver"):
        command = SERVICES[name]["command"]
        assert command[:2] == ["reco", "run"] and command[2] in commands, name
        assert SERVICES[name]["build"] == ".", name


def test_init_services_run_real_cli_commands() -> None:
    """Topics and schema come from the settings through the project's own commands."""
    from reco.cli import app

    groups = {group.name: group.typer_instance for group in app.registered_groups}
    for name, (group, command) in {"kafka-init": ("topics", "create"),
                                   "migrate": ("db", "migrate")}.items():
        assert SERVICES[name]["command"] == ["reco", group, command], name
        names = {c.name or c.callback.__name__ for c in groups[group].registered_commands}
        assert command in names, name
        # The settings the services run with (theirs add TLS to it).
        assert SERVICES[name]["environment"].items() <= SERVICES["ingest"]["environment"].items()


def test_mounted_files_exist() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_production_services_use_production_settings() -> None:
    env = SERVICES["ingest"]["environment"]
    assert env["RECO_ENV"] == "production"
    assert env["RECO_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:4.")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_image_env_names_are_settings_fields() -> None:
    fields = set(Settings.model_fields)
    for key in IMAGE_ENV:
        if key.startswith("RECO_"):
            assert key.removeprefix("RECO_").lower() in fields, key


def test_image_points_sql_dir_at_the_copied_migrations() -> None:
    # The package is installed non-editable: reco/db.py's default (beside the package) is
    # site-packages/sql, which does not exist, so the image must name its copy of sql/.
    workdir = next(args for name, args in DOCKERFILE if name == "WORKDIR")
    copied = [PurePosixPath(workdir, args.split()[1]) for name, args in DOCKERFILE
              if name == "COPY" and args.split()[0] == "sql"]
    assert copied and PurePosixPath(IMAGE_ENV["RECO_SQL_DIR"]) == copied[0]


def test_image_jdbc_driver_is_the_installed_debian_jar() -> None:
    # Debian bookworm's libpostgresql-jdbc-java ships /usr/share/java/postgresql.jar.
    assert IMAGE_ENV["RECO_JDBC_DRIVER_PATH"] == "/usr/share/java/postgresql.jar"
    assert "libpostgresql-jdbc-java" in IMAGE_RUN.split()


def test_image_java_home_is_not_tied_to_one_architecture() -> None:
    assert "amd64" not in IMAGE_ENV.get("JAVA_HOME", "")
    assert "arm64" not in IMAGE_ENV.get("JAVA_HOME", "")


def mlflow_script() -> str:
    """The script MLflow's shell runs (`sh -c`, for the escaped URL)."""
    shell, flag, script = shlex.split(SERVICES["mlflow"]["command"])
    assert (shell, flag) == ("sh", "-c")
    return script


def mlflow_server_args() -> list[str]:
    """MLflow's command line as its shell runs it: the script's last statement."""
    args = shlex.split(mlflow_script().split(";")[-1])
    assert args[:3] == ["exec", "mlflow", "server"]
    return args[3:]


def test_mlflow_reads_its_database_url_from_the_settings() -> None:
    """Escaped by `reco db url`, as Airflow's: a password inlined into a URL breaks on '/'."""
    assign, export, _ = (shlex.split(statement) for statement in mlflow_script().split(";"))
    assert assign == ["MLFLOW_BACKEND_STORE_URI="
                      "$$(reco db url mlflow --driver postgresql+psycopg2)", "||", "exit", "1"]
    assert export == ["export", "MLFLOW_BACKEND_STORE_URI"]
    command = SERVICES["airflow-scheduler"]["environment"][
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"]
    assert shlex.split(command) == ["reco", "db", "url", "airflow", "--driver",
                                    "postgresql+psycopg2"]
    assert "RECO_PG_PASSWORD}@" not in (ROOT / "docker-compose.yml").read_text()


def _run_mlflow_script(tmp_path: Path, url_command: str) -> subprocess.CompletedProcess:
    """MLflow's shell script as compose runs it (`$$` is `$`), `reco` and `mlflow` stand-ins
    on PATH: mlflow prints its arguments and the backend store it was given."""
    (tmp_path / "reco").write_text(f"#!/bin/sh\n{url_command}\n")
    (tmp_path / "mlflow").write_text(
        '#!/bin/sh\necho "args: $*"\necho "store: $MLFLOW_BACKEND_STORE_URI"\n')
    for stub in ("reco", "mlflow"):
        (tmp_path / stub).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    return subprocess.run(["sh", "-c", mlflow_script().replace("$$", "$")], env=env,
                          capture_output=True, text=True, timeout=30)


def test_mlflow_gets_its_backend_store_from_the_environment_not_its_command_line(
        tmp_path: Path) -> None:
    """The password would show in `ps` on the Docker host: the URL goes through MLflow's
    environment (--backend-store-uri's envvar, MLFLOW_BACKEND_STORE_URI)."""
    url = "postgresql+psycopg2://reco:pg%2Fsecret@postgres:5432/mlflow"
    ran = _run_mlflow_script(tmp_path, f"echo '{url}'")
    assert ran.returncode == 0, ran.stderr
    args, store = ran.stdout.splitlines()
    assert store == f"store: {url}"
    assert "pg%2Fsecret" not in args and "--backend-store-uri" not in args
    assert args.startswith("args: server --host 0.0.0.0 --port 5000")
    # No URL (settings refused): MLflow does not start on its default local store.
    failed = _run_mlflow_script(tmp_path, "echo 'RECO_PG_PASSWORD is too short' >&2; exit 2")
    assert (failed.returncode, failed.stdout) == (1, "")


def test_mlflow_artifact_volume_exists_in_the_image_and_belongs_to_reco() -> None:
    mounts = [str(v).split(":") for v in SERVICES["mlflow"]["volumes"]]
    target = next(target for source, target, *_ in mounts if not source.startswith("."))
    assert target in mlflow_server_args()  # --artifacts-destination
    run = next(args for name, args in DOCKERFILE if name == "RUN" and "useradd" in args)
    made = run.split("mkdir -p", 1)[1].split("&&")[0].split()
    owned = run.split("chown -R reco", 1)[1].split()
    assert target in made
    assert any(PurePosixPath(target).is_relative_to(path) for path in owned)


def test_mlflow_accepts_the_host_names_it_is_reached_by() -> None:
    # MLflow 3.5+ refuses other Host headers with 403 "Invalid Host header".
    from urllib.parse import urlparse

    from mlflow.server.security_utils import is_allowed_host_header

    command = mlflow_server_args()
    value = command[command.index("--allowed-hosts") + 1]
    default = re.fullmatch(r"\$\{MLFLOW_ALLOWED_HOSTS:-(.+)\}", value).group(1)
    allowed = default.split(",")
    in_containers = urlparse(SERVICES["airflow-scheduler"]["environment"]
                             ["RECO_MLFLOW_TRACKING_URI"]).netloc
    assert in_containers == "mlflow:5000"
    # As MLflow's own default: loopback and the private ranges (a browser on the LAN).
    for host in (in_containers, "localhost:5000", "127.0.0.1:5000", "10.1.2.3:5000",
                 "192.168.1.20:5000", "172.16.0.2:5000", "172.31.255.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example:5000", "172.32.0.1:5000", "172.15.0.1:5000", "8.8.8.8:5000"):
        assert not is_allowed_host_header(allowed, host), host


def test_prometheus_scrapes_compose_services_and_every_exporter() -> None:
    config = yaml.safe_load((ROOT / "monitoring/prometheus.compose.yml").read_text())
    targets = {job["job_name"]: target for job in config["scrape_configs"]
               for static in job["static_configs"] for target in static["targets"]}
    for job, target in targets.items():
        assert target.split(":")[0] in SERVICES, f"{job} scrapes {target}: no such service"
    exporters = {name for name in SERVICES if name.endswith("-exporter")}
    assert exporters == {"redis-exporter", "postgres-exporter", "node-exporter"}
    assert exporters <= set(targets)


def _one_shot_services() -> set[str]:
    """Services another waits on to finish (`service_completed_successfully`): init jobs."""
    waits = [service["depends_on"] for service in SERVICES.values()
             if isinstance(service.get("depends_on"), dict)]  # a list: just start order
    return {dep for depends_on in waits for dep, condition in depends_on.items()
            if condition.get("condition") == "service_completed_successfully"}


def test_long_running_services_restart_and_init_jobs_run_once() -> None:
    """A crashed server (or a Docker engine restart) must not leave the stack half down; an
    init job restarted after it succeeded would rerun for nothing, forever."""
    one_shot = _one_shot_services()
    assert one_shot == {"kafka-init", "migrate", "airflow-init"}
    for name, service in SERVICES.items():
        expected = "no" if name in one_shot else "unless-stopped"
        assert service.get("restart") == expected, name
        # Rotated logs: the json-file driver's default keeps every line for ever.
        assert service["logging"]["options"]["max-size"] == "20m", name


def test_postgres_is_healthy_only_once_it_accepts_tcp() -> None:
    # Without -h, pg_isready asks the Unix socket, which the image's temporary init server
    # answers while TCP is still closed: migrate and airflow-init would get ECONNREFUSED.
    test = SERVICES["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    args = shlex.split(test[1])
    assert args[0] == "pg_isready" and args[args.index("-h") + 1] == "127.0.0.1"


def test_airflow_login_is_admin_with_the_password_from_the_environment(tmp_path: Path) -> None:
    """Run the API server's start-up as its container does (up to `exec airflow`): Airflow's
    SimpleAuthManager must find the user admin with AIRFLOW_ADMIN_PASSWORD in its file."""
    import sys

    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    service = SERVICES["airflow-api-server"]
    env = service["environment"]
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW_ADMIN_PASSWORD"] == "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD}"
    # On the folder the image makes for reco (the file is rewritten at every start).
    target = PurePosixPath(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert target.parent == PurePosixPath(IMAGE_ENV["RECO_STATE_DIR"])

    shell, flag, script = service["command"]
    prelude, airflow = script.split(" && exec ")
    assert (shell, flag, airflow) == ("sh", "-c", "airflow api-server --port 8080")
    password, passwords = 'p"a\\s$s\'w{o}rd', tmp_path / "passwords.json"
    subprocess.run(["sh", "-c", prelude], check=True, env={
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "AIRFLOW_ADMIN_PASSWORD": password,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)})
    assert passwords.stat().st_mode & 0o777 == 0o600
    with passwords.open("r+") as stream:
        assert SimpleAuthManager._get_passwords(stream) == {"admin": password}


# -- which settings reach the containers ------------------------------------------------------

# What compose must be given (`${VAR:?...}`); everything else has a default.
REQUIRED = {"RECO_PG_PASSWORD": "pg-password-0123456789",
            "RECO_AIRFLOW_SECRET": "airflow-secret-0123456789",
            "RECO_API_KEYS": "service-key-0123456789",
            "RECO_LOG_PSEUDONYM_KEY": "pseudonym-key-0123456789",
            "AIRFLOW_ADMIN_PASSWORD": "admin-password", "GRAFANA_ADMIN_PASSWORD": "admin-password"}
# The stack's wiring, fixed by docker-compose.yml; every other RECO_* it names passes the
# operator's value through.
WIRING = {"RECO_ENV", "RECO_PG_HOST", "RECO_PG_PORT", "RECO_PG_USER", "RECO_REDIS_URL",
          "RECO_KAFKA_BOOTSTRAP", "RECO_MLFLOW_TRACKING_URI", "RECO_HOST", "RECO_AUTH_ENABLED"}
PROJECT_SERVICES = sorted(name for name, service in SERVICES.items()
                          if service.get("build") == ".")
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


def interpolate(value: str, env: dict[str, str], missing: set[str]) -> str:
    """Compose's interpolation of the forms docker-compose.yml uses: ${VAR}, ${VAR:-default},
    ${VAR:?error} (a missing VAR is added to `missing`) and $$ for a literal $."""
    def one(match: re.Match) -> str:
        name, form, default = match.groups()
        if name is None:
            return "$"
        if env.get(name):
            return env[name]
        if form == ":?":
            missing.add(name)
        return default or ""
    assert "$" not in _VARIABLE.sub("", value), f"a form this test does not know: {value}"
    return _VARIABLE.sub(one, value)


def container_env(name: str, dotenv: dict[str, str]) -> dict[str, str]:
    """Service `name`'s environment as compose gives it, the .env file beside it holding
    `dotenv` (and the shell nothing): env_file first, `environment` over it."""
    service, missing = SERVICES[name], set()
    env = {}
    if {"path": ".env", "required": False} in service.get("env_file", []):
        env.update(dotenv)
    env.update({key: interpolate(str(value), dotenv, missing)
                for key, value in service.get("environment", {}).items()})
    assert not missing, f"compose would refuse to start: {sorted(missing)} unset"
    return env


def settings_in(name: str, dotenv: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> Settings:
    """The settings service `name`'s processes read in their container."""
    monkeypatch.chdir(tmp_path)  # no .env of this checkout
    for key in [key for key in os.environ if key.startswith("RECO_")]:
        monkeypatch.delenv(key)
    for key, value in container_env(name, dotenv).items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_project_containers_read_the_env_file_beside_compose(name: str) -> None:
    # Optional: an operator may export everything from the shell instead.
    assert SERVICES[name]["env_file"] == [{"path": ".env", "required": False}]


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_every_reco_setting_of_the_env_file_reaches_the_services(
        name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the ~18 variables compose named used to reach the containers: RECO_JWT_AUDIENCE,
    weights, TTLs... set in .env were silently ignored."""
    dotenv = {**REQUIRED, "RECO_JWT_SECRET": "jwt-secret-0123456789abcdef0123456789",
              "RECO_JWT_AUDIENCE": "shop-api", "RECO_W_POP": "0.5", "RECO_CACHE_TTL_S": "60",
              "RECO_RATE_LIMIT_INGEST_PER_S": "100", "RECO_FORWARDED_ALLOW_IPS": "10.0.0.0/8"}

    s = settings_in(name, dotenv, monkeypatch, tmp_path)

    assert (s.jwt_audience, s.w_pop, s.cache_ttl_s) == ("shop-api", 0.5, 60)
    assert (s.rate_limit_ingest_per_s, s.forwarded_allow_ips) == (100.0, "10.0.0.0/8")
    assert s.rate_limit_reco_per_s == 20.0  # compose's default where .env says nothing
    assert (s.env, s.redis_url) == ("production", "redis://redis:6379/0")  # the wiring


def test_compose_passes_every_setting_it_names_through_but_its_wiring() -> None:
    """A value pinned in `environment` would beat the .env file's, silently."""
    for name in PROJECT_SERVICES:
        for key, value in SERVICES[name].get("environment", {}).items():
            if key.startswith("RECO_") and key not in WIRING:
                assert re.fullmatch(rf"\$\{{{key}(:[-?][^}}]*)?\}}", str(value)), (name, key)


def test_compose_requires_only_the_secrets_every_deployment_needs() -> None:
    missing: set[str] = set()
    for service in SERVICES.values():
        for value in [*service.get("environment", {}).values(), *service.get("volumes", [])]:
            interpolate(str(value), {}, missing)
    assert missing == set(REQUIRED)


def test_rs256_needs_no_jwt_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Compose demanded RECO_JWT_SECRET even when tokens are checked with a public key."""
    from tests.security.conftest import rsa_pair

    _private, public = rsa_pair()
    rs256 = {**REQUIRED, "RECO_JWT_ALGORITHM": "RS256", "RECO_JWT_PUBLIC_KEY": public}

    s = settings_in("recommendations", rs256, monkeypatch, tmp_path)

    assert (s.jwt_algorithm, s.jwt_public_key) == ("RS256", public)
    # HS256 without it starts nothing: the services refuse, naming it.
    with pytest.raises(ValueError, match="RECO_JWT_SECRET must be a real secret"):
        settings_in("recommendations", REQUIRED, monkeypatch, tmp_path)
