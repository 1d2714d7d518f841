"""Opt-in CORS (RECO_CORS_ORIGINS): a shop's pages may call the APIs from the browser."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reco.settings import Settings

SHOP = "https://shop.example"
PREFLIGHT = {"Origin": SHOP, "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization"}


def test_listed_origins_get_preflights_and_headers_on_the_hot_route(make_client, world):
    with make_client(cors_origins=[SHOP]) as client:
        preflight = client.options("/recommendations", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == SHOP
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        # The hot route skips the framework, and its answers carry the headers too.
        answer = client.get("/recommendations?user_id=u1&k=3", headers={"Origin": SHOP})
        assert answer.status_code == 200 and answer.json()["items"]
        assert answer.headers["access-control-allow-origin"] == SHOP
        assert "retry-after" in answer.headers["access-control-expose-headers"].lower()
        assert client.get("/popular?k=3", headers={"Origin": SHOP}).headers[
            "access-control-allow-origin"] == SHOP
        other = client.get("/recommendations?user_id=u1&k=3",
                           headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = client.options("/recommendations",
                                 headers={**PREFLIGHT, "Origin": "https://elsewhere.example"})
        assert refused.status_code == 400


def test_without_origins_no_cors_headers_and_no_preflight(client):
    answer = client.get("/recommendations?user_id=u1&k=3", headers={"Origin": SHOP})
    assert "access-control-allow-origin" not in answer.headers
    assert client.options("/recommendations", headers=PREFLIGHT).status_code == 405


@pytest.mark.parametrize("origins", ["https://shop.example/", "shop.example",
                                     "https://shop.example/path", "https://a.example,*"])
def test_an_origin_browsers_never_send_is_refused_by_name(origins, monkeypatch):
    """An origin written with a trailing slash matched nothing: CORS failed silently."""
    monkeypatch.setenv("RECO_CORS_ORIGINS", origins)
    with pytest.raises(ValidationError, match="RECO_CORS_ORIGINS: .* is not an origin such as"):
        Settings()


def test_origins_are_comma_separated(monkeypatch):
    monkeypatch.setenv("RECO_CORS_ORIGINS", " https://shop.example, http://localhost:3000 ")
    assert Settings().cors_origins == [SHOP, "http://localhost:3000"]
    monkeypatch.setenv("RECO_CORS_ORIGINS", "https://Shop.Example")  # browsers send lower case
    assert Settings().cors_origins == [SHOP]
    monkeypatch.setenv("RECO_CORS_ORIGINS", "*")
    assert Settings().cors_origins == ["*"]
