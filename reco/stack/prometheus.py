"""The local stack's Prometheus: its scrape configuration, written from the app components."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import yaml

from reco.stack.servers import REPO_ROOT

ALERT_RULES = REPO_ROOT / "monitoring" / "alerts.yml"


def write_config(path: Path, targets: dict[str, list[str]], interval_s: int = 5) -> Path:
    """`targets`: job name -> host:port of each copy of that process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in sorted(targets.items())
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def metrics_target(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port}"
