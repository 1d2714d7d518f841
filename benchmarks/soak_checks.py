"""The soak's measurements and verdict: a consumer's lag read from the /metrics pages of its
copies (max per partition over the pages, summed; no figure unless every page answers and every
partition of the events topic is on one), the process of each service (for its RSS), the
archived share of the events the run sent, the credentials its requests carry to an
auth-enabled stack (and why some settings leave it none), the recorder of every request and
probe, and the named checks a run must pass."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from urllib.parse import urlparse

import httpx
import jwt
import psutil
from prometheus_client.parser import text_string_to_metric_families

from reco.settings import Settings
from serving.security import API_KEY_HEADER

LAG_METRIC = "kafka_consumer_lag"


class NoLag(Exception):
    """A lag probe without a figure; the message says why."""


Partitions = dict[tuple[str, str], float]  # (topic, partition) -> lag


def parse_lag(text: str, group: str) -> Partitions:
    """The lag `group` reports on a Prometheus page, per (topic, partition) it shows: empty when
    it shows none, as the page of a copy that owns no partition does (streaming/consumer.py's
    PartitionLag drops the series of partitions a copy does not own: more copies than
    partitions, or just after a rebalance). An unreadable sample raises NoLag.

    An empty page is not a lag of 0 either: `lag` takes a figure only when every partition is
    on some copy's page, so a consumer not assigned yet, a renamed metric or another service's
    page leaves its partitions on no page.
    """
    try:
        return {(sample.labels.get("topic", ""), sample.labels.get("partition", "")):
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == LAG_METRIC
                for sample in family.samples if sample.labels.get("group") == group}
    except ValueError as exc:
        raise NoLag(f"unreadable sample ({exc})") from None


async def read_lag(client: httpx.AsyncClient, page: str, group: str) -> Partitions:
    """`group`'s lag per partition on the /metrics `page` (empty: the copy owns none); NoLag
    when the page gives no answer (no connection, an HTTP error, an unreadable sample)."""
    try:
        response = await client.get(page, timeout=2)
    except httpx.HTTPError as exc:
        raise NoLag(type(exc).__name__) from None
    if response.status_code != 200:
        raise NoLag(f"HTTP {response.status_code}")
    return parse_lag(response.text, group)


async def lag(client: httpx.AsyncClient, urls: Sequence[str], group: str, topic: str,
              partitions: int, unanswered: Counter[str] | None = None) -> float | None:
    """`group`'s total lag over the `urls`/metrics pages, one per copy of the consumer, on
    `topic` of `partitions` partitions (the settings' `topic_events`, `topic_partitions`).

    A page that answers HTTP 200 without a series of the group is a copy that owns no partition
    and adds nothing. A page that does not answer (no connection, an HTTP error, an unreadable
    sample) leaves the probe without a figure (None), each such page's reason counted in
    `unanswered`: the partitions it may own are unknown. The pages combine by the max per
    (topic, partition) (during a rebalance two copies can both show a partition, as in
    reco/stack/headline.py and the alert), summed, and only when every partition of `topic` is
    on some page: one on no page (not assigned yet, a page of the wrong service) is no figure
    either, not a lag of 0, counted once per probe as "<group>: partition(s) ... on no page"
    (when every page answered; otherwise the unanswered pages are the reason).
    """
    async def read(page: str) -> Partitions | NoLag:
        try:
            return await read_lag(client, page, group)
        except NoLag as exc:
            return exc

    pages = [url + "/metrics" for url in urls]
    merged: Partitions = {}
    answered = True
    for page, got in zip(pages, await asyncio.gather(*map(read, pages)), strict=True):
        if isinstance(got, NoLag):
            answered = False
            if unanswered is not None:
                unanswered[f"{page}: {got}"] += 1
            continue
        for key, value in got.items():
            merged[key] = max(value, merged.get(key, value))
    if not answered:
        return None
    missing = [str(n) for n in range(partitions) if (topic, str(n)) not in merged]
    if missing:
        if unanswered is not None:
            unanswered[f"{group}: partition(s) {', '.join(missing)} of {topic} on no page"] += 1
        return None
    return sum(merged.values())


def auth_gap(settings: Settings) -> str | None:
    """Why a soak with these settings could only get 401s from the stack, or None.

    serving/security.py checks credentials only with `auth_enabled`, and then on every ingest
    write (one of `api_keys`: with none, no key passes) and every recommendation request (a JWT;
    the soak can sign one only with HS256's shared `jwt_secret`, not RS256's private key).
    """
    if not settings.auth_enabled:
        return None
    gaps = []
    if not settings.api_keys:
        gaps.append("RECO_API_KEYS is empty, so the ingest API would refuse every event: set it "
                    "to (one of) the stack's keys")
    if settings.jwt_algorithm != "HS256":
        gaps.append(f"RECO_JWT_ALGORITHM is {settings.jwt_algorithm}, so the recommendation API "
                    "would refuse every request (the soak signs user tokens only with HS256's "
                    "shared RECO_JWT_SECRET): soak a stack that runs RECO_JWT_ALGORITHM=HS256, "
                    "with its RECO_JWT_SECRET set here")
    if not gaps:
        return None
    return ("the shell's settings have RECO_AUTH_ENABLED=true but " + "; and ".join(gaps)
            + " (or RECO_AUTH_ENABLED=false if the stack runs without auth)")


class Credentials:
    """What the soak's requests carry to an auth-enabled stack (serving/security.py), from the
    settings of the shell running it: ingest writes the first of `api_keys` in the X-API-Key
    header; a recommendation request a JWT whose subject is the user asked about (HS256, signed
    with `jwt_secret`, with `jwt_audience` as `aud` when set), valid `valid_s` seconds from its
    first use (tokens are cached for the run: give the run's length and a margin). Nothing is
    sent without keys, or without `auth_enabled` and HS256 for the token (`auth_gap` says when
    that leaves the soak only 401s)."""

    def __init__(self, settings: Settings, valid_s: float) -> None:
        self.ingest = ({API_KEY_HEADER: settings.api_keys[0].get_secret_value()}
                       if settings.api_keys else {})
        self._secret = (settings.jwt_secret.get_secret_value()
                        if settings.auth_enabled and settings.jwt_algorithm == "HS256" else None)
        self._audience = settings.jwt_audience
        self._valid_s = valid_s
        self._headers: dict[str, dict[str, str]] = {}  # user -> headers (a token per user)

    def reco(self, user: str) -> dict[str, str]:
        if self._secret is None:
            return {}
        headers = self._headers.get(user)
        if headers is None:
            claims = {"sub": user, "exp": int(time.time() + self._valid_s),
                      **({"aud": self._audience} if self._audience else {})}
            token = jwt.encode(claims, self._secret, algorithm="HS256")
            headers = self._headers[user] = {"Authorization": f"Bearer {token}"}
        return headers


class NotMeasured(Exception):
    """A figure this run cannot take where it runs; the message says why."""


def is_local(host: str) -> bool:
    """Whether `host` names this machine (loopback or one of its interfaces' addresses)."""
    try:
        resolved = {info[4][0].split("%")[0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    mine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return any(ipaddress.ip_address(a).is_loopback or a in mine for a in resolved)


def runs_service(cmdline: list[str], service: str) -> bool:
    """`reco run <service>` however launched (the `reco` script, `python -m reco.cli`, `env`)."""
    return (any("reco" in part for part in cmdline)
            and any(cmdline[i:i + 2] == ["run", service] for i in range(len(cmdline))))


def service_process(url: str, service: str) -> psutil.Process:
    """The process of `reco run <service>` listening on `url`'s port, to read its RSS.

    NotMeasured when there is none on this machine that this user can see: a remote host, a
    port nobody here listens on, an owner hidden from this user, or another program on the port
    (a container's port proxy: the service's memory is inside the container).
    """
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    if not is_local(host):
        raise NotMeasured(f"{host} is not this machine")
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        raise NotMeasured("this user cannot list the listening sockets") from None
    pids = set()
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            pids.add(conn.pid)
    if not pids:
        raise NotMeasured(f"nothing on this machine listens on port {port}")
    others = []
    for pid in sorted(p for p in pids if p):
        try:
            proc = psutil.Process(pid)
            if runs_service(proc.cmdline(), service):
                return proc
            others.append(f"{proc.name()} (pid {pid})")
        except psutil.Error:
            continue
    if not others:
        raise NotMeasured(f"the process on port {port} is not visible to this user")
    raise NotMeasured(f"port {port} is held by {', '.join(others)}, not `reco run {service}`")


def count_archived(database_url: str, event_ids: list[str], chunk: int = 10_000) -> int:
    """How many of `event_ids` the events table holds: only this run's events are counted, so a
    table other traffic also writes (an attached stack's) is counted as exactly as its own."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=10) as conn:
        return sum(conn.execute("SELECT count(*) FROM events WHERE event_id = ANY(%s::uuid[])",
                                (event_ids[i:i + chunk],)).fetchone()[0]
                   for i in range(0, len(event_ids), chunk))


class Recorder:
    def __init__(self, start: float) -> None:
        self.start = start
        self.lat: dict[tuple[int, str], list[float]] = defaultdict(list)
        self.errors: dict[tuple[int, str], int] = defaultdict(int)
        self.statuses: dict[str, int] = defaultdict(int)
        self.lag: list[tuple[float, float | None, float | None]] = []
        self.unanswered: Counter[str] = Counter()  # lag probes without a figure, by reason
        self.acked_ids: list[str] = []  # event ids the ingest API acknowledged (202)
        self.late = 0

    @property
    def acked(self) -> int:
        return len(self.acked_ids)

    def record(self, endpoint: str, began: float, status: int | str) -> None:
        minute = int((began - self.start) // 60)
        self.statuses[f"{endpoint} {status}"] += 1
        if status in (200, 202):
            self.lat[(minute, endpoint)].append(time.perf_counter() - began)
        else:
            self.errors[(minute, endpoint)] += 1


def verdict(rec: Recorder, growth: dict[str, float | None], drained: dict,
            bound: float) -> dict[str, bool | None]:
    """Named checks: True when measured and met; False when not met, including a probe that got
    no answer or an empty set of samples (never a vacuous pass); None when this run could not
    take the figure where it runs (an attached stack's RSS or events table out of its reach).

    `growth` maps every process or copy (ingest, recommendations, processor, processor-2, ...,
    archiver, ...) to its RSS growth in %, or None if it was not measured;
    `drained["archived"]` is None when the events table could not be read.
    """
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
        "archived_equals_acked": (None if drained.get("archived") is None
                                  else drained["archived"] == rec.acked),
        "rss_growth_under_10pct": rss_check(growth),
    }


def rss_check(growth: dict[str, float | None]) -> bool | None:
    """False if a measured process grew 10% or more (or vanished: NaN); else None if any (or
    every) process was not measured; True only with every process measured and under."""
    measured = [g for g in growth.values() if g is not None]
    if not all(g < 10 for g in measured):
        return False
    return True if measured and len(measured) == len(growth) else None


def bounded(samples: list[float | None], bound: float) -> bool:
    """Every answered probe under `bound`, and at least one answered (unanswered ones fail
    their own check)."""
    answered = [v for v in samples if v is not None]
    return bool(answered) and all(v < bound for v in answered)


def status(checks: dict[str, bool | None]) -> str:
    """FAIL if any check failed; INCOMPLETE if none failed but some were not measured; PASS
    only with every check measured and met."""
    if False in checks.values():
        return "FAIL"
    return "INCOMPLETE" if None in checks.values() else "PASS"


def verdict_line(checks: dict[str, bool | None]) -> str:
    word = {True: "yes", False: "NO", None: "NOT MEASURED"}
    failed = [name for name, ok in checks.items() if ok is False]
    unmeasured = [name for name, ok in checks.items() if ok is None]
    notes = ([f"failed: {', '.join(failed)}"] if failed else []) + (
        [f"not measured: {', '.join(unmeasured)}"] if unmeasured else [])
    head = status(checks) + (f" ({'; '.join(notes)})" if notes else "")
    return (f"Verdict: {head}; "
            + ", ".join(f"{name} {word[ok]}" for name, ok in checks.items()) + ".")
