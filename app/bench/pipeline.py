"""``loyalty-cdp bench pipeline``: the stream topology measured on a fresh embedded stack.

Figures (nothing here is pass/fail):

* ``events_per_s``: synthetic canonical events (enrollments and purchases of ``members``
  members) produced to ``cdp.ingest`` (the topic for canonical events published directly;
  the worker validates them, publishes them on ``cdp.events`` and resolves their identity),
  divided by the time until the canonical and profile stages have committed past all of
  them: every profile written to the store, every loyalty event published and acknowledged
  (the issue's definition: in to profile and loyalty events out). The decisioning stage
  runs at the same time on the same worker. (Until session 9 the events went to
  ``cdp.events``, which the identity stage consumed.)
* ``events_per_s_with_offers``: the same, until the decisioning stage has also decided every
  loyalty event; ``stage_done_s`` says when each stage caught up (seconds from the first
  event produced).
* ``bare_loop_events_per_s``: a bare confluent-kafka consume-then-produce loop over the same
  messages on the same broker in the same run (the Python + broker limit); ``ratio`` is the
  first over the second.
* ``p50_ms`` / ``p99_ms``: source commit (a POS transaction of an enrolled card) to its
  ``loyalty.points_earned`` event on ``loyalty.events``, at a steady ``rate`` rows/s, after
  ``warmup`` seconds of the same traffic that are not measured;
  ``latency_hops_ms`` the same per hop (change topic, ``cdp.events``, ``cdp.resolved``,
  ``loyalty.events``; ``app/bench/hops.py``).
* ``cpu_ms_per_event``: CPU milliseconds per event of each process role (worker, its
  decisioning and API children, PostgreSQL, broker, CDC runner) from the first event
  produced until the profiles stage caught up, and ``cpu_ms_per_event_with_offers`` until
  decisioning caught up (``app/bench/cpu.py``): far less noisy than the rates on a shared
  host, and it says where the time goes.
* ``wal_bytes_per_event`` / ``wal_records_per_event``: the write-ahead log the PostgreSQL
  server wrote over the throughput phase (to decisions caught up) per canonical event: the
  bytes exactly (the WAL insert position), the records as ``pg_stat_wal`` has them (each
  backend reports at most once a second). Whole-server figures: in that phase nearly all of
  it is the store's writes (the sources are idle), with autovacuum. Steadier than any rate
  on a shared host; in the embedded stack every logical-decoding WAL sender of the source
  databases reads all of it too.
* ``rss_bytes_per_member``: growth of the resident memory of the worker and its profile
  process (the stages) over the throughput phase divided by the members it added (state
  cache, graph, Python overhead included).
  Most of it is the high-water mark of the stages' batches, which does not depend on the
  member count (docs/benchmarks-history.md, session 3), so also:
* ``rss_bytes_per_added_member``: the growth over a second burst of the same size for as
  many new members, per member: what a further member costs once the batches' working set
  is in place (at this size every member is still a hot state).
* ``rss_bytes_per_member_at_scale``: what a further member costs once the per-member caches
  are full, from a second stack with small caches and ``scale_bursts`` bursts of new
  members (``app/bench/memory.py``); ``rss_at_scale_mb`` the stages' memory after each.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from app.bench.cdc import ArrivalRecorder, _percentile, bench_state_dir, machine_info
from app.bench.cpu import cores, cpu_by_role, per_event_ms
from app.bench.hops import end_offsets, hop_latencies, read_since
from app.bench.memory import SCALE_CACHES, least_squares_slope, scale_caches, stage_rss
from app.cdc.connectors import change_topics
from app.stack import embedded, postgres
from app.stack.errors import StackError
from app.stack.pipeline import STAGES, wait_stages
from app.stack.state import StackPaths
from streams.topics import INGEST

Say = Callable[[str], None]
BARE_TOPIC = "bench.bare"


def _quiet(_: str) -> None:
    pass


@dataclass
class PipelineBenchResult:
    machine: dict[str, Any]
    events: int
    members: int
    events_per_s: float
    events_per_s_with_offers: float
    stage_done_s: dict[str, float]
    bare_loop_events_per_s: float
    ratio: float
    loyalty_events_out: int
    latency_rate: int
    latency_rows: int
    latency_received: int
    p50_ms: float | None
    p99_ms: float | None
    rss_bytes_per_member: float
    #: the worker's RSS growth over a second burst of the same size for as many *new*
    #: members, per member: the first burst has already grown the process by the batches'
    #: working set (which it keeps, and which does not depend on the member count), so this
    #: is what each further member costs (None: not measured)
    rss_bytes_per_added_member: float | None = None
    #: bytes per further member once the caches are full (app/bench/memory.py; None: not
    #: measured) and the stages' resident MB after each of its bursts
    rss_bytes_per_member_at_scale: float | None = None
    rss_at_scale_mb: list[float] = field(default_factory=list)
    states_dropped_at_scale: int | None = None
    #: WAL written per canonical event over the throughput phase (None: not measured)
    wal_bytes_per_event: float | None = None
    wal_records_per_event: float | None = None
    #: CPU ms per event by process role, to profiles caught up / to decisions caught up
    cpu_ms_per_event: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_event_with_offers: dict[str, float] = field(default_factory=dict)
    #: the latency phase per hop (app/bench/hops.py): hop -> p50/p99 ms and rows
    latency_hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the latency phase per stage, from the worker's ``/healthz`` counters: batches, and
    #: messages and busy milliseconds per batch (how the stages batched at that rate)
    latency_batches: dict[str, dict[str, float]] = field(default_factory=dict)
    #: CPU ms per row by process role over the latency phase (writing, the 20 s wait for
    #: the last rows included; decisioning runs then too)
    latency_cpu_ms_per_row: dict[str, float] = field(default_factory=dict)
    #: cores kept busy by each process role while the latency rows were written (session
    #: 10): the stack's demand at that rate, or the host's limit when it is short of it
    latency_cores_while_writing: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cloudevent(type_: str, rid: str, at: str, data: dict[str, Any]) -> bytes:
    body = {
        "record_id": rid,
        "source": "bench",
        "table": "events",
        "pk": rid,
        "occurred_at": at,
        **data,
    }
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": uuid.uuid5(uuid.NAMESPACE_URL, rid).hex,
            "source": "loyalty-cdp/bench",
            "type": type_,
            "subject": rid,
            "time": at,
            "datacontenttype": "application/json",
            "data": body,
        }
    )


def synthetic_events(members: int, events: int, tag: str) -> list[tuple[bytes, bytes]]:
    """One enrollment per member, then purchases round-robin, in event-time order."""
    out: list[tuple[bytes, bytes]] = []
    for m in range(members):
        no = f"B{tag}-{m:07d}"
        out.append(
            (
                no.encode(),
                _cloudevent(
                    "cdp.member.enrolled",
                    f"bench.enroll:{no}@member.enrolled",
                    "2026-01-01T00:00:00.000000Z",
                    {"member_no": no, "identifiers": [{"type": "member_no", "value": no}]},
                ),
            )
        )
    for i in range(max(0, events - members)):
        no = f"B{tag}-{i % members:07d}"
        day, sec = divmod(i // members, 86_400)
        clock = f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
        at = f"2026-02-{1 + day % 27:02d}T{clock}.{i % 1_000_000:06d}Z"
        out.append(
            (
                no.encode(),
                _cloudevent(
                    "cdp.purchase.completed",
                    f"bench.purchase:{tag}-{i}@purchase.completed",
                    at,
                    {
                        "purchase_id": f"bench:{tag}:{i}",
                        "amount_cents": 1_000 + (i * 37) % 20_000,
                        "currency": "USD",
                        "identifiers": [{"type": "member_no", "value": no}],
                    },
                ),
            )
        )
    return out


def _produce(broker: str, msgs: list[tuple[bytes, bytes]]) -> None:
    """Write ``msgs`` to ``cdp.ingest`` as fast as the client can, and wait for the acks."""
    p = Producer({"bootstrap.servers": broker, "linger.ms": 5})
    for key, value in msgs:
        p.produce(INGEST, value, key)
        p.poll(0)
    p.flush(60)
    p.close()


def _stage_counts(st: dict[str, Any]) -> dict[str, Any]:
    """The worker's stage counters (``/healthz``); empty when it does not answer."""
    try:
        return dict(httpx.get(f"{st['api']}/healthz", timeout=5).json())
    except (httpx.HTTPError, ValueError):
        return {}


def stage_batches(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per stage between two ``/healthz`` readings: batches, messages and busy ms per batch."""
    out: dict[str, dict[str, float]] = {}
    for stage, msgs in (("identity", "in"), ("profiles", "notes")):
        a, b = before.get(stage) or {}, after.get(stage) or {}
        n = b.get("batches", 0) - a.get("batches", 0)
        if n > 0:
            out[stage] = {
                "batches": n,
                "messages_per_batch": round((b[msgs] - a[msgs]) / n, 1),
                "busy_ms_per_batch": round((b["busy_ms"] - a["busy_ms"]) / n, 1),
            }
            for extra in ("records_read", "reloads", "gc_ms", "gc_full"):  # the profile stage's
                if extra in b:
                    out[stage][extra] = b[extra] - a.get(extra, 0)
    a, b = before.get("worker_gc") or {}, after.get("worker_gc") or {}
    if b:  # the worker process's own garbage collector (canonical, identity, Faust)
        out["worker_gc"] = {k: v - a.get(k, 0) for k, v in b.items()}
    return out


def _wal(store: str) -> tuple[int, int] | None:
    """The server's WAL insert position in bytes and the WAL records ``pg_stat_wal`` has
    counted so far (PostgreSQL 14+)."""
    try:
        with psycopg.connect(store, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint,"
                " wal_records FROM pg_stat_wal"
            ).fetchone()
    except psycopg.Error:
        return None
    return (int(row[0]), int(row[1])) if row is not None else None


def bare_loop(broker: str, start: list[TopicPartition], count: int) -> float:
    """Consume ``count`` messages from ``start`` (the pipeline's input, ``cdp.ingest``) and
    produce each: msgs/s."""
    AdminClient({"bootstrap.servers": broker}).create_topics([NewTopic(BARE_TOPIC, 8, 1)])
    time.sleep(0.5)
    c = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"bench-bare-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    p = Producer({"bootstrap.servers": broker, "linger.ms": 2, "batch.num.messages": 10000})
    c.assign(start)
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + 300
    while n < count and time.perf_counter() < deadline:
        for m in c.consume(5000, 0.2):
            if m.error() is None:
                while True:
                    try:
                        p.produce(BARE_TOPIC, m.value(), m.key())
                        break
                    except BufferError:
                        p.poll(0.01)
                n += 1
        p.poll(0)
    p.flush(60)
    elapsed = time.perf_counter() - t0
    c.close()
    p.close()
    return n / elapsed


class _EarnedRecorder(ArrivalRecorder):
    """Arrival time of each ``points_earned`` event, indexed by its causing record id."""

    def _run(self) -> None:
        clock = time.perf_counter
        while not self._stop.is_set():
            msgs = self._consumer.consume(10_000, 0.05)
            now = clock()
            for m in msgs:
                if m.error() is None and b"points_earned" in m.value():
                    cause = orjson.loads(m.value())["data"]["cause_record_id"].encode()
                    self.arrivals.setdefault(cause, now)


def _roots(sd: Path) -> dict[str, int | None]:
    """The pids whose process trees make up the stack (for :func:`cpu_by_role`)."""
    paths = StackPaths(sd.resolve())
    pg = postgres.status(paths.postgres_dir)
    return {
        "worker": paths.process("worker").pid(),
        "postgres": pg.pid if pg is not None else None,
        "broker": paths.process("broker").pid(),
        "cdc": paths.process("cdc").pid(),
    }


def measure_latency(
    st: dict[str, Any],
    rate: int,
    duration: float,
    tag: str,
    change_topic: str,
    roots: dict[str, int | None] | None = None,
) -> tuple[int, int, list[float], dict[str, dict[str, float]], dict[str, float]]:
    """Enrolled-card POS transactions at ``rate``/s; commit -> points_earned latency (ms),
    the same per hop (``app/bench/hops.py``; ``change_topic``: the rows' change topic), and
    with ``roots`` the cores each role kept busy while the rows were written."""
    dsn = st["sources"]["pos"]
    broker = st["broker"]
    cards = 200
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO loyalty_cards (card_no, member_no, phone, issued_at)"
            " SELECT 'LC' || %s || g, 'LM' || %s || g, NULL, '2026-01-01T00:00:00Z'"
            " FROM generate_series(1, %s) g",
            (tag, tag, cards),
        )
    time.sleep(3)
    total = int(rate * duration)
    per_txn = max(1, rate // 100)
    interval = per_txn / rate
    ids = [f"LT{tag}-{i:07d}" for i in range(total)]
    commits: dict[bytes, float] = {}
    walls: dict[str, float] = {}  # txn id -> commit time on the clock of message timestamps
    topics = (change_topic, "cdp.events", "cdp.resolved", "loyalty.events")
    starts = {t: end_offsets(broker, t) for t in topics}
    with _EarnedRecorder(broker, "loyalty.events") as rec, psycopg.connect(dsn) as conn:
        cpu0 = cpu_by_role(roots) if roots else {}
        start = time.perf_counter()
        for n, i in enumerate(range(0, total, per_txn)):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            batch = ids[i : i + per_txn]
            conn.execute(
                "INSERT INTO transactions (txn_id, store_id, card_no, total, currency, occurred_at)"
                " SELECT t, 'S1', 'LC' || %s || (1 + abs(hashtext(t)) %% %s), 25.00, 'USD', now()"
                " FROM unnest(%s::text[]) t",
                (tag, cards, batch),
            )
            conn.commit()
            now, wall = time.perf_counter(), time.time()
            for t in batch:
                commits[f"pos.transactions:{t}@purchase.completed".encode()] = now
                walls[t] = wall
        busy = cores(cpu0, cpu_by_role(roots), time.perf_counter() - start) if roots else {}
        keys = list(commits)
        received = rec.wait_for(keys, idle_timeout=20)
        lat = sorted((rec.arrivals[k] - commits[k]) * 1000 for k in keys if k in rec.arrivals)
    return total, received, lat, _hops(broker, starts, walls, topics), busy


def _txn(record_id: str) -> str:
    """``pos.transactions:<txn id>@purchase.completed`` -> the txn id."""
    return record_id.partition(":")[2].partition("@")[0]


def _hops(
    broker: str,
    starts: dict[str, list[TopicPartition]],
    walls: dict[str, float],
    topics: tuple[str, str, str, str],
) -> dict[str, dict[str, float]]:
    """The latency rows' timestamps on each topic since ``starts`` -> :func:`hop_latencies`."""
    change_topic, canonical_topic, resolved_topic, loyalty_topic = topics
    change: dict[str, float] = {}
    for at, value in read_since(broker, starts[change_topic]):
        doc = orjson.loads(value) if value else None
        after = ((doc.get("payload") or doc).get("after") or {}) if doc else {}
        if after.get("txn_id") in walls:
            change.setdefault(after["txn_id"], at)
    canonical: dict[str, float] = {}
    for at, value in read_since(broker, starts[canonical_topic]):
        rid = str((orjson.loads(value or b"{}").get("data") or {}).get("record_id", ""))
        if rid.startswith("pos.transactions:") and _txn(rid) in walls:
            canonical.setdefault(_txn(rid), at)
    notes: dict[str, list[float]] = {}
    for at, value in read_since(broker, starts[resolved_topic]):
        note = orjson.loads(value or b"{}")
        if "p" in note:
            notes.setdefault(note["p"], []).append(at)
    for times in notes.values():
        times.sort()
    earned: dict[str, tuple[float, str]] = {}
    for at, value in read_since(broker, starts[loyalty_topic]):
        if value and b"points_earned" in value:
            data = orjson.loads(value)["data"]
            if _txn(data["cause_record_id"]) in walls:
                earned.setdefault(_txn(data["cause_record_id"]), (at, data["profile_id"]))
    return hop_latencies(walls, change, canonical, notes, earned)


def run_pipeline_bench(
    state_dir: Path | None = None,
    *,
    members: int = 2_000,
    events: int = 20_000,
    rate: int = 1_000,
    duration: float = 10.0,
    warmup: float = 5.0,
    scale_bursts: int = 6,
    say: Say = _quiet,
) -> PipelineBenchResult:
    result = _run(state_dir, members, events, rate, duration, warmup, say)
    if scale_bursts > 0:
        slope, points, dropped = memory_at_scale(members, scale_bursts, say)
        result.rss_bytes_per_member_at_scale = round(slope, 1)
        result.rss_at_scale_mb = [round(mb, 1) for mb in points]
        result.states_dropped_at_scale = dropped
    return result


def memory_at_scale(
    members: int, bursts: int, say: Say = _quiet
) -> tuple[float, list[float], int]:
    """Bytes per member once the caches are full, the stages' MB after each burst, and how
    many member states the profile stage dropped (read back from the store when needed).

    A fresh stack with the small caches of :data:`SCALE_CACHES`; one burst of ``members``
    new members (an enrollment and 4 purchases each) fills the caches, then ``bursts`` more;
    the slope of the stages' resident memory over those (module doc of app/bench/memory.py).
    """
    with bench_state_dir(None) as sd, scale_caches():
        caches = ", ".join(f"{k.removeprefix('LOYALTY_CDP_')}={v}" for k, v in SCALE_CACHES.items())
        say(f"memory at scale: a second stack ({caches}), {bursts + 1} bursts of"
            f" {members:,} new members")
        st = embedded.up(sd, clock="manual", say=_quiet)
        try:
            pid = StackPaths(sd.resolve()).process("worker").pid()
            wanted = ("canonical", "profiles")
            stages = [s for s in STAGES(embedded._connectors()) if s[0] in wanted]
            points: list[tuple[float, float]] = []
            for b in range(bursts + 1):
                tag = f"s{b}{uuid.uuid4().hex[:5]}"
                _produce(st["broker"], synthetic_events(members, 5 * members, tag))
                wait_stages(st["broker"], stages, time.monotonic() + 1800, _quiet)
                if b:  # the first burst filled the caches
                    points.append((b * members, stage_rss(pid)))
            mb = [y / 2**20 for _, y in points]
            dropped = int((_stage_counts(st).get("profiles") or {}).get("states_dropped", 0))
            return least_squares_slope(points), mb, dropped
        finally:
            with contextlib.suppress(StackError):
                embedded.down(sd, drain_timeout=10)


def _run(
    state_dir: Path | None,
    members: int,
    events: int,
    rate: int,
    duration: float,
    warmup: float,
    say: Say,
) -> PipelineBenchResult:
    tag = uuid.uuid4().hex[:6]
    notes: list[str] = []
    with bench_state_dir(state_dir) as sd:
        try:
            say(f"starting a fresh stack in {sd} (manual clock)")
            st = embedded.up(sd, clock="manual", say=say)
            pid = StackPaths(sd.resolve()).process("worker").pid()
            specs = embedded._connectors()
            stages = STAGES(specs)
            msgs = synthetic_events(members, events, tag)
            start = end_offsets(st["broker"], INGEST)
            out_before = sum(tp.offset for tp in end_offsets(st["broker"], "loyalty.events"))
            rss0 = stage_rss(pid)
            roots = _roots(sd)
            cpu: dict[str, dict[str, float]] = {}

            def cpu_mark(stage: str) -> None:
                cpu[stage] = cpu_by_role(roots)

            say(f"throughput: {len(msgs):,} canonical events for {members:,} members")
            cpu_mark("start")
            wal0 = _wal(st["store"])
            t0 = time.perf_counter()
            _produce(st["broker"], msgs)
            produced = time.perf_counter() - t0
            phases = wait_stages(
                st["broker"], stages, time.monotonic() + 1800, say, on_stage=cpu_mark
            )
            elapsed = time.perf_counter() - t0
            wal1 = _wal(st["store"])
            wal = (wal1[0] - wal0[0], wal1[1] - wal0[1]) if wal0 and wal1 else None
            rss1 = stage_rss(pid)
            # wait_stages takes the stages in order, each from when the previous caught up
            done_at, stage_s = produced, {}
            for name, secs in phases.items():
                done_at += secs
                stage_s[name] = round(done_at, 2)
            to_profiles = stage_s.get("profiles", elapsed)
            out_after = sum(tp.offset for tp in end_offsets(st["broker"], "loyalty.events"))
            eps = len(msgs) / to_profiles
            say(
                f"throughput: {eps:,.0f} events/s to profiles and loyalty events"
                f" ({len(msgs) / elapsed:,.0f}/s with offers); bare loop over the same messages"
            )
            bare = bare_loop(st["broker"], start, len(msgs))
            say(f"memory: a second burst of {len(msgs):,} events for {members:,} new members")
            rss2 = stage_rss(pid)
            _produce(st["broker"], synthetic_events(members, events, tag + "m"))
            wait_stages(st["broker"], stages, time.monotonic() + 1800, say)
            added = max(0, stage_rss(pid) - rss2) / members
            txns = next(t for t in change_topics(specs) if t.endswith(".transactions"))
            if warmup > 0:
                # The CDC runner has been idle so far (the throughput phase writes to
                # cdp.ingest directly): its JVM would compile Debezium's hot paths during
                # the measured rows. A deployment's engine is warm.
                say(f"warm-up at {rate:,} rows/s for {warmup:.0f}s (not measured)")
                measure_latency(st, rate, warmup, tag + "w", txns)
            say(f"latency at {rate:,} rows/s for {duration:.0f}s")
            before, cpu_before = _stage_counts(st), cpu_by_role(roots)
            total, received, lat, hops, busy = measure_latency(
                st, rate, duration, tag, txns, roots
            )
            batches = stage_batches(before, _stage_counts(st))
            latency_cpu = per_event_ms(cpu_before, cpu_by_role(roots), total)
            if received < total:
                notes.append(f"only {received}/{total} latency rows produced an event in time")
            return PipelineBenchResult(
                machine=machine_info(),
                events=len(msgs),
                members=members,
                events_per_s=round(eps, 1),
                events_per_s_with_offers=round(len(msgs) / elapsed, 1),
                stage_done_s=stage_s,
                bare_loop_events_per_s=round(bare, 1),
                ratio=round(eps / bare, 4) if bare else 0.0,
                loyalty_events_out=out_after - out_before,
                latency_rate=rate,
                latency_rows=total,
                latency_received=received,
                p50_ms=round(_percentile(lat, 50), 1) if lat else None,
                p99_ms=round(_percentile(lat, 99), 1) if lat else None,
                latency_hops_ms=hops,
                latency_batches=batches,
                latency_cpu_ms_per_row=latency_cpu,
                latency_cores_while_writing=busy,
                wal_bytes_per_event=round(wal[0] / len(msgs), 1) if wal else None,
                wal_records_per_event=round(wal[1] / len(msgs), 2) if wal else None,
                rss_bytes_per_member=round(max(0, rss1 - rss0) / members, 1),
                rss_bytes_per_added_member=round(added, 1),
                cpu_ms_per_event=per_event_ms(cpu["start"], cpu.get("profiles", {}), len(msgs)),
                cpu_ms_per_event_with_offers=per_event_ms(
                    cpu["start"], cpu.get("decisions", {}), len(msgs)
                ),
                notes=notes,
            )
        finally:
            say("tearing the stack down")
            with contextlib.suppress(StackError):
                embedded.down(sd, drain_timeout=10)
