"""Build a SparkSession from arguments (never from the environment)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The JVM logs every class it cannot archive (signed jars, generated code) as a warning.
_QUIET_CDS = "-Xlog:cds*=off"


def class_archive_options(archive: Path) -> list[str]:
    """JVM options that load Spark's classes from a class-data-sharing archive (JDK 13+).

    Reading ~10,000 classes out of ~300 jars is most of a session's start: with an archive a
    session starts in ~6.5 s instead of ~10.3 s on 2 cores, and its first query runs in ~3.5 s
    instead of ~5.7 s. Without one, this JVM writes one as it exits, under a name of its own;
    a later session moves it into place once nothing has written to it for a minute. The JVM
    checks an archive against its own version and class path and ignores one that does not match.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    for written in archive.parent.glob(f"{archive.name}.*.tmp"):
        try:
            if time.time() - written.stat().st_mtime > 60:
                if archive.exists() or written.stat().st_size == 0:
                    written.unlink()  # one archive is enough
                else:
                    written.replace(archive)
        except FileNotFoundError:  # another session got to it first
            pass
    if archive.exists():
        return [f"-XX:SharedArchiveFile={archive}", _QUIET_CDS]
    return [f"-XX:ArchiveClassesAtExit={archive}.{os.getpid()}.tmp", _QUIET_CDS]


def build_session(
    app_name: str = "reco",
    master: str = "local[2]",
    driver_memory: str = "2g",
    jars: list[Path] | None = None,
    shuffle_partitions: int = 8,
    extra: dict[str, Any] | None = None,
    class_archive: Path | None = None,
) -> SparkSession:
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
    extra = dict(extra or {})
    if class_archive is not None:
        java_options = " ".join([*class_archive_options(class_archive),
                                 str(extra.pop("spark.driver.extraJavaOptions", ""))]).strip()
        builder = builder.config("spark.driver.extraJavaOptions", java_options)
    for key, value in extra.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
