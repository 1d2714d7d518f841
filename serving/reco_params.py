"""Validation of GET /recommendations query parameters, by hand.

This is the hot endpoint: pydantic-per-parameter validation through FastAPI's dependency
machinery cost about a third of a cache hit's server time here, so the route is a plain
Starlette route and this module checks the parameters directly, with the same 422 format and
wording as the FastAPI routes (`{"detail": [{"loc", "field", "reason"}]}`, serving/errors.py).
Entries are built only on failure: a valid query costs what it did before `loc` existed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from reco.events import ID_PATTERN, QUERY_ID_REASON, ErrorEntry
from serving.errors import query_error
from serving.reco_service import RecoParams

_ID = re.compile(ID_PATTERN)
_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
MAX_K = 100


class ParamErrors(Exception):
    def __init__(self, detail: list[ErrorEntry]) -> None:
        super().__init__(detail)
        self.detail = detail


RECO_PARAMS = frozenset(
    ("user_id", "k", "exclude_seen", "category", "min_price", "max_price", "explain"))
_INVALID_INT = "Input should be a valid integer, unable to parse string as an integer"


def parse_query(raw: bytes, allowed: frozenset[str]) -> dict[str, str]:
    """A URL query string -> {name: value} (blank values kept), like Starlette's QueryParams
    at a fraction of its cost, but refusing (ParamErrors) what Starlette lets by: a name not in
    `allowed` (a misspelt `excludeSeen` would be ignored), a name given twice (which value was
    meant?) and percent-encoded bytes that are not UTF-8 (Starlette makes them U+FFFD)."""
    if not raw:
        return {}
    out: dict[str, str] = {}
    errors: list[ErrorEntry] = []
    if b"%" in raw or b"+" in raw or not raw.isascii():
        pairs = _unescaped_pairs(raw, errors)
    else:  # the usual query: one decode, no unescaping
        pairs = [pair.partition("=") for pair in raw.decode("ascii").split("&") if pair]
    for name, _, value in pairs:
        if name in out:
            errors.append(query_error(name, "given more than once"))
        elif name not in allowed:
            errors.append(query_error(name, "unknown parameter; known: "
                                      + ", ".join(sorted(allowed))))
        out[name] = value
    if errors:
        raise ParamErrors(errors)
    return out


def _unescaped_pairs(raw: bytes, errors: list[ErrorEntry]) -> list[tuple[str, str, str]]:
    """(name, "=", value) of each pair (str.partition's shape), percent-escapes and + undone;
    a pair that is not UTF-8 is left out and named in `errors`."""
    pairs = []
    for pair in raw.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        try:
            pairs.append((_unescape(raw_name), "=", _unescape(raw_value)))
        except UnicodeDecodeError:
            errors.append(query_error(_unescape(raw_name, errors="replace"),
                                      "must be UTF-8, percent-encoded"))
    return pairs


def _unescape(raw: bytes, errors: str = "strict") -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", errors)


def parse_reco_params(query: Mapping[str, str]) -> RecoParams:
    errors: list[ErrorEntry] = []

    def fail(field: str, reason: str) -> None:
        errors.append(query_error(field, reason))

    user_id = _string(query, "user_id", fail, required=True, pattern=True)
    k = _int(query, "k", 20, 1, MAX_K, fail)
    exclude_seen = _bool(query, "exclude_seen", True, fail)
    category = _string(query, "category", fail)
    min_price = _price(query, "min_price", fail)
    max_price = _price(query, "max_price", fail)
    explain = _bool(query, "explain", False, fail)
    if not errors and min_price is not None and max_price is not None and min_price > max_price:
        fail("min_price", f"must not exceed max_price ({max_price:g})")
    if errors:
        raise ParamErrors(errors)
    return RecoParams(user_id or "", k, exclude_seen, category, min_price, max_price, explain)


def _string(query: Mapping[str, str], name: str, fail, required: bool = False,
            pattern: bool = False) -> str | None:
    value = query.get(name)
    if value is None:
        if required:
            fail(name, "Field required")
        return None
    if not value:
        fail(name, "String should have at least 1 character")
    elif len(value) > 128:
        fail(name, "String should have at most 128 characters")
    elif pattern and not _ID.fullmatch(value):  # match's `$` lets a trailing newline by
        fail(name, QUERY_ID_REASON)
    return value


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int, fail) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int_text(raw)
    except ValueError:
        fail(name, _INVALID_INT)
        return default
    if value < low:
        fail(name, f"Input should be greater than or equal to {low}")
    elif value > high:
        fail(name, f"Input should be less than or equal to {high}")
    return value


def _bool(query: Mapping[str, str], name: str, default: bool, fail) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    fail(name, "Input should be a valid boolean, unable to interpret input")
    return default


def _price(query: Mapping[str, str], name: str, fail) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(_ascii(raw))
    except ValueError:
        fail(name, "Input should be a valid number, unable to parse string as a number")
        return None
    if not math.isfinite(value):
        fail(name, "Input should be a finite number")
        return None
    if value < 0:
        fail(name, "Input should be greater than or equal to 0")
    return value


def int_text(raw: str) -> int:
    """An integer parameter's value: ASCII digits with an optional sign (int() alone also reads
    other scripts' digits and "1_0"; pydantic's lax mode also takes "1.0")."""
    text = raw.strip()
    if not _INT.fullmatch(text):
        raise ValueError(_INVALID_INT)
    return int(text)


def _ascii(raw: str) -> str:
    """`raw` for int() and float(), which would also read other scripts' digits ('١٠' is 10)
    where FastAPI's routes refuse them."""
    if not raw.isascii():
        raise ValueError(raw)
    return raw
