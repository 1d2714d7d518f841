"""The one place configuration is read: environment variables prefixed `RECO_` (and `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EventType = Literal["view", "click", "cart", "purchase"]

_LOCAL_SECRET = "local-dev-only"


class Settings(BaseSettings):
    """Every setting of every process; defaults match the local stack of `reco up`."""

    model_config = SettingsConfigDict(env_prefix="RECO_", env_file=".env", extra="ignore")

    env: Literal["local", "production"] = "local"
    state_dir: Path = Path(".reco")

    # PostgreSQL (source of truth)
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "reco"
    pg_password: str = "reco"
    pg_database: str = "reco"
    pg_mlflow_database: str = "mlflow"
    pg_airflow_database: str = "airflow"

    # Redis (serving store, rebuildable)
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_events: str = "events"
    topic_dlq: str = "events.dlq"
    topic_partitions: int = 3
    group_processor: str = "reco-processor"
    group_archiver: str = "event-archiver"

    # HTTP services and UIs
    host: str = "127.0.0.1"
    ingest_port: int = 8080
    reco_port: int = 8081
    mlflow_port: int = 5000
    airflow_port: int = 8088
    prometheus_port: int = 9090
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"

    # Events
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 3.0, "cart": 5.0, "purchase": 10.0}
    )
    max_future_skew_s: float = 300.0
    max_batch_events: int = 1000
    max_body_bytes: int = 1_000_000

    # Real-time features
    recent_max: int = 50
    recent_ttl_s: int = 24 * 3600
    popularity_half_life_h: float = 24.0
    # Forward decay landmark (epoch seconds): scores are stored as w*2^((t-L)/half_life).
    popularity_landmark_s: float = 1_700_000_000.0
    coview_max: int = 200
    coview_ttl_s: int = 7 * 24 * 3600
    coview_window_s: int = 30 * 60
    coview_recent_n: int = 10
    trending_window_s: int = 3600
    trending_bucket_s: int = 60
    dedup_ttl_s: int = 7 * 24 * 3600
    consumer_batch_max: int = 500

    # Offline lists
    knn_size: int = 100
    knn_ttl_s: int = 7 * 24 * 3600
    cf_size: int = 100

    # Ranking
    w_coview: float = 0.4
    w_embed: float = 0.3
    w_pop: float = 0.2
    w_recency: float = 0.1
    w_cf: float = 0.0
    reco_recent_n: int = 10
    reco_neighbours_n: int = 50
    max_category_share: float = 0.5
    freshness_boost: float = 0.1
    freshness_days: int = 14
    cache_ttl_s: int = 300
    popular_snapshot_refresh_s: float = 5.0

    # Batch / training
    engine: Literal["local", "spark"] = "local"
    session_gap_s: int = 30 * 60
    spark_master: str = "local[2]"
    spark_driver_memory: str = "2g"
    gate_tolerance: float = 0.02

    @property
    def database_url(self) -> str:
        return self.pg_url(self.pg_database)

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        return (
            f"{driver}://{self.pg_user}:{self.pg_password}@{self.pg_host}:{self.pg_port}/{database}"
        )

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{self.pg_host}:{self.pg_port}/{self.pg_database}"

    def event_weight(self, event_type: str) -> float:
        return self.event_weights[event_type]

    @model_validator(mode="after")
    def _refuse_local_secrets_in_production(self) -> Settings:
        if self.env == "production" and self.pg_password in ("reco", _LOCAL_SECRET):
            raise ValueError("RECO_PG_PASSWORD must be set to a real secret when RECO_ENV=production")
        unknown = set(self.event_weights) - {"view", "click", "cart", "purchase"}
        if unknown:
            raise ValueError(f"RECO_EVENT_WEIGHTS has unknown event types: {sorted(unknown)}")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
