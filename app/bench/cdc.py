"""``loyalty-cdp bench cdc``: start-up time, CDC latency and end-to-end throughput of the
embedded stack, measured on the real components (PostgreSQL, Tansu, Debezium, Faust worker).

Phases, all on one stack in one state dir (a fresh temporary one by default):

1. ``up`` **cold**: an empty state dir (initdb, migrations, broker, topics, connectors,
   worker); then ``down`` and ``up`` again of the same dir: **warm**.
2. **Latency** at steady rates (default 1,000 and 10,000 rows/s): a writer inserts
   ``pos.transactions`` rows in small transactions (about 200 commits/s, so 5 rows per
   transaction at 1,000 rows/s and 50 at 10,000 rows/s) paced to the rate, and records each
   row's client-side commit time (after ``COMMIT`` returned). A consumer on ``cdp.events``
   (every partition assigned, no group) records when each row's canonical event (its Kafka
   key is the subject ``pos.transactions:<txn_id>``) first arrives. Latency = arrival -
   commit, both from one monotonic clock in this process. The achieved write rate is
   reported; when the writer or the pipeline could not sustain the target, the result says
   so (``kept_up`` false and a ``note``) and reports what was achieved.
3. **Throughput**: N rows (default 100,000) written as fast as possible in big
   transactions; rows/s from the first commit to the arrival of the last canonical event.

Rows are guest purchases (``card_no`` NULL): exactly one canonical event each
(``cdp.purchase.completed``). The stack is torn down at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from app.stack import embedded
from app.stack.errors import StackError

__all__ = ["CdcBenchResult", "LatencyResult", "run_cdc_bench"]

EVENTS_TOPIC = "cdp.events"
SUBJECT_PREFIX = "pos.transactions:"
COMMITS_PER_SECOND = 200  # pacing granularity of the steady-rate writer
THROUGHPUT_BATCH = 5_000  # rows per transaction in the throughput phase
INSERT_SQL = (
    "INSERT INTO transactions (txn_id, store_id, card_no, total, currency, occurred_at)"
    " SELECT t, 'BENCH', NULL, 12.34, 'USD', now() FROM unnest(%s::text[]) AS t"
)

Progress = Callable[[str, int, int], None]  # (phase description, done, total)
Say = Callable[[str], None]


def _noop_progress(_: str, __: int, ___: int) -> None:
    pass


def _noop_say(_: str) -> None:
    pass


@dataclass
class LatencyResult:
    target_rows_per_s: int
    rows: int
    achieved_write_rows_per_s: float
    captured_rows_per_s: float
    received: int
    missing: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rows_per_transaction: int
    kept_up: bool
    note: str | None = None


@dataclass
class ThroughputResult:
    rows: int
    rows_per_transaction: int
    write_rows_per_s: float
    end_to_end_rows_per_s: float
    seconds: float
    received: int
    missing: int
    note: str | None = None


@dataclass
class CdcBenchResult:
    machine: dict[str, Any]
    up_cold_s: float
    up_warm_s: float
    down_s: float
    latency: list[LatencyResult] = field(default_factory=list)
    throughput: ThroughputResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ArrivalRecorder:
    """A consumer on ``cdp.events`` in a thread: first arrival time of each message key."""

    def __init__(self, bootstrap: str, topic: str = EVENTS_TOPIC) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",  # required by the client; never joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        md = self._consumer.list_topics(topic, timeout=10)
        if topic not in md.topics or not md.topics[topic].partitions:
            raise StackError(f"topic {topic} not found on {bootstrap}")
        # Start at each partition's current end, resolved now (not lazily at the first fetch,
        # which could skip rows written right after this returns).
        tps = []
        for p in md.topics[topic].partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            tps.append(TopicPartition(topic, p, high))
        self._consumer.assign(tps)
        self.arrivals: dict[bytes, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-consumer", daemon=True)

    def __enter__(self) -> ArrivalRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        arrivals = self.arrivals
        clock = time.perf_counter
        while not self._stop.is_set():
            msgs = self._consumer.consume(10_000, 0.05)
            now = clock()
            for m in msgs:
                if m.error() is None:
                    key = m.key()
                    if key is not None and key not in arrivals:
                        arrivals[key] = now

    def count(self, keys: Sequence[bytes]) -> int:
        arrivals = self.arrivals
        return sum(1 for k in keys if k in arrivals)

    def wait_for(
        self,
        keys: Sequence[bytes],
        *,
        idle_timeout: float,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Wait until every key arrived, or nothing new arrived for ``idle_timeout`` s."""
        pending = [k for k in keys if k not in self.arrivals]
        last_change, last_seen = time.monotonic(), len(keys) - len(pending)
        while pending:
            time.sleep(0.05)
            pending = [k for k in pending if k not in self.arrivals]
            seen = len(keys) - len(pending)
            if progress is not None:
                progress(seen)
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            elif time.monotonic() - last_change > idle_timeout:
                break
        return len(keys) - len(pending)


def _key(txn_id: str) -> bytes:
    return (SUBJECT_PREFIX + txn_id).encode()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def measure_latency(
    dsn: str,
    recorder: ArrivalRecorder,
    *,
    rate: int,
    duration: float,
    tag: str,
    progress: Progress = _noop_progress,
) -> LatencyResult:
    """Insert rows at ``rate`` rows/s for ``duration`` s; latency commit -> canonical event."""
    per_txn = max(1, round(rate / COMMITS_PER_SECOND))
    total = max(per_txn, int(rate * duration))
    interval = per_txn / rate
    ids = [f"{tag}-{i:07d}" for i in range(total)]
    commits: list[float] = []
    desc = f"latency @ {rate:,} rows/s"
    with psycopg.connect(dsn, autocommit=False) as conn:
        start = time.perf_counter()
        for n, i in enumerate(range(0, total, per_txn)):
            due = start + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            batch = ids[i : i + per_txn]
            conn.execute(INSERT_SQL, (batch,))
            conn.commit()
            committed = time.perf_counter()
            commits.extend([committed] * len(batch))
            if n % 50 == 0:
                progress(desc + " (writing)", len(commits), total)
        write_end = commits[-1]
    write_s = max(write_end - start, 1e-9)
    write_rate = total / write_s
    keys = [_key(t) for t in ids]
    received = recorder.wait_for(
        keys,
        idle_timeout=30,
        progress=lambda seen: progress(desc + " (capturing)", seen, total),
    )
    arrivals = recorder.arrivals
    lat = sorted(
        (arrivals[k] - c) * 1000 for k, c in zip(keys, commits, strict=True) if k in arrivals
    )
    got = [arrivals[k] for k in keys if k in arrivals]
    # Arrival span vs write span: a pipeline that keeps up delivers over (about) the same
    # span as the writer, whatever its latency; one that falls behind stretches it.
    span = (max(got) - min(got)) if len(got) > 1 else write_s
    captured_rate = received / max(span, write_s * received / total, 1e-9)
    kept_write = write_rate >= 0.95 * rate
    kept_capture = captured_rate >= 0.95 * rate and received == total
    notes = []
    if not kept_write:
        notes.append(
            f"the writer achieved {write_rate:,.0f} rows/s, not the {rate:,} rows/s target"
        )
    if not kept_capture:
        notes.append(
            f"the pipeline captured {captured_rate:,.0f} rows/s end to end"
            f" ({received:,}/{total:,} events), so it did not keep up with {rate:,} rows/s"
            " and latency includes queueing"
        )
    return LatencyResult(
        target_rows_per_s=rate,
        rows=total,
        achieved_write_rows_per_s=round(write_rate, 1),
        captured_rows_per_s=round(captured_rate, 1),
        received=received,
        missing=total - received,
        p50_ms=round(_percentile(lat, 50), 1) if lat else None,
        p99_ms=round(_percentile(lat, 99), 1) if lat else None,
        max_ms=round(lat[-1], 1) if lat else None,
        rows_per_transaction=per_txn,
        kept_up=kept_write and kept_capture,
        note="; ".join(notes) or None,
    )


def measure_throughput(
    dsn: str,
    recorder: ArrivalRecorder,
    *,
    rows: int,
    tag: str,
    progress: Progress = _noop_progress,
) -> ThroughputResult:
    """Write ``rows`` as fast as possible; rows/s from first commit to last event arriving."""
    ids = [f"{tag}-{i:07d}" for i in range(rows)]
    keys = [_key(t) for t in ids]
    first_commit: float | None = None
    with psycopg.connect(dsn, autocommit=False) as conn:
        t0 = time.perf_counter()
        for i in range(0, rows, THROUGHPUT_BATCH):
            conn.execute(INSERT_SQL, (ids[i : i + THROUGHPUT_BATCH],))
            conn.commit()
            if first_commit is None:
                first_commit = time.perf_counter()
            progress("throughput (writing)", min(i + THROUGHPUT_BATCH, rows), rows)
        write_end = time.perf_counter()
    assert first_commit is not None
    received = recorder.wait_for(
        keys,
        idle_timeout=30,
        progress=lambda seen: progress("throughput (capturing)", seen, rows),
    )
    arrivals = recorder.arrivals
    last_arrival = max((arrivals[k] for k in keys if k in arrivals), default=write_end)
    seconds = max(last_arrival - first_commit, 1e-9)
    return ThroughputResult(
        rows=rows,
        rows_per_transaction=min(THROUGHPUT_BATCH, rows),
        write_rows_per_s=round(rows / max(write_end - t0, 1e-9), 1),
        end_to_end_rows_per_s=round(received / seconds, 1),
        seconds=round(seconds, 2),
        received=received,
        missing=rows - received,
        note=None if received == rows else f"{rows - received:,} events did not arrive",
    )


def _warm_up(dsn: str, recorder: ArrivalRecorder, tag: str) -> None:
    """A few rows through the whole pipeline first (JIT, connections, partition leaders)."""
    ids = [f"{tag}-warm-{i}" for i in range(200)]
    with psycopg.connect(dsn, autocommit=False) as conn:
        for i in range(0, len(ids), 20):
            conn.execute(INSERT_SQL, (ids[i : i + 20],))
            conn.commit()
    got = recorder.wait_for([_key(t) for t in ids], idle_timeout=60)
    if got < len(ids):
        raise StackError(f"warm-up: only {got}/{len(ids)} canonical events arrived")


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


@contextmanager
def bench_state_dir(state_dir: Path | None) -> Iterator[Path]:
    """A fresh temp state dir (removed afterwards), or the given one, which must be empty."""
    if state_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="loyalty-cdp-bench-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if state_dir.exists() and any(state_dir.iterdir()):
        raise StackError(
            f"{state_dir} is not empty: the cold `up` needs a fresh state dir (omit --state-dir)"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    yield state_dir


def run_cdc_bench(
    state_dir: Path | None = None,
    *,
    rows: int = 100_000,
    rates: Sequence[int] = (1_000, 10_000),
    duration: float = 10.0,
    say: Say = _noop_say,
    progress: Progress = _noop_progress,
) -> CdcBenchResult:
    """Run every phase on a fresh stack and tear it down at the end (also on Ctrl-C)."""
    tag = uuid.uuid4().hex[:8]
    with bench_state_dir(state_dir) as sd:
        try:
            say(f"cold up in {sd}")
            t0 = time.perf_counter()
            embedded.up(sd, say=say)
            cold = time.perf_counter() - t0
            say(f"cold up: {cold:.1f}s; down")
            t0 = time.perf_counter()
            embedded.down(sd, say=say)
            down_s = time.perf_counter() - t0
            say("warm up")
            t0 = time.perf_counter()
            st = embedded.up(sd, say=say)
            warm = time.perf_counter() - t0
            say(f"warm up: {warm:.1f}s")
            result = CdcBenchResult(
                machine=machine_info(),
                up_cold_s=round(cold, 2),
                up_warm_s=round(warm, 2),
                down_s=round(down_s, 2),
            )
            dsn = st["sources"]["pos"]
            with ArrivalRecorder(st["broker"]) as recorder:
                say("warming the pipeline up")
                _warm_up(dsn, recorder, tag)
                for rate in rates:
                    result.latency.append(
                        measure_latency(
                            dsn,
                            recorder,
                            rate=rate,
                            duration=duration,
                            tag=f"{tag}-r{rate}",
                            progress=progress,
                        )
                    )
                if rows > 0:
                    result.throughput = measure_throughput(
                        dsn, recorder, rows=rows, tag=f"{tag}-tp", progress=progress
                    )
            return result
        finally:
            say("tearing the stack down")
            with contextlib.suppress(StackError):  # StackError: nothing was started
                embedded.down(sd, drain_timeout=10)


def format_table(result: CdcBenchResult) -> str:
    """Human-readable figures."""
    m = result.machine
    lines = [
        f"machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}",
        f"up cold            {result.up_cold_s:8.2f} s",
        f"up warm            {result.up_warm_s:8.2f} s   (after down: {result.down_s:.2f} s)",
    ]
    for lat in result.latency:
        p50 = f"{lat.p50_ms:,.1f}" if lat.p50_ms is not None else "-"
        p99 = f"{lat.p99_ms:,.1f}" if lat.p99_ms is not None else "-"
        lines.append(
            f"latency @ {lat.target_rows_per_s:>6,}/s  p50 {p50} ms  p99 {p99} ms"
            f"  (wrote {lat.achieved_write_rows_per_s:,.0f} rows/s,"
            f" captured {lat.captured_rows_per_s:,.0f} rows/s,"
            f" {lat.received:,}/{lat.rows:,} events, {lat.rows_per_transaction} rows/txn)"
        )
        if lat.note:
            lines.append(f"    note: {lat.note}")
    tp = result.throughput
    if tp is not None:
        lines.append(
            f"throughput         {tp.end_to_end_rows_per_s:8,.0f} rows/s end to end"
            f"  ({tp.rows:,} rows in {tp.seconds:.1f} s; written at {tp.write_rows_per_s:,.0f}"
            f" rows/s, {tp.rows_per_transaction:,} rows/txn; {tp.received:,} events)"
        )
        if tp.note:
            lines.append(f"    note: {tp.note}")
    return "\n".join(lines)
