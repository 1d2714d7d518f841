"""Settings: what the dump shows, and how bad values are refused at start."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"RECO_PG_PASSWORD": "pg-password-0123456789",
           "RECO_AIRFLOW_SECRET": "airflow-secret-0123456789",
           "RECO_JWT_SECRET": "jwt-secret-0123456789abcdef0123456789",
           "RECO_LOG_PSEUDONYM_KEY": "pseudonym-key-0123456789"}


def _clean_env(**env: str) -> dict[str, str]:
    """This process's environment without RECO_* variables, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RECO_")},
            "PYTHONPATH": str(ROOT), **env}


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
