"""Published models' item lists mapped to the catalogue's rows, once per version and catalogue.

A cache miss reads the user's ALS and SASRec candidate lists, and in the benchmark's miss
phase every miss is a user whose lists were never read before: looking up their ~200 ids in
the 100,000-entry id -> row map (cold dict entries, key strings and ints, ~0.5-1 us each) was
~15% of a miss's CPU. Those lists also carry each item's position in the model version's item
list (`keys.model_items`, `reco.neighbours.encode`). That list is mapped to rows here, when the
version or the catalogue changes, and a user's rows are then one array take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from reco.catalog import ItemIndex

# The model whose item list numbers each kind of user list (serving.reco_store.USER_KINDS).
MODEL_OF_KIND = {"user_cf": "als", "user_seq": "sasrec"}
CHUNK = 1000  # ids mapped per call (see map_model_items)


@dataclass(frozen=True)
class ModelRows:
    """One model version's items as rows of one catalogue row space."""

    version: str
    space: int  # ItemIndex.space it was mapped in
    unknown_row: int  # that index's unknown row: valid for indexes at least as long
    rows: np.ndarray  # int64 row of each model item, -1 where the catalogue lacked it

    def take(self, codes: np.ndarray, items: ItemIndex) -> np.ndarray | None:
        """Rows of the model items `codes` for ranking with `items`; None when this mapping
        does not hold for `items` or names an item the catalogue lacked (the caller then maps
        the list's ids, as for a list without codes)."""
        if self.space != items.space or self.unknown_row > items.unknown_row:
            return None  # another catalogue, or an index older than the mapping
        if len(codes) and (codes.min() < 0 or codes.max() >= len(self.rows)):
            return None
        rows = self.rows[codes]
        if (rows < 0).any():  # an item without a row then may have one now: map its id
            return None
        return rows

    def holds_for(self, version: str, items: ItemIndex) -> bool:
        return self.version == version and self.space == items.space


def map_model_items(version: str, ids: list[str], items: ItemIndex) -> ModelRows:
    """Map a model version's item list to `items`' rows (unknown items -1).

    In chunks: each `rows` call holds the GIL throughout, and this runs in a thread beside
    the event loop. Mapping 100,000 ids in one call kept the loop waiting 68-83 ms; in chunks
    of 1,000 its longest wait was 6-8 ms (the interpreter's 5 ms switch interval)."""
    rows = np.concatenate([items.rows(ids[lo:lo + CHUNK]) for lo in range(0, len(ids), CHUNK)]
                          or [np.zeros(0, dtype=np.int64)])
    rows[rows == items.unknown_row] = -1
    return ModelRows(version, items.space, items.unknown_row, rows)


def stale_models(flat_versions: list[str], mapped: dict[str, ModelRows], catalog: ItemIndex
                 ) -> list[tuple[str, str]]:
    """(model, active version) of the user-list models whose item rows in `mapped` are missing
    or were mapped for another version or catalogue; models no longer published are dropped
    from `mapped`. `flat_versions`: `keys.MODEL_VERSIONS` as HGETALL gives it."""
    versions = dict(zip(flat_versions[0::2], flat_versions[1::2], strict=True))
    stale = []
    for model in MODEL_OF_KIND.values():
        version, current = versions.get(model), mapped.get(model)
        if version is None:
            mapped.pop(model, None)
        elif current is None or not current.holds_for(version, catalog):
            stale.append((model, version))
    return stale


def set_model_rows(mapped: dict[str, ModelRows], model: str, version: str,
                   raw: bytes | str | None, catalog: ItemIndex) -> None:
    """Map a model version's item list (`raw`: its JSON) to `catalog`'s rows in `mapped`; a
    version published without one (before item lists existed) keeps its users' lists mapped
    by id."""
    if not raw:
        mapped.pop(model, None)
        return
    mapped[model] = map_model_items(version, orjson.loads(raw), catalog)
