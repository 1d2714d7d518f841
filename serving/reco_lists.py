"""In-process cache of parsed item neighbour lists, shared by every user's requests.

(A second instance keeps users' ALS and SASRec candidate lists: versioned and immutable like
KNN lists, and a user's repeated cache misses, after each of their events, need the same list
again.)

Co-view sets, KNN and ALS item lists belong to items, not users, and popular items appear in
many users' recent lists: caching them parsed and mapped to ItemIndex rows saves most of a
cache miss's Redis reads and id lookups. KNN/ALS lists live under versioned (immutable) keys;
co-view sets change with events, so they are kept only `coview_ttl_s` (a few seconds of
staleness in an item's neighbours; the user's own recent items are always read fresh).

Entries are plain tuples of floats, ints and numpy arrays, which the cyclic GC stops tracking:
50,000 tracked RowList / ListKey objects made full collections take 13-20 ms (measured while
the cache filled), and a full collection stops the event loop.
"""

from __future__ import annotations

import threading

import numpy as np

from reco.catalog import ItemIndex
from reco.ranking import Lists, Neighbours, RowList
from serving.reco_store import ListKey


class ItemListCache:
    """FIFO-bounded map ListKey -> RowList, valid for one ItemIndex row space."""

    def __init__(self, max_entries: int, coview_ttl_s: float, offline_ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl = {"coview": coview_ttl_s, "knn": offline_ttl_s, "item_cf": offline_ttl_s,
                    "user_cf": offline_ttl_s, "user_seq": offline_ttl_s}
        # (kind, item, version) -> (expires, row space, rows or None, scores, ids or None,
        #                           hash of the ids in order, rows of the index they came from)
        self._data: dict[tuple, tuple] = {}
        self._lock = threading.Lock()  # threadpool mode: evictions must not race
        # Lookups per kind, [hits, misses] (plain ints: a Prometheus child per get costs more
        # than the get); the benchmark reports them.
        self.lookups: dict[str, list[int]] = {kind: [0, 0] for kind in self.ttl}

    def get(self, key: ListKey, items: ItemIndex, now: float) -> Neighbours | None:
        entry = self._data.get(key)  # a ListKey equals and hashes like the plain tuple
        if entry is None or entry[0] < now or not _valid_for(entry, items):
            self.lookups[key[0]][1] += 1
            return None
        self.lookups[key[0]][0] += 1
        return RowList(entry[2], entry[3]) if entry[4] is None else (entry[4], entry[3])

    def put(self, key: ListKey, lists: Lists, items: ItemIndex, now: float,
            rows: np.ndarray | None = None) -> Neighbours:
        """Map `lists` to rows and keep them; lists naming unknown items stay as ids. `rows`,
        when given, are the ids' rows already (a user's list mapped through its model's item
        numbers, serving.model_items)."""
        ids, scores = lists
        ids_hash = 0  # compared only for lists mapped here (co-view re-reads)
        if rows is None:
            ids_hash = hash(tuple(ids))
            old = self._data.get(key)
            if (old is not None and old[2] is not None and _valid_for(old, items)
                    and old[5] == ids_hash and len(old[2]) == len(ids)):
                # An expired co-view set re-read with the same members in the same order (most
                # are: only their scores moved): its rows are unchanged, skip the ~1 us per id
                # dict lookups. A 64-bit hash of the ids is compared, not the ids, so that
                # entries stay free of GC-tracked lists.
                rows = old[2]
            else:
                rows = items.rows(ids)
        known = not (rows == items.unknown_row).any()
        value: Neighbours = RowList(rows, scores) if known else lists
        if self.max_entries <= 0:
            return value
        expires = now + self.ttl[key.kind]
        entry = ((expires, items.space, rows, scores, None, ids_hash, items.unknown_row) if known
                 else (expires, items.space, None, scores, ids, ids_hash, items.unknown_row))
        with self._lock:
            self._data.pop(key, None)
            self._data[tuple(key)] = entry
            if len(self._data) > self.max_entries:
                del self._data[next(iter(self._data))]  # oldest insertion first
        return value

    def __len__(self) -> int:
        return len(self._data)


def _valid_for(entry: tuple, items: ItemIndex) -> bool:
    """Rows mapped in `items`' row space by an index no longer than `items`: a popularity
    refresh appends rows in the same space, and a request still ranking with the index from
    before it must not get rows its index does not have."""
    return entry[1] == items.space and entry[6] <= items.unknown_row
