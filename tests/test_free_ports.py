"""Ports handed to the servers one test configures must all differ."""

from __future__ import annotations

from reco.stack.health import free_port


def test_free_ports_are_never_handed_out_twice() -> None:
    # The kernel gives a just-closed ephemeral port again within a few hundred binds: CI once
    # configured redis-exporter and the Airflow API server on the same port.
    taken = [free_port() for _ in range(1000)]
    assert len(set(taken)) == len(taken)
