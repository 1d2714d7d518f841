"""Ports handed to the servers one test configures must all differ."""

from __future__ import annotations

from reco.stack.health import free_port, free_port_pair


def test_free_ports_are_never_handed_out_twice() -> None:
    # The kernel gives a just-closed ephemeral port again within a few hundred binds: CI once
    # configured redis-exporter and the Airflow API server on the same port.
    singles = [free_port() for _ in range(1000)]
    pairs = [free_port_pair() for _ in range(50)]
    taken = singles + pairs + [port + 1 for port in pairs]
    assert len(set(taken)) == len(taken)
