"""In-process copies of slowly changing global signals, refreshed in the background.

Popularity (top `popular_snapshot_size` items) is re-read every `popular_snapshot_refresh_s`;
the item catalogue is reloaded in full at least every `catalog_reload_s`. Requests then look
these up in memory instead of asking Redis for hundreds of members, and the popularity
snapshot is what the API serves when Redis is down.

Between full reloads, a moved `keys.ITEM_META_VERSION` makes the refresh re-read only the
items catalogue upserts stamped in `keys.ITEM_META_CHANGES` since the newest change it applied
(less `CHANGE_MARGIN_MS`), and update them in the same row space (`ItemIndex.with_metadata`):
parsed lists (serving/reco_lists.py) and model item rows stay valid, and a stock change reaches
recommendations within one refresh, `popular_snapshot_refresh_s` (responses cached before are
re-checked against the new catalogue when hit: serving/reco_service.py). It reloads
everything when more than `catalog_update_max_share` of the catalogue changed since the last
refresh, or when the version moved and the window holds no change entry at all (another writer, e.g.
benchmarks/reco_bench_data.py; a bump by another writer within a minute of an upsert waits for
the periodic full reload). On 100,000 items, updating 100 changed ones took ~5 ms here (Redis
reads included), a full reload ~1.6 s.

The popularity refresh runs on the event loop in slices of `CHUNK` members (one read, parse
and id -> row mapping each: ~2 ms here with 500 members, so now 250), so requests wait at
most one slice. It used to run in a thread in one piece: reading, parsing and mapping 20,000
members held the GIL for 40-100 ms every 5 s (hiredis and numpy do not release it), which
stalled every request arriving meanwhile and made the p99 of cache hits at 200 req/s ~20 ms.
The rare catalogue reload (a Python loop over every item) still runs in a thread: slicing it
would block the loop longer. The in-place update shares its path, so runs there too.

The refresh also maps each active ALS and SASRec version's item list to catalogue rows
(serving/model_items.py), in a thread too, when the version or the catalogue changes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import logging
import time
from collections.abc import Sequence

import numpy as np
import orjson
import redis

from reco import keys
from reco.catalog import ItemIndex, first_sightings
from reco.settings import Settings
from serving import reco_metrics as metrics
from serving import snapshot_file
from serving.model_items import MODEL_OF_KIND, ModelRows, map_model_items
from serving.reco_aio import AsyncPipelineClient
from serving.reco_redis import PipelineClient, RedisDown
from serving.reco_store import zset_pairs

log = logging.getLogger(__name__)
META_FIELDS = ("category", "price", "in_stock", "created_at")
SCAN_COUNT = 2000
CHUNK = 250  # popularity members per slice of the on-loop refresh (~1 ms each, measured)
# Changes are re-read from this long before the newest applied: entries from ingest hosts with
# clocks behind, or landing after a later one was read, still get applied. Entries re-read
# with the score already applied are skipped (a new upsert of the item re-scores it).
CHANGE_MARGIN_MS = 60_000.0


class GlobalSignals:
    """Holder of the current popularity snapshot and catalogue; swapped whole, never mutated."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis.Redis.from_url(settings.redis_url, protocol=3, socket_timeout=5.0,
                                           socket_connect_timeout=1.0)
        # Catalogue + popularity, what requests rank with; the catalogue alone, reloaded rarely.
        self.items = self._catalog = ItemIndex.empty(settings.catalogue_only)
        self.loaded = False  # at least one successful refresh
        self.from_disk = False  # `items` is the saved snapshot: Redis has not answered yet
        self._saved_at = 0.0  # monotonic time of the last save to disk
        self._catalog_version: str | None = None
        # Popularity is read with the hiredis pipeline client: 20,000 members parse in C.
        self.fast = PipelineClient(settings.redis_url, timeout_s=5.0)
        self.aio = AsyncPipelineClient(settings.redis_url, timeout_s=5.0)
        self._catalog_loaded_at = 0.0
        self._changes_ms = 0.0  # newest ITEM_META_CHANGES score the catalogue reflects
        self._applied: dict[str, float] = {}  # the changes in the last window read: item -> ms
        # Model name -> its active version's items as rows of the current catalogue.
        self.model_rows: dict[str, ModelRows] = {}
        self._task: asyncio.Task | None = None
        # Categories requests filtered by, least recently asked first (`ask_category`), and
        # those whose own top items `items` holds.
        self._asked: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.categories: frozenset[str] = frozenset()

    def ask_category(self, category: str) -> None:
        """A request filtered by `category`: the next refreshes also read its top items.
        Only categories of the catalogue count: made-up ones would push real ones out."""
        if category not in self.items.category_code:
            return
        asked = self._asked
        if category in asked:
            asked.move_to_end(category)
            return
        asked[category] = None
        while len(asked) > self.settings.popular_category_snapshot_max:
            asked.popitem(last=False)

    def _category_reads(self) -> tuple[frozenset[str], list[tuple]]:
        """The asked categories, and the reads of their top items by the same decayed
        popularity as the global set: merged into the snapshot after it (a member of both keeps
        its global score)."""
        n = self.settings.popular_category_snapshot_n
        categories = list(self._asked)
        return frozenset(categories), [
            ("ZRANGE", keys.category_popularity(category), 0, n - 1, "REV", "WITHSCORES")
            for category in categories]

    def refresh(self) -> None:
        """One refresh pass; raises redis errors (the loop logs them and keeps the old copy)."""
        size = self.settings.popular_snapshot_size
        categories, category_reads = self._category_reads()
        try:
            flat, meta_version, published, versions, *by_category = self.fast.execute([
                ("ZRANGE", keys.ITEM_POPULARITY, 0, size - 1, "REV", "WITHSCORES"),
                ("GET", keys.ITEM_META_VERSION), ("HGETALL", keys.MODEL_PUBLISHED_AT),
                ("HGETALL", keys.MODEL_VERSIONS), *category_reads])
        except RedisDown as exc:
            raise redis.ConnectionError(str(exc)) from exc
        parts = [zset_pairs(part) for part in (flat, *by_category)]
        pop_ids = [item for part_ids, _ in parts for item in part_ids]
        pop_scores = np.concatenate([part_scores for _, part_scores in parts])
        self._model_ages(published)
        if self._catalog_due(meta_version):
            self._update_catalog(meta_version, pop_ids)
        # The base keeps the rows appended for popular items the catalogue lacks, so rows never
        # move until the next catalogue load (parsed lists cached by row stay valid).
        self._catalog = self._catalog.with_popularity(pop_ids, pop_scores)
        # One attribute swap: a request sees either the old or the new snapshot, never a mix.
        self.categories = categories
        self.items = self._catalog
        self.loaded = True
        if self._refreshed():
            self._save(self.items)
        stale = self._stale_models(versions)
        if stale:
            try:
                raws = self.fast.execute([("GET", keys.model_items(m, v)) for m, v in stale])
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            for (model, version), raw in zip(stale, raws, strict=True):
                self._set_model_rows(model, version, raw, self._catalog)

    async def refresh_async(self) -> None:
        """One refresh pass on the event loop, in slices (see the module docstring)."""
        try:
            meta_version, published, versions = await self.aio.execute([
                ("GET", keys.ITEM_META_VERSION), ("HGETALL", keys.MODEL_PUBLISHED_AT),
                ("HGETALL", keys.MODEL_VERSIONS)])
        except RedisDown as exc:
            raise redis.ConnectionError(str(exc)) from exc
        self._model_ages(published)
        if self._catalog_due(meta_version):
            # Loading allocates ~100,000 short-lived containers: automatic collections over
            # them paused every thread for 60-130 ms each (measured at startup). Requests make
            # next to no cyclic garbage, so the GC can wait the few seconds this takes.
            gc.disable()
            try:
                previous = self.items  # its popular ids order the new id -> row map
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self._update_catalog(meta_version, popular_ids(previous)))
            finally:
                gc.enable()
        base = self._catalog
        ids: list[str] = []
        rows: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        size = self.settings.popular_snapshot_size
        for lo in range(0, size, CHUNK):
            try:
                flat = (await self.aio.execute([("ZRANGE", keys.ITEM_POPULARITY, lo,
                                                 min(size, lo + CHUNK) - 1, "REV",
                                                 "WITHSCORES")]))[0]
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            part_ids, part_scores = zset_pairs(flat)
            ids += part_ids
            rows.append(base.rows(part_ids))
            scores.append(part_scores)
            if len(part_ids) < CHUNK:
                break
        categories, category_reads = self._category_reads()
        if category_reads:
            try:
                by_category = await self.aio.execute(category_reads)
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            for flat in by_category:
                part_ids, part_scores = zset_pairs(flat)
                ids += part_ids
                rows.append(base.rows(part_ids))
                scores.append(part_scores)
        all_rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        if self._catalog is not base:  # reloaded meanwhile (a test's blocking refresh): retry later
            return
        if (all_rows == base.unknown_row).any():
            # Popular items the catalogue lacks get rows appended (rare after the first time).
            self._catalog = base.with_popularity(ids, all_scores)
        else:
            self._catalog = _with_popular_rows(base, all_rows, all_scores)
        self.categories = categories  # set with `items`, no await between: read as a pair
        self.items = self._catalog
        self.loaded = True
        if self._refreshed():
            await asyncio.get_running_loop().run_in_executor(None, self._save, self.items)
        stale = self._stale_models(versions)
        if stale:
            try:
                raws = await self.aio.execute([("GET", keys.model_items(m, v)) for m, v in stale])
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            for (model, version), raw in zip(stale, raws, strict=True):
                # ~100,000 id lookups per model: in a thread like the catalogue load, not in
                # one piece on the loop.
                await asyncio.get_running_loop().run_in_executor(
                    None, self._set_model_rows, model, version, raw, self._catalog)

    @property
    def can_serve(self) -> bool:
        """Whether requests get items: refreshed from Redis once, or the saved snapshot."""
        return self.loaded or self.from_disk

    def _refreshed(self) -> bool:
        """Bookkeeping after a successful refresh; True when the snapshot is due on disk."""
        self.from_disk = False
        due = time.monotonic() - self._saved_at >= snapshot_file.SAVE_EVERY_S
        if due:
            self._saved_at = time.monotonic()
        return due

    def _save(self, items: ItemIndex) -> None:
        try:
            snapshot_file.save(snapshot_file.path_of(self.settings), items)
        except OSError as exc:  # a read-only state folder: serving goes on without the file
            log.warning("popular snapshot not saved: %r", exc)

    def _load_saved(self) -> None:
        """At a start without Redis: rank from the snapshot an earlier process saved."""
        saved = snapshot_file.load(snapshot_file.path_of(self.settings))
        if saved is not None:
            self.items, saved_at = saved
            self.from_disk = True
            log.warning("first refresh failed: serving the popular snapshot saved %.0f s ago "
                        "until a refresh succeeds", time.time() - saved_at)

    def _stale_models(self, flat_versions: list[str]) -> list[tuple[str, str]]:
        """(model, active version) of the user-list models whose item rows are missing or were
        mapped for another version or catalogue; models no longer published are dropped."""
        versions = dict(zip(flat_versions[0::2], flat_versions[1::2], strict=True))
        stale = []
        for model in MODEL_OF_KIND.values():
            version, current = versions.get(model), self.model_rows.get(model)
            if version is None:
                self.model_rows.pop(model, None)
            elif current is None or not current.holds_for(version, self._catalog):
                stale.append((model, version))
        return stale

    def _set_model_rows(self, model: str, version: str, raw: bytes | str | None,
                        catalog: ItemIndex) -> None:
        """Map a model version's item list to `catalog`'s rows; a version published without
        one (before item lists existed) keeps its users' lists mapped by id."""
        if not raw:
            self.model_rows.pop(model, None)
            return
        self.model_rows[model] = map_model_items(version, orjson.loads(raw), catalog)

    def _model_ages(self, published: list[str]) -> None:
        now = time.time()
        for model, at in zip(published[0::2], published[1::2], strict=True):
            metrics.MODEL_AGE.labels(model=model).set(max(0.0, now - float(at)))

    def _catalog_due(self, meta_version: str | None) -> bool:
        return meta_version != self._catalog_version or self._full_reload_due()

    def _full_reload_due(self) -> bool:
        stale = time.monotonic() - self._catalog_loaded_at >= self.settings.catalog_reload_s
        return stale or not self.loaded

    def _update_catalog(self, meta_version: str | None, popular: Sequence[str]) -> None:
        """Bring the catalogue to `meta_version`: the changed items alone when few changed,
        else a full reload (see the module docstring). Blocking: refresh_async calls it in a
        thread."""
        if not self._full_reload_due():
            bound = self._change_bound()
            changes = self._recent_changes(bound)
            # Entries applied at an earlier refresh are re-read in the window: not counted.
            new = [item for item, at in changes if self._applied.get(item) != at]
            if changes and len(new) <= bound:
                self._apply_changes(changes, new, meta_version)
                return
            log.info("catalogue version %r: %s, reloading all", meta_version,
                     f"over {bound} changed items" if changes else "no change entries")
        # Read before the scan: changes stamped after it are re-read at the next version move.
        newest = self.client.zrange(keys.ITEM_META_CHANGES, -1, -1, withscores=True)
        self._set_catalog(self.load_catalog(meta_version or "", popular), meta_version)
        self._changes_ms = newest[0][1] if newest else 0.0
        self._applied = {}

    def _apply_changes(self, changes: list[tuple[str, float]], new: list[str],
                       meta_version: str | None) -> None:
        """Re-read the `new` items (of the window's `changes`, those not applied yet), update
        them in place."""
        if new:
            records = self.read_meta(new)
            self._catalog = self._catalog.with_metadata(records, meta_version or "")
            self._catalog.newest_rows()  # here in the thread, not on the first request
        else:
            # All applied already (an upsert landed between the version read and the change
            # read of the last refresh): the content is this version's, and cache stamps
            # compare against the label (serving/reco_service.py).
            self._catalog = dataclasses.replace(self._catalog, version=meta_version or "")
        self._catalog_version = meta_version
        self._changes_ms = max(self._changes_ms, changes[-1][1])  # oldest first
        self._applied = dict(changes)

    def _recent_changes(self, bound: int) -> list[tuple[str, float]]:
        """(item, epoch ms) of the changes from `CHANGE_MARGIN_MS` before the newest applied,
        oldest first: those applied already plus at most one more than the in-place `bound`."""
        limit = len(self._applied) + bound + 1
        found = self.client.zrange(keys.ITEM_META_CHANGES, self._changes_ms - CHANGE_MARGIN_MS,
                                   "+inf", byscore=True, offset=0, num=limit, withscores=True)
        return [(item.decode(), at) for item, at in found]

    def _change_bound(self) -> int:
        """Most changed items applied in place. Beyond it a full reload costs little more, and
        a change set trimmed by count (`keys.ITEM_META_CHANGES_MAX`) is complete only below."""
        share = int(len(self._catalog.ids) * self.settings.catalog_update_max_share)
        return min(share, keys.ITEM_META_CHANGES_MAX - 1)

    def _set_catalog(self, catalog: ItemIndex, meta_version: str | None) -> None:
        self._catalog = catalog
        self._catalog_version = meta_version
        self._catalog_loaded_at = time.monotonic()
        # The catalogue is long-lived: keep the cyclic GC from rescanning it. No gc.collect()
        # first: a full collection here paused the whole process for 60-130 ms (measured).
        gc.freeze()

    def load_catalog(self, version: str, popular: Sequence[str] = ()) -> ItemIndex:
        """Every `item:meta:*` hash; the id -> row map is laid out `popular` ids first
        (`ItemIndex.with_lookup_order`)."""
        prefix = len(keys.item_meta(""))
        records: dict[str, dict] = {}
        cursor = 0
        while True:
            # Hashes only: a previous release's version counter may still be a string here.
            cursor, found = self.client.scan(cursor, match=keys.ITEM_META_PATTERN,
                                             count=SCAN_COUNT, _type="hash")
            records.update(self.read_meta([k[prefix:].decode() for k in found]))
            if cursor == 0:
                break
            time.sleep(0)  # let request handling have the GIL between chunks
        log.info("loaded %d items of catalogue version %r", len(records), version)
        catalog = ItemIndex.build(records, version=version,
                                  catalogue_only=self.settings.catalogue_only)
        catalog.newest_rows()  # the new-arrivals filler's order, computed in this thread
        return catalog.with_lookup_order(popular)

    def read_meta(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """The `META_FIELDS` of each item (empty without a hash), in pipelined chunks of HMGET
        (one item per command)."""
        records: dict[str, dict] = {}
        for lo in range(0, len(item_ids), SCAN_COUNT):
            part = item_ids[lo:lo + SCAN_COUNT]
            pipe = self.client.pipeline(transaction=False)
            for item in part:
                pipe.hmget(keys.item_meta(item), META_FIELDS)
            for item, values in zip(part, pipe.execute(), strict=True):
                records[item] = {f: v.decode() for f, v in zip(META_FIELDS, values, strict=True)
                                 if v is not None}
            if lo:
                time.sleep(0)  # let request handling have the GIL between chunks
        return records

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.popular_snapshot_refresh_s)
            try:
                await self.refresh_async()
            except (redis.RedisError, ValueError) as exc:
                self._refresh_failed(exc)

    def _refresh_failed(self, exc: Exception) -> None:
        metrics.SNAPSHOT_ERRORS.inc()
        log.warning("snapshot refresh failed, keeping the previous one: %s", exc)

    def start(self) -> None:
        """First load (blocking: the API is not serving yet), then refreshes on the loop."""
        gc.disable()  # as in refresh_async: no collections over the catalogue load's garbage
        try:
            self.refresh()
        except (redis.RedisError, ValueError) as exc:
            self._refresh_failed(exc)
            self._load_saved()
        finally:
            gc.enable()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.client.close()
        self.fast.close()
        self.aio.close()


def popular_ids(items: ItemIndex) -> list[str]:
    """Ids of a snapshot's popular items, most popular first."""
    ids = items.ids
    return [ids[r] for r in items.popular_rows.tolist()]


def _with_popular_rows(base: ItemIndex, rows: np.ndarray, scores: np.ndarray) -> ItemIndex:
    """`base.with_popularity` for members already mapped to known rows (chunked reads can see
    a member twice when it moved between chunks: its first sighting counts)."""
    rows, scores = first_sightings(rows, scores, base.unknown_row + 1)
    pop = np.zeros(len(base.ids) + 1)
    pop[rows] = scores
    popular = rows[np.argsort(-scores, kind="stable")]
    # _filler is the popular-filler cache of one popularity snapshot: never share it.
    return dataclasses.replace(base, popularity=pop, popular_rows=popular[pop[popular] > 0],
                               _filler={})
