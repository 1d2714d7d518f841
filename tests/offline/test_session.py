"""The Spark class-data-sharing archive: written by one session, used by the next."""

from __future__ import annotations

import os
import time

from spark_jobs.session import class_archive_options


def test_without_an_archive_the_jvm_writes_one_under_a_name_of_its_own(tmp_path):
    archive = tmp_path / "spark-classes.jsa"

    options = class_archive_options(archive)

    assert options[0] == f"-XX:ArchiveClassesAtExit={archive}.{os.getpid()}.tmp"
    assert not archive.exists()


def test_a_finished_archive_is_moved_into_place_and_used(tmp_path):
    archive = tmp_path / "spark-classes.jsa"
    written = tmp_path / "spark-classes.jsa.12345.tmp"
    written.write_bytes(b"archive")
    old = time.time() - 120
    os.utime(written, (old, old))
    second = tmp_path / "spark-classes.jsa.12347.tmp"
    second.write_bytes(b"archive")
    os.utime(second, (old, old))
    still_writing = tmp_path / "spark-classes.jsa.12346.tmp"
    still_writing.write_bytes(b"half")

    options = class_archive_options(archive)

    assert options[0] == f"-XX:SharedArchiveFile={archive}"
    assert archive.read_bytes() == b"archive"
    assert not written.exists() and not second.exists()  # one moved in place, one removed
    assert still_writing.exists()  # written to within the last minute: maybe not finished
