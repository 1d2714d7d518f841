"""The one place configuration is read: environment variables prefixed `RECO_` (and `.env`)."""

from __future__ import annotations

import ipaddress
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EventType = Literal["view", "click", "cart", "purchase"]

_LOCAL_SECRET = "local-dev-only"
MIN_SECRET_CHARS = 16  # production: passwords, keys and secrets (the JWT secret: 32)
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 3.0, "cart": 5.0,
                                           "purchase": 10.0}

# Numbers whose zero, negative, NaN or infinite values would pass parsing and then break a
# process (a division by zero, a batch retried forever, a busy loop, a silent no-op): refused
# at start instead, naming the setting.
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
AtLeastOne = Annotated[int, Field(ge=1)]
AtLeastZero = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
MetricsPort = Annotated[int, Field(le=65535)]  # 0 picks a free port, negative disables it
# Forward decay holds event times up to ~1,000 half-lives after the landmark
# (reco/features.py): 24 h covers ~2.7 years from it, the default 720 h ~80 years.
HalfLifeHours = Annotated[float, Field(ge=24, allow_inf_nan=False)]


class Settings(BaseSettings):
    """Every setting of every process; defaults match the local stack of `reco up`."""

    # hide_input_in_errors: a refused setting's error must not echo the secrets around it.
    model_config = SettingsConfigDict(env_prefix="RECO_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

    env: Literal["local", "production"] = "local"
    state_dir: Path = Path(".reco")
    # The schema migrations; default: the checkout's sql/ (the Docker image sets it).
    sql_dir: Path | None = None

    # PostgreSQL (source of truth)
    pg_host: str = "127.0.0.1"
    pg_port: Port = 5432
    pg_user: str = "reco"
    pg_password: SecretStr = SecretStr("reco")
    pg_database: str = "reco"
    pg_mlflow_database: str = "mlflow"
    pg_airflow_database: str = "airflow"

    # Redis (serving store, rebuildable)
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    # The local stack's KRaft controller port; default the broker's + 1.
    kafka_controller_port: int | None = Field(default=None, ge=1, le=65535)
    topic_events: str = "events"
    topic_dlq: str = "events.dlq"
    topic_partitions: AtLeastOne = 3
    # Replicas of each topic `reco topics create` makes; default min(3, brokers in the cluster).
    topic_replication: int | None = Field(default=None, ge=1)
    group_processor: str = "reco-processor"
    group_archiver: str = "event-archiver"

    # HTTP services and UIs
    host: str = "127.0.0.1"
    ingest_port: Port = 8080
    reco_port: Port = 8081
    mlflow_port: Port = 5000
    airflow_port: Port = 8088
    prometheus_port: Port = 9090
    redis_exporter_port: Port = 9121  # Redis's memory, evictions and clients for Prometheus
    # PostgreSQL's availability, size and connections for Prometheus
    postgres_exporter_port: Port = 9187
    # The machine's disk space, memory and CPU for Prometheus
    node_exporter_port: Port = 9100
    # Default (empty): the local stack's MLflow, http://127.0.0.1:<mlflow_port>.
    mlflow_tracking_uri: str = ""
    processor_metrics_port: MetricsPort = 9101
    archiver_metrics_port: MetricsPort = 9102
    # Copies `reco up` runs of each consumer (partitions are the unit of scale).
    processor_copies: int = Field(default=1, ge=1)
    archiver_copies: int = Field(default=1, ge=1)
    # Shared by Airflow's API server and scheduler to sign task tokens.
    airflow_secret: SecretStr = SecretStr(_LOCAL_SECRET)

    # Events
    # A JSON object of the types to change: the others keep their defaults.
    # Parsed here (NoDecode), so that text that is not JSON is refused with an example.
    event_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    max_future_skew_s: NonNegative = 300.0
    max_batch_events: AtLeastOne = 1000
    max_body_bytes: AtLeastOne = 1_000_000
    # A write's whole body within this, else 408: clients trickling bodies held connections
    # (and their memory) for as long as they liked.
    body_read_timeout_s: Positive = 30.0
    # An event's context as JSON (reco.events.MAX_CONTEXT_BYTES); 0: no context accepted.
    max_context_bytes: AtLeastZero = 4096

    # Real-time features
    recent_max: AtLeastOne = 50
    recent_ttl_s: AtLeastOne = 24 * 3600  # EXPIRE 0 would delete the key it just wrote
    seen_ttl_s: AtLeastOne = 30 * 24 * 3600
    # exclude_seen reaches a user's newest this many items: every miss reads them all, and an
    # unbounded set let one crawler's user id cost each of its misses ~0.3 us per item ever seen.
    seen_max: int = Field(default=500, ge=0)
    # 30 days: measured on MovieLens-100k validation (benchmarks/reports/tuning.md); 24h made
    # the popularity signal half as good there. At least a day, as co-view's: shorter, events
    # soon fall past the landmark's range and add nothing (0 divided by zero, < 0 inverted).
    popularity_half_life_h: HalfLifeHours = 720.0
    # Forward decay landmark (epoch seconds): scores are stored as w*2^((t-L)/half_life).
    # Doubles limit event times to ~1,000 half-lives after it (see reco/features.py): 1.79e9 is
    # 2026-09-20, good until ~2029-06 with a 24h half-life (1.7e9 overflowed from 2026-08).
    popularity_landmark_s: Finite = 1_790_000_000.0
    # One processor replica removes the popularity members that have faded to nothing at most
    # this often (streaming/popularity_prune.py); 0: never (the sets then keep every id seen).
    popularity_prune_s: AtLeastZero = 3600
    coview_max: AtLeastOne = 200
    # Co-view affinity decays like popularity (forward decay, same landmark): plain counts never
    # aged, so once an item's set was full of pairs counted twice or more, a new partner (one
    # count) was trimmed in the transaction that added it, for good.
    # At least a day: the landmark then covers ~1,000 days, as popularity's (reco/features.py);
    # shorter, events past its range would add no co-view at all.
    coview_half_life_h: HalfLifeHours = 720.0
    coview_ttl_s: AtLeastOne = 7 * 24 * 3600
    coview_window_s: AtLeastOne = 30 * 60
    coview_recent_n: AtLeastOne = 10
    trending_window_s: AtLeastOne = 3600
    trending_bucket_s: AtLeastOne = 60  # a divisor
    # How long one event sent twice (a client's retry, a file replayed again) is recognised.
    # Redeliveries from the log are recognised by each partition's applied offset whatever
    # their age (streaming/applied_positions.py); a marker costs ~150 bytes of Redis.
    dedup_ttl_s: int = Field(default=24 * 3600, ge=1)
    # Items and users repeat within a batch: fewer Redis commands.
    consumer_batch_max: AtLeastOne = 2000
    consumer_backoff_max_s: Positive = 30.0  # ceiling of the retry backoff when a store is down
    # The processor's Redis round trip (a batch's reads, or its transaction): past it the
    # connection is dropped and the batch retried, instead of waiting on a half-open socket.
    processor_redis_timeout_s: Positive = 30.0
    # The archiver's statement, the same way: a half-open PostgreSQL connection (a failover, a
    # partition) would otherwise hold a batch until the kernel gives up, ~15 minutes.
    archiver_pg_timeout_s: Positive = 30.0
    # Ingest: how long to wait for the broker's ack before answering 503, and the Retry-After
    ingest_ack_timeout_s: Positive = 5.0
    ingest_retry_after_s: AtLeastZero = 5
    # A catalogue write's longest PostgreSQL statement (a row locked by a long transaction, a
    # half-open connection): past it, 503 and Retry-After instead of a request that hangs.
    ingest_pg_timeout_s: Positive = 10.0

    # Ranking: weights and n's tuned on MovieLens-100k validation (benchmarks/tune_quality.py,
    # benchmarks/reports/tuning.md); w_pop stays > 0 so popularity orders the cold-start fallback.
    w_coview: NonNegative = 0.4
    w_embed: NonNegative = 0.1
    w_pop: NonNegative = 0.05
    w_recency: NonNegative = 0.2
    w_cf: NonNegative = 1.0
    w_seq: NonNegative = 2.0  # SASRec's next-item lists (benchmarks/reports/sasrec_experiment.md)
    reco_recent_n: AtLeastOne = 5
    # Entries read from each recent item's co-view, KNN and ALS item lists: 20 beat 100 and 50
    # on MovieLens validation with SASRec (benchmarks/compare_tuning.py, 4 seeds: HR@10 0.2609
    # against 0.2537), and a cache miss ranks ~600 entries fewer.
    reco_neighbours_n: int = Field(default=20, ge=1)
    # Entries of the lists /items/{id}/similar blends (k <= 100).
    reco_similar_n: int = Field(default=100, ge=1)
    max_category_share: Share = 0.7  # chosen on MovieLens validation (sasrec_experiment.md)
    # Items without catalogue metadata (ids seen in events only: retired SKUs, typos, made-up
    # ids): "auto" never recommends them once the catalogue holds an item, "true" never,
    # "false" always (deployments that send no catalogue, as before).
    catalogue_only: Literal["auto", "true", "false"] = "auto"
    freshness_boost: NonNegative = 0.1
    freshness_days: AtLeastZero = 14
    cache_ttl_s: int = Field(default=300, ge=1)  # SET ... EX takes no 0
    popular_snapshot_refresh_s: Positive = 5.0
    # Recommendation API (issue 4)
    # Popular candidates (at least k + seen) to fill thin lists; 0: none.
    reco_popular_filler_n: AtLeastZero = 50
    reco_recency_half_life_s: Positive = 7 * 86400.0  # recency signal: weight halves per this age
    # > 0: the lists of the user's k-th newest recent item weigh 0.5**(k / this) (0: all equal)
    reco_source_half_n: NonNegative = 2.0
    reco_neighbour_agg: Literal["max", "sum"] = "sum"  # embedding / ALS item-item over sources
    popular_snapshot_size: AtLeastOne = 20_000  # top items held in process; others score 0
    # Categories asked for (a `category` filter) also bring their own top items into the
    # snapshot, so a category outside the global top still fills a new visitor's page and the
    # fallback: the latest this many categories, this many items each.
    popular_category_snapshot_max: int = Field(default=64, ge=0)
    popular_category_snapshot_n: int = Field(default=200, ge=1)
    catalog_reload_s: Positive = 300.0  # full item-metadata reload even without a version bump
    # Between full reloads, upserted items are updated in place unless more than this share of
    # the catalogue changed since the last update (then a full reload: cheaper per item).
    catalog_update_max_share: Share = 0.2
    reco_redis_timeout_s: Positive = 0.25  # per command; a slow store degrades to fallback
    # After a store error, serve fallback this long before retrying.
    reco_redis_retry_s: NonNegative = 1.0
    reco_list_cache_items: AtLeastZero = 50_000  # item neighbour lists kept parsed in process
    reco_coview_cache_ttl_s: NonNegative = 10.0  # co-view sets change with events: keep briefly
    reco_offline_list_cache_ttl_s: NonNegative = 300.0  # KNN/ALS lists are immutable per version
    reco_redis_in_threads: bool = False  # feature reads in a threadpool instead of the loop

    # Batch / training
    engine: Literal["local", "spark"] = "local"
    session_gap_s: AtLeastOne = 30 * 60
    spark_master: str = "local[2]"
    spark_driver_memory: str = "2g"
    # A PostgreSQL JDBC jar to use instead of fetching one with Maven (the Docker image sets it).
    jdbc_driver_path: Path | None = None
    gate_tolerance: NonNegative = 0.02
    # The gate refuses an experiment (an ALS or SASRec run overriding its schedule's window,
    # engine or hyperparameters) with lists for fewer users than this share of the champion's:
    # the served lists would go from personal to popularity for the rest.
    gate_min_user_coverage: Share = 0.9
    # Offline pipeline (issue 5): hyperparameter defaults live in spark_jobs' *Params dataclasses.
    offline_dir: Path | None = None  # run folders; default state_dir / "offline"
    # Run folders (extract copies, models, evaluation) kept per model, newest first, the
    # publishing run's included; MLflow keeps the models (offline_keep_versions).
    offline_keep_runs: int = Field(default=3, ge=1)
    # MLflow registry versions kept per model after each publish, newest first (0: all), plus
    # the champion and the serving one; the others lose their model files, their runs stay.
    offline_keep_versions: int = Field(default=10, ge=0)
    spark_jars_dir: Path | None = None  # JDBC driver jar cache; default state_dir / "jars"
    train_window_days: AtLeastOne = 30
    # PostgreSQL `events` kept this many days by the daily `maintenance` DAG (0: every event,
    # ~275 bytes each with its indexes). Longer than the training window (checked).
    events_retention_days: AtLeastZero = 0
    # Airflow's own history kept this many days (0: all): the `maintenance` DAG deletes older
    # task log files, `reco db prune-airflow` older metadata rows (dag runs, task instances,
    # XComs, audit log) with `airflow db clean`. A serve_champions run every 5 minutes adds 288
    # runs a day.
    airflow_history_days: AtLeastZero = 30
    recency_half_life_days: Positive = 3650.0  # ALS confidence age decay; ~none won on validation
    jdbc_partitions: AtLeastOne = 4
    eval_k: AtLeastOne = 10
    publish_batch: AtLeastOne = 5000
    publish_grace_s: AtLeastZero = 3600  # previous version stays readable this long after a switch

    # Security (issue 7; serving/security.py, serving/rate_limit.py, serving/tls.py)
    auth_enabled: bool = False  # API keys on ingest writes, JWT on recommendations
    # Service-to-service keys for ingest and catalogue writes: comma-separated in the env.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr = SecretStr(_LOCAL_SECRET)  # HS256
    jwt_public_key: str | None = None  # RS256: PEM text or the path of a PEM file
    jwt_audience: str | None = None  # checked when set
    jwt_leeway_s: NonNegative = 10.0  # clock skew allowed on exp / nbf
    # Requests per second (0 = no limit), counted in Redis so replicas share one budget.
    rate_limit_ingest_per_s: NonNegative = 0.0  # per client IP, on ingest writes
    rate_limit_reco_per_s: NonNegative = 0.0  # per user, on the recommendation endpoints
    rate_limit_window_s: Positive = 1.0  # fixed window; a burst of rate * window is allowed
    # With auth on: refused credentials (a wrong API key or JWT) per client IP and window on
    # each API; past it, 429 to that IP until the window ends, so keys cannot be guessed at full
    # speed. Only failures are counted (a valid request costs no Redis command). 0 = no limit.
    rate_limit_auth_failures: AtLeastZero = 20
    rate_limit_auth_window_s: Positive = 60.0
    # Proxies whose X-Forwarded-For / -Proto uvicorn believes (comma-separated addresses or
    # networks, or *): behind a load balancer, the per-IP limit then counts each client, not
    # the balancer. uvicorn's default: only a proxy on the same host.
    forwarded_allow_ips: str = "127.0.0.1"
    # Browser origins allowed to call both APIs from a shop's pages (CORS), comma-separated,
    # e.g. https://shop.example; * for any. Empty (the default): no CORS headers, the APIs are
    # called from the shop's backend.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tls_certfile: Path | None = None  # both set: the HTTP services serve HTTPS
    tls_keyfile: Path | None = None
    # Keyed hash for user ids in logs (reco/privacy.py).
    log_pseudonym_key: SecretStr = SecretStr(_LOCAL_SECRET)
    # Keys it replaced, comma-separated: erasures recorded under them (user_erasures,
    # user:erasures) still match their users; new pseudonyms use log_pseudonym_key only.
    log_pseudonym_previous_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list)

    @property
    def pseudonym_keys(self) -> list[str]:
        """Every key a recorded pseudonym may have been made with, the current one first."""
        return [k.get_secret_value()
                for k in (self.log_pseudonym_key, *self.log_pseudonym_previous_keys)]

    @property
    def database_url(self) -> str:
        return self.pg_url(self.pg_database)

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        # Escaped: a generated password often holds '/', '+' or '@', which would otherwise end
        # the password early (psycopg, asyncpg and SQLAlchemy all unescape it).
        user, password = (quote(part, safe="")
                          for part in (self.pg_user, self.pg_password.get_secret_value()))
        return f"{driver}://{user}:{password}@{self.pg_host}:{self.pg_port}/{database}"

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{self.pg_database}"

    def event_weight(self, event_type: str) -> float:
        return self.event_weights[event_type]

    @field_validator("api_keys", "log_pseudonym_previous_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _check_origins(cls, value: object) -> object:
        """Origins as browsers send them: scheme://host[:port], no path, no trailing slash (an
        origin written with one would never match, and CORS would fail silently)."""
        # Lower case, as browsers send scheme and host: "https://Shop.example" never matched.
        entries = [o.strip().lower() for o in value.split(",") if o.strip()] \
            if isinstance(value, str) else value
        if not isinstance(entries, list):
            return entries
        for origin in entries:
            if origin == "*" and len(entries) == 1:
                continue
            url = urlsplit(origin)
            if url.scheme not in ("http", "https") or not url.netloc or url.path or url.query \
                    or url.fragment or origin.endswith(("/", "?", "#")):
                raise ValueError(f"RECO_CORS_ORIGINS: {origin!r} is not an origin such as "
                                 "https://shop.example (scheme and host, optional port, nothing "
                                 "after; * only as the whole value)")
        return entries

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        """Entries as uvicorn reads them (a network strictly, `*` only as the whole value):
        anything else it takes for a literal no client address matches, and trust is silently
        lost. Returned without spaces, since uvicorn compares the whole value with `*`."""
        entries = [part.strip() for part in value.split(",")]
        if entries == ["*"]:
            return "*"
        for entry in entries:
            if entry == "*":
                raise ValueError("RECO_FORWARDED_ALLOW_IPS: * trusts every address only as the "
                                 "whole value, not in a list")
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry)
                else:
                    ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(f"RECO_FORWARDED_ALLOW_IPS: {entry!r} is not an IP address, a "
                                 "network (CIDR, no host bits set) or *") from None
        return ",".join(entries)

    @field_validator("tls_certfile", "tls_keyfile", "jwt_public_key", "jwt_audience",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # compose passes unset optional vars as ""

    @model_validator(mode="after")
    def _tracking_uri_follows_the_port(self) -> Settings:
        # A fixed default kept pointing at port 5000 when only RECO_MLFLOW_PORT moved: the stack
        # started MLflow on the new port, and every run logged to whatever answered on 5000.
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"http://127.0.0.1:{self.mlflow_port}"
        return self

    @model_validator(mode="after")
    def _refuse_local_secrets_in_production(self) -> Settings:
        if self.env == "production":
            for name in ("pg_password", "airflow_secret"):
                value = getattr(self, name).get_secret_value()
                if value in ("reco", _LOCAL_SECRET) or len(value) < MIN_SECRET_CHARS:
                    raise ValueError(f"RECO_{name.upper()} must be set to a real secret "
                                     f"({MIN_SECRET_CHARS}+ characters) when RECO_ENV=production")
            _refuse_insecure_auth(self)
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("RECO_TLS_CERTFILE and RECO_TLS_KEYFILE must be set together")
        if 0 < self.events_retention_days <= self.train_window_days:
            raise ValueError(
                f"RECO_EVENTS_RETENTION_DAYS ({self.events_retention_days}) must be 0 (keep "
                f"every event) or more than RECO_TRAIN_WINDOW_DAYS ({self.train_window_days}): "
                "training reads that many days of events")
        return self

    @field_validator("catalogue_only", mode="before")
    @classmethod
    def _catalogue_only_word(cls, value: object) -> object:
        # RECO_CATALOGUE_ONLY=True/1/yes read as the booleans they mean.
        words = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false",
                 "off": "false"}
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, str):
            return words.get(value.strip().lower(), value.strip().lower())
        return value

    @field_validator("event_weights", mode="before")
    @classmethod
    def _parse_event_weights(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError('RECO_EVENT_WEIGHTS must be a JSON object, e.g. '
                             '{"view": 1, "purchase": 10}') from None

    @field_validator("event_weights")
    @classmethod
    def _complete_event_weights(cls, value: dict[str, float]) -> dict[str, float]:
        """Every event type gets a weight: one missing would stop the processor at its first
        event of that type (a KeyError it retries forever)."""
        unknown = set(value) - set(DEFAULT_EVENT_WEIGHTS)
        if unknown:
            raise ValueError(f"RECO_EVENT_WEIGHTS has unknown event types: {sorted(unknown)}")
        bad = sorted(name for name, weight in value.items()
                     if not (math.isfinite(weight) and weight >= 0))
        if bad:
            raise ValueError(f"RECO_EVENT_WEIGHTS: the weights of {bad} must be finite and >= 0")
        return {**DEFAULT_EVENT_WEIGHTS, **value}


def _refuse_insecure_auth(s: Settings) -> None:
    """Production: auth on, and no local or empty secrets (messages name settings, not values)."""
    if not s.auth_enabled:
        raise ValueError("RECO_AUTH_ENABLED must be true when RECO_ENV=production")
    keys = [k.get_secret_value() for k in s.api_keys]
    if not keys or any(k == _LOCAL_SECRET or len(k) < MIN_SECRET_CHARS for k in keys):
        raise ValueError(f"RECO_API_KEYS must hold real keys ({MIN_SECRET_CHARS}+ characters) "
                         "when RECO_ENV=production")
    if s.jwt_algorithm == "HS256":
        secret = s.jwt_secret.get_secret_value()
        if secret == _LOCAL_SECRET or len(secret) < 32:
            raise ValueError("RECO_JWT_SECRET must be a real secret (32+ characters) when "
                             "RECO_ENV=production")
    elif not s.jwt_public_key:
        raise ValueError("RECO_JWT_PUBLIC_KEY must be set for RS256")
    pseudonym_key = s.log_pseudonym_key.get_secret_value()
    if pseudonym_key == _LOCAL_SECRET or len(pseudonym_key) < MIN_SECRET_CHARS:
        raise ValueError(f"RECO_LOG_PSEUDONYM_KEY must be set to a real secret "
                         f"({MIN_SECRET_CHARS}+ characters) when RECO_ENV=production")
    # Each was a production key once; a short one is a mistake (a key split at a comma).
    if any(len(k) < MIN_SECRET_CHARS for k in s.pseudonym_keys[1:]):
        raise ValueError(f"RECO_LOG_PSEUDONYM_PREVIOUS_KEYS must hold keys of "
                         f"{MIN_SECRET_CHARS}+ characters, comma-separated (a key holds no "
                         f"comma) when RECO_ENV=production")


@lru_cache
def get_settings() -> Settings:
    return Settings()


class ConfigError(Exception):
    """A setting's value that cannot work here; the message names the RECO_* variable."""


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per refused setting: its RECO_* variable and the reason (no values: secrets)."""
    lines = []
    for error in exc.errors():
        reason = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        field, *inner = error["loc"] or ("",)
        name = f"RECO_{str(field).upper()}" + "".join(f"[{part}]" for part in inner)
        lines.append(reason if not field or reason.startswith(name) else f"{name}: {reason}")
    return lines
