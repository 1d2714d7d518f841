"""HTTPS for both services: uvicorn options from `tls_certfile` / `tls_keyfile`."""

from __future__ import annotations

from typing import Any

from reco.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """`ssl_certfile`/`ssl_keyfile` when both are set (Settings refuses just one), else {}."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return {}
    for path in (settings.tls_certfile, settings.tls_keyfile):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    return {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
