"""MovieLens-100k: counts, the documented mappings, order and the official-file path."""

from __future__ import annotations

import uuid
import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from reco.data import movielens
from reco.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, shift_to_now
from reco.event_order import sort_events


@pytest.fixture(scope="module")
def built(recbole_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ml")
    movielens.build(recbole_wheel, out, out / "cache")
    return out


def _source_ratings(wheel: Path) -> list[list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(movielens.RECBOLE_PREFIX + "ml-100k.inter").decode()
    return [line.split("\t") for line in text.splitlines()[1:]]


def test_counts_and_rating_mapping(built: Path, recbole_wheel: Path) -> None:
    events = pd.read_parquet(built / "events.parquet")
    assert len(events) == 100_000
    assert events["user_id"].nunique() == 943
    assert events["item_id"].nunique() == 1_682
    # Expected counts computed from the source file itself, then pinned.
    by_rating = Counter(int(float(r[2])) for r in _source_ratings(recbole_wheel))
    expected = {"purchase": by_rating[5], "cart": by_rating[4], "click": by_rating[3],
                "view": by_rating[1] + by_rating[2]}
    assert expected == {"purchase": 21_201, "cart": 34_174, "click": 27_145, "view": 17_480}
    assert events["event_type"].value_counts().to_dict() == expected


def test_schema_order_and_ids(built: Path, recbole_wheel: Path) -> None:
    assert pq.read_schema(built / "events.parquet").remove_metadata() == EVENTS_SCHEMA
    assert pq.read_schema(built / "items.parquet").remove_metadata() == ITEMS_SCHEMA
    events = pd.read_parquet(built / "events.parquet")
    assert events["timestamp"].is_monotonic_increasing
    # Same-second ratings in event order (reco.event_order): `reco replay` sends the file as is.
    assert events.equals(sort_events(events, "timestamp").reset_index(drop=True))
    assert events.duplicated(["user_id", "timestamp"]).sum() == 50_561  # ties are the rule
    assert (events["timestamp"].min(), events["timestamp"].max()) == (874_724_710_000,
                                                                     893_286_638_000)
    assert events["event_id"].is_unique
    first = _source_ratings(recbole_wheel)[0]  # 196 242 3 881250949
    row = events[(events.user_id == "196") & (events.item_id == "242")].iloc[0]
    assert (row.event_type, row.timestamp) == ("click", 881_250_949_000)
    assert row.event_id == str(uuid.uuid5(movielens.EVENT_ID_NAMESPACE,
                                          f"{first[0]}:{first[1]}:881250949000"))
    assert events["session_id"].isna().all()


def test_catalogue(built: Path) -> None:
    items = pd.read_parquet(built / "items.parquet").set_index("item_id")
    events = pd.read_parquet(built / "events.parquet")
    assert len(items) == 1_682
    toy = items.loc["1"]
    assert (toy.title, toy.category) == ("Toy Story", "Animation")
    assert toy.attributes == '{"genres":["Animation","Children\'s","Comedy"],"release_year":1995}'
    assert items.loc["3", "category"] == "Thriller"
    assert items["category"].value_counts().head(3).to_dict() == {"Drama": 531, "Comedy": 426,
                                                                  "Action": 251}
    assert toy.price == 12.82  # 2.99 + (crc32(b"1") = 2212294583) % 1800 / 100: the same everywhere
    assert items["price"].between(2.99, 20.98).all() and items["in_stock"].all()
    first_seen = events.groupby("item_id")["timestamp"].min()
    assert (items["created_at"] == first_seen.reindex(items.index)).all()


def test_official_files(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("2\t10\t5\t900000000\n1\t10\t1\t900000005\n"
                                     "1\t11\t4\t900000001\n1\t12\t3\t900000001\n")
    flags = ["0"] * 19
    drama = flags.copy()
    drama[8] = drama[14] = "1"  # Drama, Romance
    (tmp_path / "u.item").write_bytes(
        ("10|Caf\xe9 Society (1995)|01-Jan-1995||http://x|" + "|".join(drama) + "\n"
         "11|Nothing (1996)|||http://y|" + "|".join(flags) + "\n"
         "12|Noir (1950)|01-Jan-1950||http://z|" + "|".join(["0"] * 10 + ["1"] + ["0"] * 8)
         + "\n").encode("latin-1"))
    movielens.build(tmp_path / "u.data", tmp_path / "out", tmp_path / "cache")
    events = pd.read_parquet(tmp_path / "out" / "events.parquet")
    # User 1's two ratings of one second in event id order: 12's id sorts before 11's.
    assert events[["user_id", "item_id", "event_type", "timestamp"]].values.tolist() == [
        ["2", "10", "purchase", 900_000_000_000],
        ["1", "12", "click", 900_000_001_000],
        ["1", "11", "cart", 900_000_001_000],
        ["1", "10", "view", 900_000_005_000],
    ]
    assert events["event_id"].iloc[1] < events["event_id"].iloc[2]
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert items[["item_id", "title", "category"]].values.tolist() == [
        ["10", "Café Society (1995)", "Drama"], ["11", "Nothing (1996)", "unknown"],
        ["12", "Noir (1950)", "Film-Noir"],
    ]


def test_shift_to_now_keeps_gaps() -> None:
    events = pd.DataFrame({"timestamp": [1_000, 5_000, 65_000]})
    items = pd.DataFrame({"created_at": [500]})
    shifted, moved = shift_to_now(events, now=1_700_000_000_000, items=items)
    assert shifted["timestamp"].tolist() == [1_699_999_936_000, 1_699_999_940_000,
                                             1_700_000_000_000]
    assert moved["created_at"].tolist() == [1_699_999_935_500]
