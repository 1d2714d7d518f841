"""Garbage-collector settings for the long-running services, applied once start-up is done."""

from __future__ import annotations

import gc

# Young-generation threshold (CPython's default is 700). An ingest request waiting for its
# broker ack holds ~100 container objects; with dozens in flight the default threshold ran a
# young collection every few requests, promoting objects that were about to be freed anyway,
# and a full collection (~120,000 start-up objects: ~50-100 ms here) every few seconds: a
# quarter of the ingest CPU under load and the long tail of its latency.
GEN0_THRESHOLD = 10_000
_settled = False


def settle() -> None:
    """Move everything alive after start-up out of the collector's sight (gc.freeze) and make
    young collections rarer; objects are still freed by reference counting as before.
    Once per process: a test process starting many apps pays the full collection once."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
