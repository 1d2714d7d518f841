"""Every Redis key the platform uses, built here and nowhere else.

Each key names one user or one item (or one global structure), so no command or script
ever spans keys of different users or items. The catalogue's scripts also write global
structures beside an item's hash (`item:ids`, `item:changes`, the version): on Redis Cluster
those would have to share the item's hash slot, which they do not: the platform runs on one
Redis server, not on Redis Cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Global structures
ITEM_POPULARITY = "item:popularity"
MODEL_VERSIONS = "model:versions"  # hash: model name -> active published version
# Hash: model name -> the version a publish is writing (set before its first list, removed at
# its switch): an erasure deletes the user's lists of these versions too.
MODEL_PUBLISHING = "model:publishing"
# Counter that writers of item:meta:* INCR after a change, so servers update their catalogue.
# Outside `item:meta:*`: inside, an item with the id "version" would share its key.
ITEM_META_VERSION = "item:catalog_version"
# Where releases before 2026-11-28 kept it: a plain string the reload's SCAN skips by type.
ITEM_META_VERSION_LEGACY = "item:meta:version"
# Sorted set item id -> epoch ms of its latest catalogue upsert, written before the version
# INCR: servers re-read only these items. A version bump with no entry in the last minute makes
# them reload everything. Outside `item:meta:*`: the reload's SCAN must not meet it.
ITEM_META_CHANGES = "item:changes"
# Its trim: entries older than a day go (servers reload fully every few minutes, so none is
# needed that long), and beyond this many members the oldest go (bounds memory on bulk imports;
# servers apply fewer changes than this in place, so a trimmed set never looks complete).
ITEM_META_CHANGES_KEEP_MS = 86_400_000
ITEM_META_CHANGES_MAX = 100_000
# Set of every item id with an `item_meta` hash, added to by the script that writes the hash: the
# catalogue reload reads it instead of a SCAN of the whole keyspace, whose cost grows with every
# user's keys. It is read only once it holds `ITEM_IDS_COMPLETE`, which the full mirror from
# PostgreSQL adds after listing every item (`reco db mirror-items`, the daily maintenance DAG)
# if its own token (`ITEM_IDS_MIRROR_TOKEN`) survived the pass, i.e. the set was not lost
# meanwhile: until then (hashes of releases before the set, the set lost or evicted, marker and
# all) the reload SCANs for `ITEM_META_PATTERN` as before. Item ids are never empty and hold no
# space, so neither member is taken for an item.
ITEM_IDS = "item:ids"
ITEM_IDS_COMPLETE = ""
ITEM_IDS_MIRROR_TOKEN = " mirror {}"  # .format(a run's uuid)
ITEM_META_PATTERN = "item:meta:*"
MODEL_PUBLISHED_AT = "model:published_at"  # hash: model name -> publish epoch seconds
# Sorted set: `user_erasure_member` of each erasure the processor applied -> epoch ms it did,
# written in the transaction that deletes the user's keys. Publishing reads it to leave erased
# users out of a model (spark_jobs/erased_users.py), whether or not the archiver has recorded
# the erasure in PostgreSQL's `user_erasures` yet, which keeps every one; entries older than
# USER_ERASURES_KEEP_MS are trimmed.
USER_ERASURES = "user:erasures"
USER_ERASURES_KEEP_MS = 90 * 86_400_000


def erasure_mark(partition: int, offset: int) -> bytes:
    """The value of an applied erasure's `event_seen` marker: where the processor read it,
    which tells its redelivery from a copy (an event's marker holds "1")."""
    return b"%d %d" % (partition, offset)


ERASURE_MARK_RE = re.compile(rb"-?\d+ -?\d+")  # an `erasure_mark`


def user_erasure_member(user_pseudonym: str, erasure_id: str) -> str:
    """The user by pseudonym (reco.privacy: never the id) and the erasure's id."""
    return f"{user_pseudonym} {erasure_id}"


def parse_user_erasure_member(member: str) -> tuple[str, str | None]:
    """(pseudonym, erasure id): the inverse of `user_erasure_member`; no id for a member
    written otherwise (by hand)."""
    user_pseudonym, _, erasure_id = member.partition(" ")
    return user_pseudonym, erasure_id or None


def user_recent(user_id: str) -> str:
    """List of distinct recent item ids, newest first."""
    return f"user:recent:{user_id}"


def user_seen(user_id: str) -> str:
    """Sorted set: item id -> epoch ms the user last touched it, the newest `seen_max` kept
    (exclude_seen reaches beyond the recent 50). Named apart from the unbounded plain set the
    processor wrote before, so an upgrade never meets the old type."""
    return f"user:seen_at:{user_id}"


def user_seen_unbounded(user_id: str) -> str:
    """Releases before `seen_max`: a plain set of every item the user touched (read only by
    `reco db carry-seen-sets`, which moves it into `user_seen`; otherwise it expires)."""
    return f"user:seen:{user_id}"


USER_SEEN_UNBOUNDED_PATTERN = user_seen_unbounded("*")


def user_last_event(user_id: str) -> str:
    """The id of the user's latest applied event: a cached answer's fingerprint includes it, so
    an event that leaves the recent list as it was (the head item touched again) is a miss."""
    return f"user:last_event:{user_id}"


def user_recent_times(user_id: str) -> str:
    """Hash item id -> epoch seconds the user last touched it (recency signal, co-view window)."""
    return f"user:recent_ts:{user_id}"


def co_view(item_id: str) -> str:
    return f"co_view:{item_id}"


def item_meta(item_id: str) -> str:
    """Hash with the catalogue fields business rules need: category, price, in_stock, created_at
    (and the `revision` it mirrors). A deleted item's is a tombstone, `revision` and `deleted`
    only (serving/catalogue.py): it holds none of the catalogue's fields, so their readers (the
    processor's HGET of the category, the API's HMGET) find no item, as without a hash."""
    return f"item:meta:{item_id}"


# How long a tombstone keeps an older revision of its item out of Redis. An older write lands
# late when it was read or stored before the delete: an ingest request mirroring what it just
# stored (seconds), a full mirror's page (seconds), or an ingest replica's owed mirror, retried
# for as long as Redis refuses that replica. A week outlasts any of these an operator lets run;
# past it the daily full mirror (`reco db mirror-items`, which removes from Redis the items
# PostgreSQL holds deleted) undoes a later one within a day. Forever would cost memory (and
# reload SCANs) for every item ever deleted.
ITEM_TOMBSTONE_TTL_S = 7 * 86_400


def category_popularity(category: str) -> str:
    return f"item:popularity:cat:{category}"


# Set of the categories whose `category_popularity` set the processor has written (added in the
# transaction that writes the set, never removed): the periodic prune reads it instead of a
# SCAN of the whole keyspace. Outside `item:popularity:cat:*`, which a SCAN may match.
POPULARITY_CATEGORIES = "item:popularity_categories"
# Category sets written before that set existed are found once by a SCAN with this pattern,
# after which the marker is set.
POPULARITY_CATEGORY_PATTERN = category_popularity("*")
POPULARITY_CATEGORIES_SCANNED = "item:popularity_categories_scanned"
# Held (SET NX EX) by the processor replica pruning the popularity sets: at most one prune
# per RECO_POPULARITY_PRUNE_S across replicas. Never released: its expiry is the period.
POPULARITY_PRUNE_LOCK = "processor:popularity_prune"


def trending_bucket(bucket_start_s: int) -> str:
    """Sorted set of weighted counts for one time bucket; the last hour is the union of buckets."""
    return f"item:trending:{bucket_start_s}"


def item_knn(item_id: str, version: str) -> str:
    """Embedding neighbours of one item in one published Item2Vec version."""
    return f"item:knn:{version}:{item_id}"


def item_cf_neighbours(item_id: str, version: str) -> str:
    """ALS item-item neighbours in one published ALS version."""
    return f"item:cf:{version}:{item_id}"


def user_cf(user_id: str, version: str) -> str:
    """ALS candidates for one user in one published ALS version."""
    return f"user:cf:{version}:{user_id}"


def user_seq(user_id: str, version: str) -> str:
    """SASRec next-item candidates for one user in one published SASRec version."""
    return f"user:seq:{version}:{user_id}"


# The models that publish a list per user, and its key.
USER_LISTS = {"als": user_cf, "sasrec": user_seq}


def model_items(model: str, version: str) -> str:
    """JSON list of the item ids one published model version numbers its items by: its users'
    lists carry these numbers beside the ids (`reco.neighbours.encode`)."""
    return f"model:items:{model}:{version}"


def reco_cache(user_id: str, variant: str = "") -> str:
    """Cached response; `variant` encodes the request parameters that change the answer."""
    return f"cache:reco:{user_id}" + (f":{variant}" if variant else "")


def user_erasable(user_id: str, versions: Iterable[tuple[str, str]]) -> list[str]:
    """Every key holding one user's data, for the user's erasure (reco/erasure.py): the
    features, the response cache's base entry, and the ALS and SASRec lists of `versions`
    ((model name, version) pairs: the serving and the publishing ones). The cache's variant
    entries (`reco_cache(user, variant)`) cannot be listed without a SCAN: the erasure sets
    the user's latest event, which their fingerprint holds, so they are never served again,
    and they expire within RECO_CACHE_TTL_S."""
    found = [user_recent(user_id), user_recent_times(user_id), user_seen(user_id),
             user_seen_unbounded(user_id), user_last_event(user_id), reco_cache(user_id)]
    found += [USER_LISTS[model](user_id, version) for model, version in versions
              if model in USER_LISTS]
    return found


def event_seen(event_id: str) -> str:
    """Marker that the processor has applied an event: one event sent twice (a client's retry)
    is applied once while the marker lives (RECO_DEDUP_TTL_S). Erasures, and the events they
    drop, are marked as long as `USER_ERASURES` keeps them (an erasure's marker holds the
    "partition offset" it was read at)."""
    return f"event:seen:{event_id}"


def applied_position(topic: str, partition: int) -> str:
    """String "next_offset newest_record_ms": what the processor applied of one partition
    (streaming/applied_positions.py). No TTL: one key per partition."""
    return f"processor:applied:{topic}:{partition}"


APPLIED_POSITION_PATTERN = "processor:applied:*"


def publish_lock(model: str) -> str:
    """redis-py lock held while one model's version is published: a second publish of the
    same model (the DAG and `reco train` at once) waits instead of retiring, as an old
    version, the keys the first is still writing."""
    return f"model:publishing:{model}"


def version_prefix(kind: str, version: str) -> str:
    """Pattern matching every key of one published version, for cleanup with SCAN."""
    return {
        "knn": f"item:knn:{version}:*",
        "cf_item": f"item:cf:{version}:*",
        "cf_user": f"user:cf:{version}:*",
        "seq_user": f"user:seq:{version}:*",
        "cf_items": f"model:items:als:{version}",
        "seq_items": f"model:items:sasrec:{version}",
    }[kind]


def version_pattern(kind: str) -> str:
    """Pattern matching the keys of every published version of one kind (cleanup with SCAN)."""
    return version_prefix(kind, "*")


def key_version(kind: str, key: str) -> str:
    """The version in a key of one kind (a key `version_pattern(kind)` matches): the inverse
    of the versioned builders, e.g. `key_version("knn", item_knn(item, v)) == v`."""
    head = version_prefix(kind, "\0").split("\0")[0]
    if not key.startswith(head):
        raise ValueError(f"{key!r} is not a {kind!r} key")
    return key[len(head):].split(":", 1)[0]


def rate_limit(service: str, scope: str, subject: str) -> str:
    """One service's request counter of one client ("ip"), one user ("user"), one user from one
    client ("ip_user") or one client's refused credentials ("auth_ip") for the current window."""
    return f"ratelimit:{service}:{scope}:{subject}"
