"""What the HTTP benchmarks share: wrk runs (closed loop, max throughput) and percentiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

import numpy as np


def wrk(url: str, script: str, seconds: float, connections: int) -> dict:
    """Closed-loop max throughput with wrk (1 thread); the Lua script shapes the requests."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", f.name,
         url], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    pct = {p: _wrk_ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in (50, 99)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    # "Socket errors: connect 0, read 0, write 0, timeout 0", printed only when one is not 0.
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)
    return {"rps": rps, "requests": requests, "p50_ms": pct[50], "p99_ms": pct[99],
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sum(map(int, sockets.groups())) if sockets else 0}


def failed_requests(phase: dict) -> int:
    """Non-2xx answers and socket errors of a wrk phase: an endpoint failing fast looks fast,
    so a throughput with any of these is not a measurement of the endpoint."""
    return phase.get("non_2xx", 0) + phase.get("socket_errors", 0)


def post_script(body: bytes) -> str:
    """A wrk script POSTing `body` as JSON."""
    return (f"wrk.method = 'POST'\nwrk.body = {json.dumps(body.decode())}\n"
            "wrk.headers['Content-Type'] = 'application/json'\n")


def _wrk_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def pct(latencies: list[float]) -> dict:
    a = np.asarray(latencies)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}
