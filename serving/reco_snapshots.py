"""In-process copies of slowly changing global signals, refreshed by a background thread.

Popularity (top `popular_snapshot_size` items) is re-read every `popular_snapshot_refresh_s`;
the item catalogue is reloaded when `keys.ITEM_META_VERSION` changes and at least every
`catalog_reload_s`. Requests then look these up in memory instead of asking Redis for hundreds
of members, and the popularity snapshot is what the API serves when Redis is down.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

import redis

from reco import keys
from reco.catalog import ItemIndex
from reco.settings import Settings
from serving import reco_metrics as metrics
from serving.reco_redis import PipelineClient, RedisDown
from serving.reco_store import zset_pairs

log = logging.getLogger(__name__)
META_FIELDS = ("category", "price", "in_stock", "created_at")
SCAN_COUNT = 2000


class GlobalSignals:
    """Holder of the current popularity snapshot and catalogue; swapped whole, never mutated."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis.Redis.from_url(settings.redis_url, protocol=3, socket_timeout=5.0,
                                           socket_connect_timeout=1.0)
        self.items = ItemIndex.empty()  # catalogue + popularity, what requests rank with
        self._catalog = ItemIndex.empty()  # catalogue alone, reloaded rarely
        self.loaded = False  # at least one successful refresh
        self._catalog_version: str | None = None
        # Popularity is read with the hiredis pipeline client: 20,000 members parse in C.
        self.fast = PipelineClient(settings.redis_url, timeout_s=5.0)
        self._catalog_loaded_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """One refresh pass; raises redis errors (the loop logs them and keeps the old copy)."""
        size = self.settings.popular_snapshot_size
        try:
            flat, meta_version, published = self.fast.execute([
                ("ZRANGE", keys.ITEM_POPULARITY, 0, size - 1, "REV", "WITHSCORES"),
                ("GET", keys.ITEM_META_VERSION), ("HGETALL", keys.MODEL_PUBLISHED_AT)])
        except RedisDown as exc:
            raise redis.ConnectionError(str(exc)) from exc
        pop_ids, pop_scores = zset_pairs(flat)
        now = time.time()
        for model, at in zip(published[0::2], published[1::2], strict=True):
            metrics.MODEL_AGE.labels(model=model).set(max(0.0, now - float(at)))
        stale = time.monotonic() - self._catalog_loaded_at >= self.settings.catalog_reload_s
        if meta_version != self._catalog_version or stale or not self.loaded:
            self._catalog = self.load_catalog(meta_version or "")
            self._catalog_version = meta_version
            self._catalog_loaded_at = time.monotonic()
            # The catalogue is long-lived: keep the cyclic GC from rescanning it (fewer pauses).
            gc.collect()
            gc.freeze()
        # The base keeps the rows appended for popular items the catalogue lacks, so rows never
        # move until the next catalogue load (parsed lists cached by row stay valid).
        self._catalog = self._catalog.with_popularity(pop_ids, pop_scores)
        # One attribute swap: a request sees either the old or the new snapshot, never a mix.
        self.items = self._catalog
        self.loaded = True

    def load_catalog(self, version: str) -> ItemIndex:
        """Every `item:meta:*` hash, read in pipelined chunks of HMGET (one item per command)."""
        prefix = len(keys.item_meta(""))
        records: dict[str, dict] = {}
        cursor = 0
        while True:
            cursor, found = self.client.scan(cursor, match=keys.ITEM_META_PATTERN,
                                             count=SCAN_COUNT)
            found = [k for k in found if k != keys.ITEM_META_VERSION.encode()]
            if found:
                pipe = self.client.pipeline(transaction=False)
                for key in found:
                    pipe.hmget(key, META_FIELDS)
                for key, values in zip(found, pipe.execute(), strict=True):
                    records[key[prefix:].decode()] = {
                        f: v.decode() for f, v in zip(META_FIELDS, values, strict=True)
                        if v is not None}
            if cursor == 0:
                break
            time.sleep(0)  # let request handling have the GIL between chunks
        log.info("loaded %d items of catalogue version %r", len(records), version)
        return ItemIndex.build(records, version=version)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.popular_snapshot_refresh_s):
            self._refresh_logged()

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except (redis.RedisError, ValueError) as exc:
            metrics.SNAPSHOT_ERRORS.inc()
            log.warning("snapshot refresh failed, keeping the previous one: %s", exc)

    def start(self) -> None:
        self._refresh_logged()
        self._thread = threading.Thread(target=self._loop, name="reco-snapshots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.client.close()
        self.fast.close()
