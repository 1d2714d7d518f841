"""The in-process item catalogue kept in step with Redis's item metadata (`item:meta:*`).

The catalogue is reloaded in full at least every `catalog_reload_s`. Between full reloads, a
moved `keys.ITEM_META_VERSION` makes the refresh re-read only the items catalogue upserts
stamped in `keys.ITEM_META_CHANGES` since the newest change it applied (less
`CHANGE_MARGIN_MS`), and update them in the same row space (`ItemIndex.with_metadata`): parsed
lists (serving/reco_lists.py) and model item rows stay valid, and a stock change reaches
recommendations within one refresh, `popular_snapshot_refresh_s` (responses cached before are
re-checked against the new catalogue when hit: serving/reco_service.py). It reloads
everything when more than `catalog_update_max_share` of the catalogue changed since the last
refresh, or when the version moved and the window holds no change entry at all (another
writer, e.g. benchmarks/reco_bench_data.py; a bump by another writer within a minute of an
upsert waits for the periodic full reload). On 100,000 items, updating 100 changed ones took
~5 ms here (Redis reads included), a full reload ~1.6-2 s. A deleted item's tombstone
(serving/catalogue.py) holds none of `META_FIELDS`: read as no hash, it leaves the catalogue.

Everything here blocks (a Python loop over every item on a full reload): the refresh on the
event loop runs it in a thread (serving/reco_snapshots.py).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Iterator, Sequence

import redis

from reco import keys
from reco.catalog import ItemIndex
from reco.settings import Settings

log = logging.getLogger(__name__)
META_FIELDS = ("category", "price", "in_stock", "created_at")
SCAN_COUNT = 2000
# Changes are re-read from this long before the newest applied: entries are stamped by Redis's
# clock (serving/catalogue.py), which NTP may step back a little. Entries re-read with the
# score already applied are skipped (a new upsert of the item re-scores it).
CHANGE_MARGIN_MS = 60_000.0


class CatalogueSync:
    """Which catalogue version the process holds, and how to bring it to Redis's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis.Redis.from_url(settings.redis_url, protocol=3, socket_timeout=5.0,
                                           socket_connect_timeout=1.0)
        self.version: str | None = None  # the ITEM_META_VERSION the catalogue reflects
        self._loaded_at = 0.0  # monotonic time of the last full reload
        self._changes_ms = 0.0  # newest ITEM_META_CHANGES score the catalogue reflects
        self._applied: dict[str, float] = {}  # the changes in the last window read: item -> ms

    def due(self, meta_version: str | None, loaded: bool) -> bool:
        """Whether `update` has work: the version moved, or a full reload is due (`loaded`:
        the snapshot was refreshed once)."""
        return meta_version != self.version or self._full_reload_due(loaded)

    def _full_reload_due(self, loaded: bool) -> bool:
        stale = time.monotonic() - self._loaded_at >= self.settings.catalog_reload_s
        return stale or not loaded

    def update(self, current: ItemIndex, meta_version: str | None, popular: Sequence[str],
               loaded: bool) -> ItemIndex:
        """`current` brought to `meta_version`: the changed items alone when few changed,
        else a full reload (see the module docstring), its id -> row map `popular` ids first.
        Blocking: the refresh on the loop calls it in a thread."""
        if not self._full_reload_due(loaded):
            bound = self._change_bound(current)
            changes = self._recent_changes(bound)
            # Entries applied at an earlier refresh are re-read in the window: not counted.
            new = [item for item, at in changes if self._applied.get(item) != at]
            if changes and len(new) <= bound:
                return self._apply_changes(current, changes, new, meta_version)
            log.info("catalogue version %r: %s, reloading all", meta_version,
                     f"over {bound} changed items" if changes else "no change entries")
        # Read before the reload: changes stamped after it are re-read at the next version move.
        newest = self.client.zrange(keys.ITEM_META_CHANGES, -1, -1, withscores=True)
        catalog = self._loaded(self.load_catalog(meta_version or "", popular), meta_version)
        self._changes_ms = newest[0][1] if newest else 0.0
        self._applied = {}
        return catalog

    def _apply_changes(self, current: ItemIndex, changes: list[tuple[str, float]],
                       new: list[str], meta_version: str | None) -> ItemIndex:
        """`current` with the `new` items (of the window's `changes`, those not applied yet)
        re-read and updated in place."""
        if new:
            records = self.read_meta(new)
            # No catalogue field: the item was deleted (a tombstone, or its hash expired).
            gone = [item for item, meta in records.items() if not meta]
            catalog = current.with_metadata({k: v for k, v in records.items() if v},
                                            meta_version or "", removed=gone)
            catalog.newest_rows()  # here in the thread, not on the first request
        else:
            # All applied already (an upsert landed between the version read and the change
            # read of the last refresh): the content is this version's, and cache stamps
            # compare against the label (serving/reco_service.py).
            catalog = dataclasses.replace(current, version=meta_version or "")
        self.version = meta_version
        self._changes_ms = max(self._changes_ms, changes[-1][1])  # oldest first
        self._applied = dict(changes)
        return catalog

    def _recent_changes(self, bound: int) -> list[tuple[str, float]]:
        """(item, epoch ms) of the changes from `CHANGE_MARGIN_MS` before the newest applied,
        oldest first: those applied already plus at most one more than the in-place `bound`."""
        limit = len(self._applied) + bound + 1
        found = self.client.zrange(keys.ITEM_META_CHANGES, self._changes_ms - CHANGE_MARGIN_MS,
                                   "+inf", byscore=True, offset=0, num=limit, withscores=True)
        return [(item.decode(), at) for item, at in found]

    def _change_bound(self, current: ItemIndex) -> int:
        """Most changed items applied in place. Beyond it a full reload costs little more, and
        a change set trimmed by count (`keys.ITEM_META_CHANGES_MAX`) is complete only below."""
        share = int(len(current.ids) * self.settings.catalog_update_max_share)
        return min(share, keys.ITEM_META_CHANGES_MAX - 1)

    def _loaded(self, catalog: ItemIndex, meta_version: str | None) -> ItemIndex:
        """Bookkeeping of a full reload; returns `catalog`."""
        self.version = meta_version
        self._loaded_at = time.monotonic()
        # The catalogue is long-lived: keep the cyclic GC from rescanning it. No gc.collect()
        # first: a full collection here paused the whole process for 60-130 ms (measured).
        gc.freeze()
        return catalog

    def load_catalog(self, version: str, popular: Sequence[str] = ()) -> ItemIndex:
        """The metadata hash of every item; the id -> row map is laid out `popular` ids first
        (`ItemIndex.with_lookup_order`)."""
        records: dict[str, dict] = {}
        for item_ids in self._item_ids():
            records.update(self.read_meta(item_ids))
            time.sleep(0)  # let request handling have the GIL between chunks
        records = {item: meta for item, meta in records.items() if meta}  # no hash: no item
        log.info("loaded %d items of catalogue version %r", len(records), version)
        catalog = ItemIndex.build(records, version=version,
                                  catalogue_only=self.settings.catalogue_only)
        catalog.newest_rows()  # the new-arrivals filler's order, computed in this thread
        return catalog.with_lookup_order(popular)

    def _item_ids(self) -> Iterator[list[str]]:
        """The catalogue's item ids in chunks (read-only, repeats allowed): `keys.ITEM_IDS` once
        it is known complete, with the items changed within the day (an earlier release's
        ingest replica announces its upserts without listing them); else the metadata hashes a
        SCAN of the keyspace finds."""
        if self.client.sismember(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE):
            yield from self._listed_ids()
            # Still marked: the set read was the complete one, not a new one started after it
            # was lost (evicted, deleted) while this reload read it.
            if self.client.sismember(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE):
                return
        log.info("%s not known complete (no full mirror since it was lost or created): "
                 "scanning the keyspace", keys.ITEM_IDS)
        prefix = len(keys.item_meta(""))
        cursor = 0
        while True:
            # Hashes only: a previous release's version counter may still be a string here.
            cursor, found = self.client.scan(cursor, match=keys.ITEM_META_PATTERN,
                                             count=SCAN_COUNT, _type="hash")
            yield [key[prefix:].decode() for key in found]
            if cursor == 0:
                return

    def _listed_ids(self) -> Iterator[list[str]]:
        cursor = 0
        while True:
            cursor, found = self.client.sscan(keys.ITEM_IDS, cursor, count=SCAN_COUNT)
            # Neither the marker nor a mirror's token (no item id is empty or holds a space).
            yield [item.decode() for item in found if item and b" " not in item]
            if cursor == 0:
                break
        for lo in range(0, keys.ITEM_META_CHANGES_MAX, SCAN_COUNT):
            changed = self.client.zrange(keys.ITEM_META_CHANGES, lo, lo + SCAN_COUNT - 1)
            yield [item.decode() for item in changed]
            if len(changed) < SCAN_COUNT:
                return

    def read_meta(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """The `META_FIELDS` of each item (empty without a hash), in pipelined chunks of HMGET
        (one item per command)."""
        records: dict[str, dict] = {}
        for lo in range(0, len(item_ids), SCAN_COUNT):
            part = item_ids[lo:lo + SCAN_COUNT]
            pipe = self.client.pipeline(transaction=False)
            for item in part:
                pipe.hmget(keys.item_meta(item), META_FIELDS)
            for item, values in zip(part, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(values, redis.ResponseError):
                    # Another type at the item's key: a previous release's version counter at
                    # `item:meta:version` (keys.ITEM_META_VERSION_LEGACY). Not an item.
                    log.warning("item %r: %s is no metadata hash (%s)", item,
                                keys.item_meta(item), values)
                    values = [None] * len(META_FIELDS)
                records[item] = {f: v.decode() for f, v in zip(META_FIELDS, values, strict=True)
                                 if v is not None}
            if lo:
                time.sleep(0)  # let request handling have the GIL between chunks
        return records

    def close(self) -> None:
        self.client.close()
