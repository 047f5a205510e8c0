"""``loyalty-cdp bench api``: the decision API and the decisioning agent on one worker.

Method: a fresh embedded stack (wall clock) with ``members`` POS card members (a card and a
recent purchase each), caught up. Then, against ``POST /v1/decisions`` on the worker's web
port over loopback (served by the worker's API process, ``streams/api_server.py``), from one
client process on the same 2-core box as the whole stack: one event loop writing
pre-encoded HTTP/1.1 requests on reused keep-alive connections and reading back only the
status and the Content-Length framing (:class:`_Client`; aiohttp's client cost ~0.5 ms of
CPU per request here, as much as the server):

* **steady**: an open loop at ``rate`` req/s for ``duration`` s: request ``i`` is due at
  ``t0 + i / rate`` whatever the earlier answers did, and its latency counts from that due
  time (no coordinated omission); one due while all :data:`MAX_INFLIGHT` connections are busy
  is shed and counted;
* **saturation**: ``concurrency`` closed-loop clients for ``duration`` s; req/s achieved.

Each phase also reports the client's own CPU (CPU seconds per second: near 1.0 would mean
the load generator, not the API, set the pace) and the API process's CPU milliseconds per
answered request, read from /proc: ``1000 / server_cpu_ms`` is what one free core would
serve, a figure that holds on a host shared with other load, where req/s and tails do not.

Requests cycle over the members (by card number), 1 in 10 an unknown email, with a 2-line
cart. Offers/s: ``events`` synthetic ``loyalty.milestone_approaching`` events (unique ids,
for the seeded members) produced at once to ``loyalty.events``; offers/s = messages
published on ``offers.*`` / seconds until the decision stage's committed offsets reach the
end. Figures only; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import psycopg
from confluent_kafka import Producer

from app.bench.cdc import _percentile, bench_state_dir, machine_info
from app.bench.hops import end_offsets
from app.domain.records import format_time
from app.stack import embedded, pipeline
from app.stack.state import StackPaths
from streams.store import Store

Say = Callable[[str], None]
OFFER_TOPICS = ("offers.email", "offers.sms", "offers.push", "offers.in_app")
#: steady phase: keep-alive connections; a request due while all are busy is shed (counted),
#: so an overloaded server ends the phase on time instead of queueing thousands of requests
MAX_INFLIGHT = 64


def _quiet(_: str) -> None:
    pass


@dataclass
class Phase:
    target_rps: float | None
    achieved_rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    shed: int = 0  # steady phase: due while every connection was busy, not sent
    client_cpu: float = 0.0  # the load generator's CPU seconds per second (1.0 = one core)
    #: the API process's CPU per answered request (ms): how many req/s one idle core would
    #: serve, whatever else the host was running (None: the process was not found)
    server_cpu_ms: float | None = None
    #: steady phase: how late the load generator itself sent (p99 of send time - due time,
    #: ms). Latency counts from the due time, so this much of the p99 can be the client's
    #: own timer and scheduling (asyncio sleeps in whole milliseconds), not the server's.
    send_late_p99_ms: float | None = None


@dataclass
class ApiBenchResult:
    members: int
    steady: Phase
    saturation: Phase
    concurrency: int
    agent_moments: int
    agent_offers: int
    agent_seconds: float
    agent_offers_per_s: float
    agent_moments_per_s: float
    machine: dict[str, Any]
    #: 1-minute load average before the steady phase and after the saturation phase: above
    #: the core count, other processes were competing with the stack for the CPU
    load_avg: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bodies(n_members: int) -> list[bytes]:
    out = []
    for i in range(max(n_members, 1)):
        ident = f"card_no:BC{i}" if i % 10 else f"email:nobody{i}@example.com"
        out.append(orjson.dumps({
            "identifier": ident, "placement": "checkout_confirmation",
            "cart": [{"sku": "COF-250", "qty": 2, "unit_price": "12.99"},
                     {"sku": "X-1", "qty": 1, "unit_price": 45}],
        }))
    return out


def _phase(
    lat: list[float], errors: int, elapsed: float, target: float | None, cpu: float, shed: int = 0
) -> Phase:
    lat.sort()
    ok = lat or [0.0]
    return Phase(
        target_rps=target, achieved_rps=round(len(lat) / elapsed, 1), requests=len(lat),
        errors=errors, p50_ms=round(_percentile(ok, 50) * 1000, 2),
        p99_ms=round(_percentile(ok, 99) * 1000, 2), max_ms=round(ok[-1] * 1000, 2),
        shed=shed, client_cpu=round(cpu / elapsed, 2),
    )


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request's bytes out, the status back once the
    whole answer has arrived (framed by Content-Length, as aiohttp's ``web.Response`` is)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None or w.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        k = head.find(b"\r\ncontent-length:")
        if k < 0:
            w.set_exception(ConnectionError("an answer without Content-Length"))
            return
        eol = head.find(b"\r\n", k + 2)
        total = end + 4 + int(head[k + 17 : eol if eol > 0 else None])
        if len(self.buf) >= total:
            del self.buf[:total]
            w.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, 10)


class _Client:
    """``POST`` of pre-encoded requests over reused keep-alive connections (one opened when
    none is idle): a few tens of microseconds of client CPU per request, so on a 2-core host
    the load generator leaves the cores to the server."""

    def __init__(self, url: str, bodies: list[bytes]) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        target = u.path + (f"?{u.query}" if u.query else "")
        head = (f"POST {target} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                "Content-Type: application/json\r\nContent-Length: ").encode()
        self.requests = [head + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
        self.idle: list[_Conn] = []

    async def open(self, n: int) -> None:
        for _ in range(n):
            self.idle.append(await self._connect())

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        return conn

    async def post(self, i: int) -> bool:
        """Request ``i`` (cycling over the bodies); True for a 200."""
        conn = None
        while self.idle and conn is None:
            conn = self.idle.pop()
            if conn.closed:
                conn = None
        try:
            conn = conn or await self._connect()
            status = await conn.send(self.requests[i % len(self.requests)])
        except (OSError, TimeoutError):  # ConnectionError is an OSError
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return False
        if not conn.closed:
            self.idle.append(conn)
        return status == 200

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


async def _steady(
    url: str, bodies: list[bytes], rate: int, duration: float, connections: int = MAX_INFLIGHT
) -> Phase:
    """Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened before, and its
    latency counts from that due time (no coordinated omission). A request due while
    ``connections`` are busy is shed and counted (the server is far behind)."""
    lat: list[float] = []
    late: list[float] = []
    errors = shed = 0
    inflight = 0
    n = int(rate * duration)
    pending: set[asyncio.Task[None]] = set()
    client = _Client(url, bodies)
    await client.open(min(connections, 8))
    cpu0 = time.process_time()
    t0 = time.perf_counter()

    async def one(i: int, due: float) -> None:
        nonlocal errors, inflight
        late.append(time.perf_counter() - due)
        try:
            ok = await client.post(i)
        finally:
            inflight -= 1
        if ok:
            lat.append(time.perf_counter() - due)
        else:
            errors += 1

    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and t0 + i / rate <= now:  # everything due by now, in order
            if inflight >= connections:
                shed += 1
            else:
                inflight += 1
                task = asyncio.create_task(one(i, t0 + i / rate))
                pending.add(task)
                task.add_done_callback(pending.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    if pending:
        await asyncio.wait(pending)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    client.close()
    phase = _phase(lat, errors, elapsed, rate, cpu, shed)
    if late:
        late.sort()
        phase.send_late_p99_ms = round(_percentile(late, 99) * 1000, 2)
    return phase


async def _saturation(url: str, bodies: list[bytes], concurrency: int, duration: float) -> Phase:
    """Closed loop: ``concurrency`` clients, each sending its next request on the answer."""
    lat: list[float] = []
    errors = 0
    client = _Client(url, bodies)
    await client.open(concurrency)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop = t0 + duration

    async def user(w: int) -> None:
        nonlocal errors
        i = w
        while time.perf_counter() < stop:
            s = time.perf_counter()
            if await client.post(i):
                lat.append(time.perf_counter() - s)
            else:
                errors += 1
            i += concurrency

    await asyncio.gather(*(user(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    client.close()
    return _phase(lat, errors, elapsed, None, cpu)


def _api_process(state_dir: Path) -> int | None:
    """Pid of the worker's API process (``streams.api_server``), from /proc."""
    wpid = StackPaths(state_dir.resolve()).process("worker").pid()
    if wpid is None:
        return None
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit():
                continue
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == wpid and b"streams.api_server" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _with_server_cpu(pid: int | None, run: Callable[[], Coroutine[Any, Any, Phase]]) -> Phase:
    before = _cpu_seconds(pid)
    phase = asyncio.run(run())
    after = _cpu_seconds(pid)
    if before is not None and after is not None and phase.requests:
        phase.server_cpu_ms = round((after - before) * 1000 / phase.requests, 3)
    return phase


def _seed(st: dict[str, Any], members: int) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(st["sources"]["pos"]) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO loyalty_cards VALUES (%s, %s, NULL, %s)",
                [(f"BC{i}", f"BM{i}", now - timedelta(days=10)) for i in range(members)],
            )
            cur.executemany(
                "INSERT INTO transactions VALUES (%s, 'S1', %s, %s, 'USD', %s)",
                [(f"BT{i}", f"BC{i}", 100 + i % 900, now - timedelta(hours=2))
                 for i in range(members)],
            )
        conn.commit()


def _offsets_total(broker: str, topics: tuple[str, ...]) -> int:
    return sum(tp.offset for t in topics for tp in end_offsets(broker, t))


def _agent_phase(st: dict[str, Any], events: int, say: Say) -> tuple[int, int, float]:
    store = Store(st["store"])
    try:
        with store.engine.connect() as conn:
            from sqlalchemy import text

            profiles = [
                (r[0], r[1]) for r in conn.execute(
                    text("SELECT profile_id, member_id FROM profiles WHERE member_id IS NOT NULL")
                )
            ]
    finally:
        store.dispose()
    if not profiles:
        return 0, 0, 0.0
    broker = st["broker"]
    before = _offsets_total(broker, OFFER_TOPICS)
    now = format_time(datetime.now(UTC))
    p = Producer({"bootstrap.servers": broker, "linger.ms": 5})
    say(f"agent: {events:,} milestone_approaching events for {len(profiles):,} members")
    t0 = time.perf_counter()
    for i in range(events):
        pid, mid = profiles[i % len(profiles)]
        ev = {
            "specversion": "1.0", "id": uuid.uuid4().hex, "source": "loyalty-cdp/loyalty",
            "type": "loyalty.milestone_approaching", "subject": mid, "time": now,
            "datacontenttype": "application/json",
            "data": {"member_id": mid, "profile_id": pid, "effective_at": now,
                     "cause_record_id": f"bench:{i}", "points_balance": 960,
                     "milestone": 1000, "gap_points": 40},
        }
        p.produce("loyalty.events", orjson.dumps(ev), mid.encode())
        p.poll(0)
    p.flush(60)
    pipeline.wait_stages(broker, [("decisions", ["loyalty.events"])], time.monotonic() + 900)
    elapsed = time.perf_counter() - t0
    return events, _offsets_total(broker, OFFER_TOPICS) - before, elapsed


def run_api_bench(
    state_dir: Path | None,
    *,
    members: int = 500,
    rate: int = 500,
    duration: float = 10.0,
    concurrency: int = 32,
    events: int = 5000,
    say: Say = _quiet,
) -> ApiBenchResult:
    with bench_state_dir(state_dir) as sd:
        try:
            say(f"starting a fresh stack in {sd}")
            st = embedded.up(sd, say=say)
            say(f"seeding {members} card members with a purchase each")
            _seed(st, members)
            pipeline.wait_caught_up(sd, timeout=600)
            url = st["api"] + "/v1/decisions"
            bodies = _bodies(members)
            say("warm-up")
            asyncio.run(_saturation(url, bodies, 4, 2.0))
            say(f"steady: {rate} req/s for {duration:.0f} s")
            api_pid = _api_process(sd)
            load_before = os.getloadavg()[0]
            steady = _with_server_cpu(api_pid, lambda: _steady(url, bodies, rate, duration))
            say(f"saturation: {concurrency} clients for {duration:.0f} s")
            sat = _with_server_cpu(
                api_pid, lambda: _saturation(url, bodies, concurrency, duration)
            )
            load_after = os.getloadavg()[0]
            moments, offers, secs = _agent_phase(st, events, say)
            return ApiBenchResult(
                members=members, steady=steady, saturation=sat, concurrency=concurrency,
                agent_moments=moments, agent_offers=offers, agent_seconds=round(secs, 2),
                agent_offers_per_s=round(offers / secs, 1) if secs else 0.0,
                agent_moments_per_s=round(moments / secs, 1) if secs else 0.0,
                machine=machine_info(), load_avg=(load_before, load_after),
            )
        finally:
            embedded.down(sd, drain_timeout=10)


def format_table(r: ApiBenchResult) -> str:
    lines = [f"{'phase':16} {'target':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'max ms':>7} {'errors':>6} {'shed':>5} {'client cpu':>10} "
             f"{'server ms cpu/req':>17}"]
    for name, ph in (("steady", r.steady), (f"saturation({r.concurrency})", r.saturation)):
        tgt = "-" if ph.target_rps is None else f"{ph.target_rps:.0f}"
        lines.append(f"{name:16} {tgt:>7} {ph.achieved_rps:>8} {ph.p50_ms:>7} {ph.p99_ms:>7} "
                     f"{ph.max_ms:>7} {ph.errors:>6} {ph.shed:>5} {ph.client_cpu:>10} "
                     f"{ph.server_cpu_ms if ph.server_cpu_ms is not None else '-':>17}")
    if r.steady.send_late_p99_ms is not None:
        lines.append(f"steady: the load generator sent {r.steady.send_late_p99_ms} ms late"
                     " or less (p99; included in the latency, which counts from due times)")
    lines.append(f"load average (1 min) before/after the API phases: "
                 f"{r.load_avg[0]:.1f} / {r.load_avg[1]:.1f} on {r.machine['cpus']} cores")
    lines.append(
        f"agent: {r.agent_moments:,} moments -> {r.agent_offers:,} offers in "
        f"{r.agent_seconds} s = {r.agent_offers_per_s} offers/s "
        f"({r.agent_moments_per_s} moments/s)"
    )
    return "\n".join(lines)
