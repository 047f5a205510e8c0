"""Benchmark of the domain core: figures, never pass/fail.

* records/s applied in time order on one core (member states only, and with identity);
  events are built lazily, so also once with every event's id and data read, as the
  profile stage does;
* cost of one late record in a cluster of 1,000 records (the refold);
* records/s in time order as the median of ``runs`` runs;
* bytes of memory per member state of a typical member (about 50 purchases), measured with
  tracemalloc over many members: hot (records + live fold) and cold (``compact()``: only
  the stored form), the CPU cost of compacting and restoring one, and the stored sizes
  (format 2 of ``to_bytes()``, and the readable format 1 of ``to_dict()`` for comparison);
* bytes of the identity graph per typical member, with every purchase node and with them
  forgotten (``IdentityGraph.forget_purchases``, as the identity stage does at scale).

The domain never reads a clock: the caller passes ``timer``. The CLI passes
``time.process_time`` (CPU seconds of this single-threaded process = "one core"), so the
figures do not depend on what else the machine runs; wall time on a busy host is worse.
"""

from __future__ import annotations

import random
import statistics
import tracemalloc
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.domain.identity import IdentityGraph
from app.domain.profiles import Profiles
from app.domain.program import DEFAULT_PROGRAM, CompiledProgram
from app.domain.records import (
    ConsentChanged,
    Identifier,
    MemberEnrolled,
    PointsRedeemed,
    PurchaseCompleted,
    PurchaseRefunded,
    Record,
)
from app.domain.state import MemberState

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def member_history(rng: random.Random, n: int, purchases: int = 50) -> list[Record]:
    """A typical member: enrolled, consent, ~``purchases`` purchases over two years, a few
    refunds and redemptions. Record ids look like the CDC mapping's."""
    mno = str(100000 + n)
    who = (Identifier("customer_id", f"c{n}"), Identifier("member_no", mno))
    out: list[Record] = [
        MemberEnrolled(f"web.loyalty_enrollments:{mno}", "web", "loyalty_enrollments", mno,
                       T0, who, mno),
        ConsentChanged(f"web.customers:c{n}#0", "web", "customers", f"c{n}", T0, who,
                       (("email_opt_in", True), ("sms_consent", False))),
    ]
    t = T0
    for k in range(purchases):
        t += timedelta(days=rng.randint(1, 28), seconds=rng.randint(0, 86399))
        pid = f"{n}-{k}"
        amount = rng.randint(500, 40_000)
        out.append(PurchaseCompleted(f"pos.transactions:{pid}", "pos", "transactions", pid, t,
                                     who, f"pos:{pid}", amount, "USD"))
        if rng.random() < 0.05:
            out.append(PurchaseRefunded(f"pos.returns:{pid}", "pos", "returns", pid,
                                        t + timedelta(days=3), (), pid, f"pos:{pid}",
                                        rng.randint(1, amount)))
        if rng.random() < 0.05:
            out.append(PointsRedeemed(f"app.redemptions:{pid}", "app", "redemptions", pid,
                                      t + timedelta(hours=1), who, pid, 500, None))
    return out


def _in_order_rate(
    program: CompiledProgram,
    members: int,
    timer: Callable[[], float],
    with_identity: bool,
    read_events: bool = False,
) -> tuple[int, float]:
    """Records applied in time order and the CPU seconds it took. Events are built lazily
    (id and data on first read); ``read_events`` reads every event's id and data, as the
    profile stage does before publishing them."""
    rng = random.Random(7)
    records = sorted(
        (r for n in range(members) for r in member_history(rng, n)), key=lambda r: r.sort_key()
    )
    start = timer()
    if with_identity:
        profiles = Profiles(program)
        for r in records:
            profiles.ingest(r)
    else:
        states: dict[str, MemberState] = {}
        for r in records:
            key = r.identifiers[0].value if r.identifiers else "c" + r.pk.split("-")[0]
            s = states.get(key)
            if s is None:
                s = states[key] = MemberState(program, key)
            events = s.add(r)
            if read_events:
                for e in events:
                    e.id, e.data  # noqa: B018 (made on first read)
    return len(records), timer() - start


def _late_record_ms(program: CompiledProgram, timer: Callable[[], float], repeats: int) -> float:
    rng = random.Random(11)
    history = member_history(rng, 1, purchases=960)[:1000]
    blob = MemberState(program, "member:1")
    blob.add_many(history)
    stored = blob.to_bytes()
    who = history[0].identifiers
    costs = []
    for i in range(repeats):
        state = MemberState.from_bytes(program, stored)
        late_at = history[len(history) // 2].occurred_at + timedelta(seconds=i + 1)
        late = PurchaseCompleted(f"pos.transactions:late{i}", "pos", "transactions", f"late{i}",
                                 late_at, who, f"pos:late{i}", 12_345, "USD")
        start = timer()
        state.add(late)
        costs.append(timer() - start)
    return statistics.median(costs) * 1000


def _bytes_per_member(
    program: CompiledProgram, members: int, timer: Callable[[], float]
) -> dict[str, float]:
    """Memory of typical members (tracemalloc): hot (records + live fold), the derived fold
    alone, cold (after ``compact()``: stored form + a small shell); stored sizes; the CPU
    cost of compacting and restoring one member."""
    # the same members once untraced first: the process-wide spelling caches of event ids
    # (events.spell_time, bounded, shared by all members) are then warm, as in a worker
    warm = random.Random(3)
    for n in range(members):
        MemberState(program, f"member:{n}").add_many(member_history(warm, n))
    rng = random.Random(3)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    states = []
    for n in range(members):
        s = MemberState(program, f"member:{n}")
        s.add_many(member_history(rng, n))
        states.append(s)
    hot = (tracemalloc.get_traced_memory()[0] - base) / members
    tracemalloc.stop()
    histories = [s.records for s in states]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    folds = [s.refold(collect=False) for s in states]
    derived = (tracemalloc.get_traced_memory()[0] - base) / members
    tracemalloc.stop()
    del folds
    stored_v1 = statistics.mean(len(orjson.dumps(s.to_dict())) for s in states)
    stored_v1_zlib = statistics.mean(len(zlib.compress(orjson.dumps(s.to_dict()), 6))
                                     for s in states)
    stored = statistics.mean(len(s.to_bytes(compress=False)) for s in states)
    start = timer()
    compressed = statistics.mean(s.compact() for s in states)
    compact_us = (timer() - start) / members * 1e6
    del histories
    # what a process holds for cold members: rebuild them cold under tracemalloc
    blobs = [s.to_bytes() for s in states]
    del states
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cold = []
    for blob in blobs:
        s = MemberState.from_bytes(program, blob)
        s.compact()
        cold.append(s)
    cold_bytes = (tracemalloc.get_traced_memory()[0] - base) / members
    tracemalloc.stop()
    costs = []
    for s in cold:
        start = timer()
        s.thaw()
        costs.append(timer() - start)
    return {
        "hot": hot, "derived": derived, "cold": cold_bytes, "stored": stored,
        "compressed": compressed, "stored_v1": stored_v1, "stored_v1_zlib": stored_v1_zlib,
        "compact_us": compact_us, "thaw_us": statistics.median(costs) * 1e6,
    }


def _graph_bytes_per_member(program: CompiledProgram, members: int) -> tuple[float, float]:
    """Identity-graph memory of typical members (tracemalloc): with every purchase node, and
    with :meth:`IdentityGraph.forget_purchases` called every 1,000 records, as the identity
    stage does after each batch (what it keeps at scale); a forgotten purchase is taught
    back from its stored record before its refund, as the stage does."""
    rng = random.Random(5)
    records = sorted(
        (r for n in range(members) for r in member_history(rng, n)), key=lambda r: r.sort_key()
    )
    # the store's purchase records, for a forgotten purchase (built before measuring)
    stored = {r.purchase_id: r for r in records if isinstance(r, PurchaseCompleted)}
    sizes = []
    # as the identity stage does after each batch (smaller steps for a small sample)
    for forget_every in (0, max(1, min(1000, len(records) // 20))):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        graph = IdentityGraph(program)
        for n, r in enumerate(records, 1):
            if isinstance(r, PurchaseRefunded) and not graph.purchase_known(r.purchase_id):
                graph.add(stored[r.purchase_id])  # what the stage reads back from the store
            graph.add(r)
            if forget_every and n % forget_every == 0:
                graph.forget_purchases(0)
        graph.forget_purchases(0 if forget_every else len(records))
        sizes.append((tracemalloc.get_traced_memory()[0] - base) / members)
        tracemalloc.stop()
        del graph
    return sizes[0], sizes[1]


def _calibration_us(timer: Callable[[], float]) -> float:
    """Median µs of ``sum(range(1000))`` over 500 runs: how fast this host runs Python
    right now. An idle 2020s desktop core takes about 8-15 µs; on a busy host, scale the
    figures by the ratio."""
    runs = []
    for _ in range(500):
        start = timer()
        sum(range(1000))
        runs.append(timer() - start)
    return statistics.median(runs) * 1e6


def run_domain_bench(
    records: int = 200_000,
    timer: Callable[[], float] | None = None,
    memory_members: int = 1000,
    late_repeats: int = 15,
    runs: int = 3,
) -> dict[str, Any]:
    """All figures as a JSON-able dict."""
    if timer is None:
        raise ValueError("pass a timer (e.g. time.perf_counter): the domain reads no clock")
    program = DEFAULT_PROGRAM.compile()
    per_member = len(member_history(random.Random(7), 0))
    members = max(1, records // per_member)
    rates = []
    for _ in range(runs):
        n, secs = _in_order_rate(program, members, timer, with_identity=False)
        rates.append(n / secs)
    n_ev, secs_ev = _in_order_rate(program, members, timer, False, read_events=True)
    n_id, secs_id = _in_order_rate(program, max(1, members // 4), timer, with_identity=True)
    mem = _bytes_per_member(program, memory_members, timer)
    late_ms = _late_record_ms(program, timer, late_repeats)
    graph_full, graph_lean = _graph_bytes_per_member(program, memory_members)
    return {
        "calibration_sum_range_1000_us": round(_calibration_us(timer), 1),
        "in_order_records": n,
        "in_order_runs": runs,
        "in_order_records_per_cpu_s": round(statistics.median(rates)),
        "in_order_records_per_cpu_s_runs": "/".join(str(round(r)) for r in rates),
        "in_order_reading_events_records_per_cpu_s": round(n_ev / secs_ev),
        "in_order_with_identity_records_per_cpu_s": round(n_id / secs_id),
        "late_record_cpu_ms_in_1000_record_cluster": round(late_ms, 2),
        "member_state_bytes_total": round(mem["hot"]),
        "member_state_bytes_excluding_records": round(mem["derived"]),
        "member_state_bytes_cold": round(mem["cold"]),
        "member_state_compact_cpu_us": round(mem["compact_us"]),
        "member_state_thaw_cpu_us": round(mem["thaw_us"]),
        "member_state_stored_bytes": round(mem["stored"]),
        "member_state_stored_bytes_zlib": round(mem["compressed"]),
        "member_state_stored_bytes_format1": round(mem["stored_v1"]),
        "member_state_stored_bytes_format1_zlib": round(mem["stored_v1_zlib"]),
        "identity_graph_bytes_per_member": round(graph_full),
        "identity_graph_bytes_per_member_purchases_forgotten": round(graph_lean),
        "records_per_typical_member": per_member,
    }


def format_figures(f: dict[str, Any]) -> str:
    return "\n".join(f"{k:42} {v:>12,}" if isinstance(v, int) else f"{k:42} {v:>12}"
                     for k, v in f.items())
