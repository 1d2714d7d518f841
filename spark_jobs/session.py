"""Build a SparkSession from arguments (never from the environment)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def build_session(
    app_name: str = "reco",
    master: str = "local[2]",
    driver_memory: str = "2g",
    jars: list[Path] | None = None,
    shuffle_partitions: int = 8,
    extra: dict[str, Any] | None = None,
):
    """A SparkSession with the JDBC driver on the classpath; reuses an active one."""
    from pyspark.sql import SparkSession

    # Workers must run the driver's Python (the venv), not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(master)
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.adaptive.enabled", "true")
    )
    if jars:
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    for key, value in (extra or {}).items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
