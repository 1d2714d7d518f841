"""In-process copies of slowly changing global signals, refreshed in the background.

Popularity (top `popular_snapshot_size` items) is re-read every `popular_snapshot_refresh_s`;
the item catalogue is kept in step with Redis (serving/catalogue_sync.py). Requests then look
these up in memory instead of asking Redis for hundreds of members, and the popularity
snapshot is what the API serves when Redis is down.

The popularity refresh runs on the event loop in slices (serving/popularity_snapshot.py), so
requests wait at most one slice. The rare catalogue reload (a Python loop over every item)
still runs in a thread: slicing it would block the loop longer. The in-place update shares its
path, so runs there too.

The refresh also maps each active ALS and SASRec version's item list to catalogue rows
(serving/model_items.py), in a thread too, when the version or the catalogue changes.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections.abc import Sequence

import numpy as np
import redis

from reco import keys
from reco.catalog import ItemIndex
from reco.settings import Settings
from serving import reco_metrics as metrics
from serving import snapshot_file
from serving.catalogue_sync import CatalogueSync
from serving.model_items import ModelRows, set_model_rows, stale_models
from serving.popularity_snapshot import PopularReads, popular_ids
from serving.reco_aio import AsyncPipelineClient
from serving.reco_redis import PipelineClient, RedisDown
from serving.reco_store import zset_pairs

log = logging.getLogger(__name__)


class GlobalSignals:
    """Holder of the current popularity snapshot and catalogue; swapped whole, never mutated."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalogue = CatalogueSync(settings)
        # Catalogue + popularity, what requests rank with; the catalogue alone, reloaded rarely.
        self.items = self._catalog = ItemIndex.empty(settings.catalogue_only)
        self.loaded = False  # at least one successful refresh
        self.from_disk = False  # `items` is the saved snapshot: Redis has not answered yet
        self._saved_at = 0.0  # monotonic time of the last save to disk
        # Popularity is read with the hiredis pipeline client: 20,000 members parse in C.
        self.fast = PipelineClient(settings.redis_url, timeout_s=5.0)
        self.aio = AsyncPipelineClient(settings.redis_url, timeout_s=5.0)
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
        if self.catalogue.due(meta_version, self.loaded):
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
        stale = stale_models(versions, self.model_rows, self._catalog)
        if stale:
            try:
                raws = self.fast.execute([("GET", keys.model_items(m, v)) for m, v in stale])
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            for (model, version), raw in zip(stale, raws, strict=True):
                set_model_rows(self.model_rows, model, version, raw, self._catalog)

    async def refresh_async(self) -> None:
        """One refresh pass on the event loop, in slices (see the module docstring)."""
        try:
            meta_version, published, versions = await self.aio.execute([
                ("GET", keys.ITEM_META_VERSION), ("HGETALL", keys.MODEL_PUBLISHED_AT),
                ("HGETALL", keys.MODEL_VERSIONS)])
        except RedisDown as exc:
            raise redis.ConnectionError(str(exc)) from exc
        self._model_ages(published)
        if self.catalogue.due(meta_version, self.loaded):
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
        reads = PopularReads(base)
        await reads.read_top(self.aio, self.settings.popular_snapshot_size)
        categories, category_reads = self._category_reads()
        await reads.read_categories(self.aio, category_reads,
                                    self.settings.popular_category_snapshot_n)
        await asyncio.sleep(0)  # the last slice's mapping and the merge: two holds, not one
        if self._catalog is not base:  # reloaded meanwhile (a test's blocking refresh): retry later
            return
        self._catalog = reads.index()
        self.categories = categories  # set with `items`, no await between: read as a pair
        self.items = self._catalog
        self.loaded = True
        if self._refreshed():
            await asyncio.get_running_loop().run_in_executor(None, self._save, self.items)
        stale = stale_models(versions, self.model_rows, self._catalog)
        if stale:
            try:
                raws = await self.aio.execute([("GET", keys.model_items(m, v)) for m, v in stale])
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            for (model, version), raw in zip(stale, raws, strict=True):
                # ~100,000 id lookups per model: in a thread like the catalogue load, not in
                # one piece on the loop.
                await asyncio.get_running_loop().run_in_executor(
                    None, set_model_rows, self.model_rows, model, version, raw, self._catalog)

    @property
    def can_serve(self) -> bool:
        """Whether requests get items: refreshed from Redis once, or the saved snapshot."""
        return self.loaded or self.from_disk

    def _update_catalog(self, meta_version: str | None, popular: Sequence[str]) -> None:
        """Bring the catalogue to `meta_version` (blocking: refresh_async calls it in a
        thread)."""
        self._catalog = self.catalogue.update(self._catalog, meta_version, popular, self.loaded)

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

    def _model_ages(self, published: list[str]) -> None:
        now = time.time()
        for model, at in zip(published[0::2], published[1::2], strict=True):
            metrics.MODEL_AGE.labels(model=model).set(max(0.0, now - float(at)))

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
        self.catalogue.close()
        self.fast.close()
        self.aio.close()

