"""Settings: what the dump shows, and how bad values are refused at start."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from reco.settings import Settings, settings_errors

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"RECO_PG_PASSWORD": "pg-password-0123456789",
           "RECO_AIRFLOW_SECRET": "airflow-secret-0123456789",
           "RECO_JWT_SECRET": "jwt-secret-0123456789abcdef0123456789",
           "RECO_LOG_PSEUDONYM_KEY": "pseudonym-key-0123456789"}


def _clean_env(**env: str) -> dict[str, str]:
    """This process's environment without RECO_* variables, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RECO_")},
            "PYTHONPATH": str(ROOT), **env}


def _refusals(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> list[str]:
    """The lines start-up refuses `name=value` with (the test's folder holds no .env)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    return settings_errors(refused.value)


def test_the_settings_dump_masks_every_secret(tmp_path: Path) -> None:
    """README's command that prints every setting with its value shows no secret."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"`\.venv/bin/(python -c [^`]+)`\s+prints all of them", readme).group(1)
    python, *args = shlex.split(command)

    result = subprocess.run([sys.executable, *args], env=_clean_env(**SECRETS), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    dump = json.loads(result.stdout)
    for name, value in SECRETS.items():
        assert dump[name.removeprefix("RECO_").lower()] == "**********", name
        assert value not in result.stdout, name


def test_previous_pseudonym_keys_are_a_comma_separated_list_kept_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_LOG_PSEUDONYM_KEY", "pseudonym-key-0123456789")
    monkeypatch.setenv("RECO_LOG_PSEUDONYM_PREVIOUS_KEYS",
                       " old-key-0123456789abc, older-key-0123456789,")
    settings = Settings()
    assert settings.pseudonym_keys == ["pseudonym-key-0123456789", "old-key-0123456789abc",
                                       "older-key-0123456789"]
    assert "old" not in settings.model_dump_json()


# Values that passed start-up and then broke a process, each with the reason it is refused.
REFUSED = [
    # 0 divided every event by zero (the batch retried forever), < 0 inverted the decay, and
    # under a day events soon fell past the landmark's ~1,000 half-lives and scored nothing.
    ("RECO_POPULARITY_HALF_LIFE_H", "0", "must be greater than or equal to 24"),
    ("RECO_POPULARITY_HALF_LIFE_H", "1", "must be greater than or equal to 24"),
    ("RECO_POPULARITY_HALF_LIFE_H", "-720", "must be greater than or equal to 24"),
    ("RECO_POPULARITY_HALF_LIFE_H", "nan", "must be a finite number"),
    ("RECO_COVIEW_HALF_LIFE_H", "inf", "must be a finite number"),
    ("RECO_TRENDING_BUCKET_S", "0", "must be greater than or equal to 1"),
    ("RECO_CONSUMER_BATCH_MAX", "0", "must be greater than or equal to 1"),
    ("RECO_MAX_FUTURE_SKEW_S", "nan", "must be a finite number"),
    ("RECO_MAX_FUTURE_SKEW_S", "-1", "must be greater than or equal to 0"),
    ("RECO_INGEST_ACK_TIMEOUT_S", "0", "must be greater than 0"),
    ("RECO_INGEST_ACK_TIMEOUT_S", "-5", "must be greater than 0"),
    ("RECO_MAX_BATCH_EVENTS", "0", "must be greater than or equal to 1"),
    ("RECO_W_POP", "inf", "must be a finite number"),
    ("RECO_W_COVIEW", "-0.4", "must be greater than or equal to 0"),
    ("RECO_MAX_CATEGORY_SHARE", "nan", "must be a finite number"),
    ("RECO_MAX_CATEGORY_SHARE", "1.5", "must be less than or equal to 1"),
    ("RECO_POPULAR_SNAPSHOT_REFRESH_S", "0", "must be greater than 0"),
    ("RECO_RATE_LIMIT_WINDOW_S", "0", "must be greater than 0"),
    ("RECO_RATE_LIMIT_INGEST_PER_S", "nan", "must be a finite number"),
    ("RECO_RECENT_TTL_S", "0", "must be greater than or equal to 1"),
    ("RECO_SESSION_GAP_S", "-1", "must be greater than or equal to 1"),
    ("RECO_INGEST_PORT", "0", "must be greater than or equal to 1"),
    ("RECO_PROCESSOR_METRICS_PORT", "70000", "must be less than or equal to 65535"),
    ("RECO_INGEST_PORT", "abc", "must be a valid integer, unable to parse string as an integer"),
    ("RECO_AIRFLOW_HISTORY_DAYS", "-1", "must be greater than or equal to 0"),
    ("RECO_AIRFLOW_HISTORY_DAYS", "30d",
     "must be a valid integer, unable to parse string as an integer"),
]


@pytest.mark.parametrize(("name", "value", "reason"), REFUSED)
def test_start_up_refuses_values_that_break_a_process(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, name: str, value: str,
                                                      reason: str) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    assert _refusals(monkeypatch, name, value) == [f"{name}: {reason}"]


@pytest.mark.parametrize(("name", "value"), [
    ("RECO_POPULARITY_HALF_LIFE_H", "24"), ("RECO_MAX_FUTURE_SKEW_S", "0"),
    ("RECO_RATE_LIMIT_INGEST_PER_S", "0"), ("RECO_PROCESSOR_METRICS_PORT", "-1"),
    ("RECO_RECO_POPULAR_FILLER_N", "0"), ("RECO_MAX_CATEGORY_SHARE", "1"),
    ("RECO_AIRFLOW_HISTORY_DAYS", "0"),  # keeps Airflow's history
])
def test_start_up_keeps_the_meaningful_edges(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             name: str, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    assert getattr(Settings(), name.removeprefix("RECO_").lower()) == float(value)


def test_event_weights_that_are_not_json_say_so(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert _refusals(monkeypatch, "RECO_EVENT_WEIGHTS", "view=1") == [
        'RECO_EVENT_WEIGHTS must be a JSON object, e.g. {"view": 1, "purchase": 10}']
    # JSON from a .env file as from the environment.
    monkeypatch.delenv("RECO_EVENT_WEIGHTS")
    (tmp_path / ".env").write_text('RECO_EVENT_WEIGHTS={"view": 2}\n')
    assert Settings().event_weights["view"] == 2.0


@pytest.mark.parametrize("command", [["db", "url"], ["run", "processor"]])
def test_the_cli_names_each_bad_setting_in_one_line(tmp_path: Path, command: list[str]) -> None:
    """Was a 54-line traceback naming `ingest_port`, or "error parsing value for field
    event_weights"; the services' `reco run` loads its settings the same way."""
    env = _clean_env(RECO_INGEST_PORT="abc", RECO_EVENT_WEIGHTS="view=1",
                     RECO_TRENDING_BUCKET_S="0")

    result = subprocess.run([sys.executable, "-m", "reco.cli", *command], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "RECO_INGEST_PORT: must be a valid integer, unable to parse string as an integer",
        'RECO_EVENT_WEIGHTS must be a JSON object, e.g. {"view": 1, "purchase": 10}',
        "RECO_TRENDING_BUCKET_S: must be greater than or equal to 1",
    ]


def test_the_cli_prints_a_production_refusal_alone(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "reco.cli", "db", "url"],
                            env=_clean_env(RECO_ENV="production", **SECRETS), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "RECO_AUTH_ENABLED must be true when RECO_ENV=production"]
    assert not any(value in result.stderr for value in SECRETS.values())


def test_trusted_proxies_must_be_addresses_or_networks(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """uvicorn takes a host name for a literal no client address ever equals: the balancer
    would silently stay the client of every request."""
    monkeypatch.chdir(tmp_path)
    not_an_address = ("RECO_FORWARDED_ALLOW_IPS: {!r} is not an IP address, a network (CIDR, "
                      "no host bits set) or *")
    for value, entry in (("10.0.0.0/8, lb.internal", "lb.internal"),
                         ("10.0.0.1/8", "10.0.0.1/8")):  # uvicorn parses networks strictly
        assert _refusals(monkeypatch, "RECO_FORWARDED_ALLOW_IPS", value) == [
            not_an_address.format(entry)]
    assert _refusals(monkeypatch, "RECO_FORWARDED_ALLOW_IPS", "10.0.0.1,*") == [
        "RECO_FORWARDED_ALLOW_IPS: * trusts every address only as the whole value, not in a "
        "list"]
    # uvicorn compares the whole value with "*": spaces are dropped.
    for accepted, kept in (("10.0.0.0/8, 192.168.1.5", "10.0.0.0/8,192.168.1.5"), (" *", "*"),
                           ("::1,fd00::/8", "::1,fd00::/8")):
        monkeypatch.setenv("RECO_FORWARDED_ALLOW_IPS", accepted)
        assert Settings().forwarded_allow_ips == kept


@pytest.mark.parametrize(("value", "mode"), [("auto", "auto"), ("TRUE", "true"), ("1", "true"),
                                              (" off ", "false"), ("false", "false")])
def test_catalogue_only_reads_its_words_and_booleans(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path, value: str,
                                                     mode: str) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("RECO_CATALOGUE_ONLY", value)
    assert Settings().catalogue_only == mode


def test_catalogue_only_refuses_other_words(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECO_CATALOGUE_ONLY", "sometimes")
    with pytest.raises(ValidationError, match="catalogue_only"):
        Settings()


def test_the_mlflow_address_follows_its_port_unless_given(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Only RECO_MLFLOW_PORT moved: the stack started MLflow there, and every process was
    still told http://127.0.0.1:5000 (another stack's MLflow, or nothing)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECO_MLFLOW_TRACKING_URI", raising=False)
    assert Settings().mlflow_tracking_uri == "http://127.0.0.1:5000"
    monkeypatch.setenv("RECO_MLFLOW_PORT", "25000")
    assert Settings().mlflow_tracking_uri == "http://127.0.0.1:25000"
    monkeypatch.setenv("RECO_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().mlflow_tracking_uri == "http://mlflow:5000"


def test_the_apis_logs_redact_previous_pseudonym_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.security import configure_logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    configure_logging(Settings(log_pseudonym_previous_keys="old-key-0123456789abc"))
    logging.getLogger("reco.test").warning("key old-key-0123456789abc in a message")
    assert "old-key" not in stream.getvalue() and "in a message" in stream.getvalue()
