"""How to prepare and launch each real server: used by `reco up` and by the test fixtures.

Each `*_command` returns the foreground command line of a server; each `prepare_*` does the
one-time set-up of its data folder and is safe to call again.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
JARS_POM = Path(__file__).resolve().parent / "jars.pom.xml"
LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"
PG_SERVICE_USER = "postgres"


class ServerSetupError(RuntimeError):
    """A server could not be prepared; the message says why."""


def venv_bin(name: str) -> str:
    """A console script of this virtualenv (airflow, mlflow, supervisord...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# --- PostgreSQL ---------------------------------------------------------------------------


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise ServerSetupError(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return path


def pg_run_as() -> str | None:
    """initdb/postgres refuse to run as root: run them as the `postgres` user then."""
    return PG_SERVICE_USER if os.geteuid() == 0 else None


def _as_pg_user(cmd: list[str]) -> list[str]:
    user = pg_run_as()
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def prepare_postgres(data_dir: Path) -> None:
    """initdb once, with trust auth on loopback (local stack and tests only)."""
    if (data_dir / "PG_VERSION").exists():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    user = pg_run_as()
    if user:
        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        _check_traversable(data_dir, user)
    result = subprocess.run(
        _as_pg_user([pg_bin("initdb"), "-D", str(data_dir), "-U", "postgres",
                     "--auth=trust", "--encoding=UTF8", "--no-instructions"]),
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise ServerSetupError(f"initdb failed: {result.stderr.strip()[-2000:]}")


def _check_traversable(path: Path, user: str) -> None:
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(path)])
    if probe.returncode != 0:
        raise ServerSetupError(
            f"user {user!r} cannot write {path}: make its parent folders traversable "
            "(chmod o+x) or set RECO_STATE_DIR to a folder under /var or /tmp"
        )


def postgres_command(data_dir: Path, port: int) -> list[str]:
    return _as_pg_user([
        pg_bin("postgres"), "-D", str(data_dir), "-p", str(port),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data_dir}",
        "-c", "max_connections=200", "-c", "shared_buffers=256MB", "-c", "fsync=on",
    ])


def ensure_databases(port: int, user: str, password: str, databases: list[str]) -> None:
    """Create the application role and its databases if they do not exist."""
    import psycopg
    from psycopg import sql

    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)))
        for db in databases:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(user)))


# --- Redis --------------------------------------------------------------------------------


def redis_command(data_dir: Path, port: int, persist: bool = True) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    server = shutil.which("redis-server")
    if server is None:
        raise ServerSetupError("redis-server not found: apt-get install redis-server")
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
           "--daemonize", "no", "--protected-mode", "yes", "--databases", "64"]
    # Persisted by the append-only file alone: snapshots beside it ("--save 60 1") rewrote the
    # whole dataset every minute of traffic.
    cmd += ["--appendonly", "yes" if persist else "no", "--save", ""]
    if persist:
        cmd += ["--appendfsync", "everysec"]
    return cmd


# --- Apache Kafka (KRaft, broker + controller in one JVM) --------------------------------


def ensure_jars(jars_dir: Path) -> Path:
    """Gather Kafka and the PostgreSQL JDBC driver from Maven Central (cached in ~/.m2)."""
    marker = jars_dir / ".complete"
    if marker.exists() and marker.read_text() == JARS_POM.read_text():
        return jars_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServerSetupError("Maven not found: apt-get install maven openjdk-17-jre-headless")
    if jars_dir.exists():
        shutil.rmtree(jars_dir)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(JARS_POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={jars_dir}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise ServerSetupError(f"mvn could not fetch the Kafka jars: {output}")
    marker.write_text(JARS_POM.read_text())
    return jars_dir


def jdbc_driver_jar(jars_dir: Path, configured: Path | None = None) -> Path:
    """The PostgreSQL JDBC jar: the configured one (RECO_JDBC_DRIVER_PATH), else Maven's."""
    if configured is not None:
        if not configured.is_file():
            raise ServerSetupError(
                f"RECO_JDBC_DRIVER_PATH={configured} is not a file: point it at a PostgreSQL "
                "JDBC jar (Debian: libpostgresql-jdbc-java) or unset it to fetch one with Maven"
            )
        return configured
    ensure_jars(jars_dir)
    return next(jars_dir.glob("postgresql-*.jar"))


def kafka_config(data_dir: Path, port: int, controller_port: int) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "server.properties"
    config.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data_dir / 'log'}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=6",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "message.max.bytes=2097152",
        "",
    ]))
    return config


def prepare_kafka(jars_dir: Path, data_dir: Path, port: int, controller_port: int) -> Path:
    """Write the broker config and format its log directory once."""
    ensure_jars(jars_dir)
    config = kafka_config(data_dir, port, controller_port)
    if (data_dir / "log" / "meta.properties").exists():
        return config
    classpath = f"{jars_dir}/*"
    cluster_id = _run_setup(
        ["java", "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
        "generating the Kafka cluster id").strip().splitlines()[-1]
    _run_setup(["java", "-cp", classpath, "kafka.tools.StorageTool", "format",
                "-t", cluster_id, "-c", str(config)], "formatting the Kafka log")
    return config


def _run_setup(cmd: list[str], what: str) -> str:
    """Run a set-up command and return its output; on failure raise with the tail of its
    output (a bare exit status would hide the reason: wrong Java, missing jars, full disk)."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise ServerSetupError(f"{what} failed (exit status {result.returncode}): {output}")
    return result.stdout


def kafka_command(jars_dir: Path, config: Path, heap: str = "512m") -> list[str]:
    return ["java", f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{jars_dir}/*", "kafka.Kafka", str(config)]
