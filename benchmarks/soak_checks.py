"""The soak's measurements and verdict: consumer lag read from a /metrics page, the recorder of
every request and probe, and the named checks a run must pass."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import httpx

LAG_SERIES = "kafka_consumer_lag{"


class NoLag(Exception):
    """A lag probe without a figure; the message says why."""


def parse_lag(text: str, group: str) -> float:
    """The total lag `group` reports on a Prometheus page, summed over its partitions.

    A page without a series of that group (consumer not assigned yet, metric renamed, another
    service's page) raises NoLag: absent evidence is not a lag of 0.
    """
    label = f'group="{group}"'
    values = []
    for line in text.splitlines():
        if line.startswith(LAG_SERIES) and label in line:
            sample = line.rpartition("}")[2].split()
            try:
                values.append(float(sample[0]))
            except (IndexError, ValueError):
                raise NoLag(f"unreadable sample {line!r}") from None
    if not values:
        raise NoLag(f"no kafka_consumer_lag series of group {group!r}")
    return sum(values)


async def read_lag(client: httpx.AsyncClient, page: str, group: str) -> float:
    """`group`'s total lag on the /metrics `page`; NoLag when there is no figure to read."""
    try:
        response = await client.get(page, timeout=2)
    except httpx.HTTPError as exc:
        raise NoLag(type(exc).__name__) from None
    if response.status_code != 200:
        raise NoLag(f"HTTP {response.status_code}")
    return parse_lag(response.text, group)


async def lag(client: httpx.AsyncClient, url: str, group: str,
              unanswered: Counter[str] | None = None) -> float | None:
    """`group`'s total lag from `url`/metrics; None when the probe got no figure (no answer, an
    HTTP error, a page without the group's lag), with the reason counted in `unanswered`."""
    page = url + "/metrics"
    try:
        return await read_lag(client, page, group)
    except NoLag as exc:
        if unanswered is not None:
            unanswered[f"{page}: {exc}"] += 1
        return None


class Recorder:
    def __init__(self, start: float) -> None:
        self.start = start
        self.lat: dict[tuple[int, str], list[float]] = defaultdict(list)
        self.errors: dict[tuple[int, str], int] = defaultdict(int)
        self.statuses: dict[str, int] = defaultdict(int)
        self.lag: list[tuple[float, float | None, float | None]] = []
        self.unanswered: Counter[str] = Counter()  # lag probes without a figure, by reason
        self.acked = 0
        self.late = 0

    def record(self, endpoint: str, began: float, status: int | str) -> None:
        minute = int((began - self.start) // 60)
        self.statuses[f"{endpoint} {status}"] += 1
        if status in (200, 202):
            self.lat[(minute, endpoint)].append(time.perf_counter() - began)
        else:
            self.errors[(minute, endpoint)] += 1


def verdict(rec: Recorder, growth: dict[str, float], drained: dict,
            bound: float) -> dict[str, bool]:
    """Named checks, each False unless it was measured and met: a probe that got no answer, a
    count nobody took or an empty set of samples is a failure, never a vacuous pass."""
    processor = [p for _, p, _ in rec.lag]
    archiver = [a for _, _, a in rec.lag]
    return {
        "no_errors": sum(rec.errors.values()) == 0,
        "no_late_sends": rec.late == 0,
        "lag_sampled": bool(rec.lag),
        "processor_lag_probes_answered": None not in processor,
        "archiver_lag_probes_answered": None not in archiver,
        "processor_lag_bounded": bounded(processor, bound),
        "archiver_lag_bounded": bounded(archiver, bound),
        "lag_drained": drained.get("lag_drained", False),
        # Not counted when the stack was attached (its events table is not this run's alone),
        # nor is RSS: an attached run reports its figures but cannot PASS.
        "archived_equals_acked": drained.get("archived") == rec.acked,
        "rss_measured": bool(growth),
        "rss_growth_under_10pct": bool(growth) and all(g < 10 for g in growth.values()),
    }


def bounded(samples: list[float | None], bound: float) -> bool:
    """Every answered probe under `bound`, and at least one answered (unanswered ones fail
    their own check)."""
    answered = [v for v in samples if v is not None]
    return bool(answered) and all(v < bound for v in answered)


def verdict_line(checks: dict[str, bool]) -> str:
    failed = [name for name, ok in checks.items() if not ok]
    status = f"FAIL ({', '.join(failed)})" if failed else "PASS"
    return (f"Verdict: {status}; "
            + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in checks.items()) + ".")
