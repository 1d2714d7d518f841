"""Opt-in CORS for shops that call the APIs from their pages (`RECO_CORS_ORIGINS`).

Added outside the hot routes (serving/hot_routes.py), so their answers carry the headers too,
and inside the HTTP metrics (preflights count under the route `<unmatched>`). Nothing
is added when no origin is set: the default deployment serves a shop's backend and pays
nothing per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from reco.settings import Settings

PREFLIGHT_CACHE_S = 600  # browsers cap it (Chromium at 2 hours); one preflight per page view
EXPOSED = ["Retry-After"]  # 429 and 503 answers: when to try again


def allow_cross_origin(app: FastAPI, settings: Settings, methods: Sequence[str],
                       headers: Sequence[str]) -> None:
    """Answer preflights and add CORS headers for `settings.cors_origins` (no cookies: the
    APIs authenticate by header)."""
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=list(methods), allow_headers=list(headers),
                           expose_headers=EXPOSED, max_age=PREFLIGHT_CACHE_S)
