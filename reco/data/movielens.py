"""MovieLens-100k as e-commerce events: real users, items and timestamps (1997-98).

Sources: the `recbole` wheel on PyPI, which carries the data set as RecBole atomic files under
`recbole/dataset_example/ml-100k/` (read straight from the zip, never vendored), or the official
GroupLens files `u.data` (+ `u.item` beside it).

Documented mappings (MovieLens has ratings, movies and no prices):
- rating -> event_type: 5 purchase, 4 cart, 3 click, 1-2 view (a stronger opinion is treated as
  a deeper step of the funnel, so event weights rank them the same way ratings do);
- category: the movie's first genre in MovieLens' own genre order (unknown, Action, Adventure,
  Animation, Children's, Comedy, Crime, Documentary, Drama, Fantasy, Film-Noir, Horror, Musical,
  Mystery, Romance, Sci-Fi, Thriller, War, Western); "unknown" when it has none;
- price: 2.99 + (crc32(item_id) mod 1800) / 100, i.e. a stable value in [2.99, 20.98];
- created_at: the item's first interaction (when it "arrived" in the shop); in_stock: true;
- event_id: uuid5 of (user_id, item_id, timestamp), so re-imports are idempotent downstream;
  the file is in event order (`reco.event_order`: timestamp, then event id), so `reco replay`
  sends each user's same-second ratings in the order the evaluation split and the batch jobs
  give them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from reco.data.schema import (
    EVENTS_FILE,
    EVENTS_SCHEMA,
    ITEMS_FILE,
    ITEMS_SCHEMA,
    write_table,
)
from reco.event_order import sort_events

RECBOLE_VERSION = "1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RATING_EVENT_TYPES: dict[int, str] = {5: "purchase", 4: "cart", 3: "click", 2: "view", 1: "view"}
GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "reco:movielens-100k")


@dataclass(frozen=True)
class Raw:
    """The source as read: ratings (user_id, item_id, rating, timestamp s) and movies."""

    ratings: pd.DataFrame
    movies: pd.DataFrame  # item_id, title, genres (list[str]), release_year (int | None)


def fetch_recbole_wheel(cache_dir: Path, version: str = RECBOLE_VERSION) -> Path:
    """The recbole wheel from PyPI, downloaded once with this interpreter's pip and cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"recbole-{version}-*.whl"
    found = sorted(cache_dir.glob(pattern))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-q", f"recbole=={version}", "-d", str(cache_dir)],
            check=True,
        )
        found = sorted(cache_dir.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download left no {pattern} in {cache_dir}")
    return found[0]


def _atomic(raw: bytes) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated with typed headers such as `user_id:token`."""
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def read_recbole(wheel: Path) -> Raw:
    with zipfile.ZipFile(wheel) as zf:
        inter = _atomic(zf.read(RECBOLE_PREFIX + "ml-100k.inter"))
        item = _atomic(zf.read(RECBOLE_PREFIX + "ml-100k.item"))
    ratings = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(np.int64),
            "item_id": inter["item_id"].astype(np.int64),
            "rating": inter["rating"].astype(float).astype(np.int64),
            "timestamp": inter["timestamp"].astype(float).astype(np.int64),
        }
    )
    movies = pd.DataFrame(
        {
            "item_id": item["item_id"].astype(np.int64),
            "title": item["movie_title"],
            "genres": [g.split() if g else [] for g in item["class"]],
            "release_year": [int(y) if y.isdigit() else None for y in item["release_year"]],
        }
    )
    return Raw(ratings, movies)


def read_official(u_data: Path, u_item: Path | None = None) -> Raw:
    """GroupLens' `u.data` (user, item, rating, unix time) and `u.item` (pipe-separated)."""
    ratings = pd.read_csv(
        u_data, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"],
        dtype=np.int64,
    )
    if u_item is None and (u_data.parent / "u.item").exists():
        u_item = u_data.parent / "u.item"
    if u_item is None:
        ids = np.sort(ratings["item_id"].unique())
        movies = pd.DataFrame(
            {"item_id": ids, "title": None, "genres": [[] for _ in ids], "release_year": None}
        )
        return Raw(ratings, movies)
    cols = ["item_id", "title", "release_date", "video_date", "url", *GENRES]
    item = pd.read_csv(u_item, sep="|", header=None, names=cols, encoding="latin-1", dtype=str,
                       keep_default_na=False)
    flags = item[list(GENRES)].to_numpy() == "1"
    movies = pd.DataFrame(
        {
            "item_id": item["item_id"].astype(np.int64),
            "title": item["title"],
            "genres": [[g for g, on in zip(GENRES, row, strict=True) if on] for row in flags],
            "release_year": [int(d[-4:]) if d[-4:].isdigit() else None
                             for d in item["release_date"]],
        }
    )
    return Raw(ratings, movies)


def synthetic_price(item_id: str) -> float:
    return round(2.99 + (zlib.crc32(item_id.encode()) % 1800) / 100, 2)


def to_events(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings -> events in event order (timestamp, event id), timestamps in epoch ms."""
    unknown = set(ratings["rating"].unique()) - set(RATING_EVENT_TYPES)
    if unknown:
        raise ValueError(f"ratings outside 1-5: {sorted(unknown)}")
    users = ratings["user_id"].astype(str)
    items = ratings["item_id"].astype(str)
    ts_ms = ratings["timestamp"].to_numpy(np.int64) * 1000
    ids = [
        str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{u}:{i}:{t}"))
        for u, i, t in zip(users, items, ts_ms, strict=True)
    ]
    events = pd.DataFrame(
        {
            "event_id": ids,
            "user_id": users.to_numpy(),
            "item_id": items.to_numpy(),
            "event_type": ratings["rating"].map(RATING_EVENT_TYPES).to_numpy(),
            "timestamp": ts_ms,
            "session_id": pd.Series([None] * len(ratings), dtype=object),
        }
    )
    return sort_events(events, "timestamp").reset_index(drop=True)


def _year(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def to_items(movies: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    first_seen = events.groupby("item_id")["timestamp"].min()
    item_ids = movies["item_id"].astype(str)
    created = item_ids.map(first_seen)
    # Movies nobody rated (none in ML-100k) arrive with the first event of the data set.
    created = created.fillna(events["timestamp"].min()).astype(np.int64)
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "title": movies["title"].to_numpy(),
            "category": [g[0] if g else "unknown" for g in movies["genres"]],
            "price": [synthetic_price(i) for i in item_ids],
            "in_stock": True,
            "created_at": created.to_numpy(),
            "attributes": [
                json.dumps({"genres": g, "release_year": _year(y)}, separators=(",", ":"))
                for g, y in zip(movies["genres"], movies["release_year"], strict=True)
            ],
        }
    ).sort_values("item_id", key=lambda s: s.astype(np.int64), ignore_index=True)


def convert(raw: Raw) -> tuple[pd.DataFrame, pd.DataFrame]:
    events = to_events(raw.ratings)
    return events, to_items(raw.movies, events)


def write(events: pd.DataFrame, items: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    ev = write_table(pa.Table.from_pandas(events, preserve_index=False), out_dir / EVENTS_FILE,
                     EVENTS_SCHEMA)
    it = write_table(pa.Table.from_pandas(items, preserve_index=False), out_dir / ITEMS_FILE,
                     ITEMS_SCHEMA)
    return ev, it


def load(source: Path | None, cache_dir: Path) -> Raw:
    """Read `source` (u.data, a folder holding it, or a recbole wheel), else fetch the wheel."""
    if source is None:
        return read_recbole(fetch_recbole_wheel(cache_dir))
    if source.is_dir():
        source = source / "u.data"
    if source.suffix == ".whl":
        return read_recbole(source)
    return read_official(source)


def build(source: Path | None, out_dir: Path, cache_dir: Path) -> tuple[Path, Path]:
    """`reco data movielens-100k`: read, convert and write events.parquet + items.parquet."""
    events, items = convert(load(source, cache_dir))
    return write(events, items, out_dir)
