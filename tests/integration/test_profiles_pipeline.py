"""Issue 5 end to end on the real embedded stack (PostgreSQL, Tansu, Debezium, Faust worker).

A seeded multi-source history from the simulator is written into the three sources
concurrently (one writer thread per source, so arrival order differs from event time); after
``wait --caught-up`` and ``clock tick`` to the end of the history, every exported profile must
equal, field by field, the domain core's fold of the same records computed offline here.

The offline input is independent of the pipeline: the simulator's row changes are turned
into Debezium change events here (after image, and the previous image as ``before``: the
sources are ``REPLICA IDENTITY FULL``) and mapped by the pure mapping layer, then folded by
``app.domain.profiles.Profiles`` in event-time order (``Record.sort_key``). Purchase lines are
left out, as the identity stage leaves them out. As a cross-check, the canonical ids mapped
offline must be exactly the ids the pipeline published on ``cdp.events``.

The tests run in file order and build on each other (one stack, cumulative data):
history -> SIGKILL of the worker mid-stream (second, overlapping batch: late records
against the clock) -> SIGKILL of its profile process mid-stream (third batch) -> replay ->
duplicated change events -> loyalty events and snapshots validated against their JSON
Schemas, with no duplicate event ids across all of it; every guest purchase of the final
folds was published once as a moment on ``cdp.guest_purchases``.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from jsonschema import Draft202012Validator

from app.cdc.runner import CLEAN_MARKER
from app.domain.program import CompiledProgram, load_program
from app.domain.records import PurchaseCompleted
from app.mapping.engine import Mapper
from app.settings import REPO_ROOT, settings
from app.simulate import TABLES, RowOp, Traffic, generate, write_ops
from app.stack import embedded
from app.stack.pipeline import tick, wait_caught_up
from app.stack.state import StackPaths
from streams.outbox import GUEST_PURCHASE
from streams.profile_process import PROCESS_NAME
from streams.store import Store
from tests.integration.kafka_util import read_topic
from tests.offline_pipeline import Folded, fold, map_traffic, records_of

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 5, tzinfo=UTC)
# (members, days, seed, start). The second batch overlaps the first in event time, so many
# of its records arrive "late" with respect to the manual clock already ticked past them.
BATCH_1 = (150, 60, 501, START)
BATCH_2 = (80, 45, 502, START + timedelta(days=30))
BATCH_3 = (50, 30, 503, START + timedelta(days=50))
WAIT_S = 300.0
# the worker group's input topics (cdp.events is an output: the canonical agent hands its
# batches to the identity stage in the worker, streams/canonical.py)
PIPELINE_TOPICS = [
    *(f"{src}.public.{t}" for src, t in TABLES),
    "cdp.resolved",
]


# -- the stack and what has been loaded into it ----------------------------------------


@dataclass
class Run:
    state_dir: Path
    status: dict[str, Any]
    program: CompiledProgram
    mapper: Mapper
    loaded: list[Traffic] = field(default_factory=list)
    clock: datetime | None = None
    _events: tuple[int, dict[str, dict[str, Any]]] = (0, {})  # cache: (batches, events)

    @property
    def broker(self) -> str:
        return str(self.status["broker"])

    @property
    def store_dsn(self) -> str:
        return str(self.status["store"])


@contextmanager
def manual_stack(prefix: str) -> Iterator[Run]:
    """An embedded stack with the manual clock in a fresh temp dir, torn down and removed.

    Not under pytest's basetemp: concurrent pytest sessions rotate (delete) old basetemp
    directories, which would pull the data directory from under a running PostgreSQL.
    ``LOYALTY_CDP_TEST_KEEP_STATE=1`` keeps the directory (logs, PostgreSQL data) afterwards.
    """
    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        st = embedded.up(state_dir, clock="manual")
        yield Run(
            state_dir=state_dir,
            status=st,
            program=load_program(settings().program_file).compile(),
            mapper=Mapper.from_dir(settings().mappings_dir),
        )
    finally:
        try:
            embedded.down(state_dir, drain_timeout=10)
        finally:
            if not os.environ.get("LOYALTY_CDP_TEST_KEEP_STATE"):  # to look into a failure
                shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with manual_stack("loyalty-cdp-profiles-") as r:
        yield r


class Writers:
    """One writer thread per source (so arrival order across sources is arbitrary)."""

    def __init__(self, r: Run, traffic: Traffic, rate: float | None = None) -> None:
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(
                target=self._write,
                args=(r.status["sources"][src], ops, rate),
                name=f"writer-{src}",
                daemon=True,
            )
            for src, ops in traffic.by_source().items()
        ]
        for t in self.threads:
            t.start()
        r.loaded.append(traffic)

    def _write(self, dsn: str, ops: list[RowOp], rate: float | None) -> None:
        try:
            write_ops(dsn, ops, rate=rate, batch_rows=None if rate else 50)
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def busy(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=WAIT_S)
            assert not t.is_alive(), f"{t.name} did not finish"
        assert not self.errors, f"a source writer failed: {self.errors[0]!r}"


def history_end(r: Run) -> datetime:
    last = max(op.at for t in r.loaded for op in t.ops)
    return last + timedelta(days=1)


def settle(r: Run) -> None:
    """wait --caught-up, then tick the manual clock to the end of everything loaded (+1 d)."""
    wait_caught_up(r.state_dir, timeout=WAIT_S)
    r.clock = history_end(r)
    tick(r.state_dir, r.clock, timeout=WAIT_S)


# -- the offline side: simulator rows -> Debezium change events -> mapping -> fold -------


def offline_events(r: Run) -> dict[str, dict[str, Any]]:
    """Canonical events (id -> CloudEvent) of everything loaded, mapped without the stack."""
    if r._events[0] != len(r.loaded):
        r._events = (len(r.loaded), map_traffic(r.mapper, r.loaded))
    return r._events[1]


def offline_fold(r: Run) -> Folded:
    """The domain core's fold of every loaded record, to the clock."""
    assert r.clock is not None
    return fold(r.program, records_of(r.program, offline_events(r)), r.clock)


def offline_profiles(r: Run) -> dict[str, dict[str, Any]]:
    """profile id -> export document."""
    return offline_fold(r).profiles


# -- the pipeline side ------------------------------------------------------------------


def pipeline_profiles(r: Run) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(profile id -> document from the store, the ``profiles export`` documents)."""
    with psycopg.connect(r.store_dsn) as conn:
        rows = conn.execute("SELECT profile_id, doc FROM profiles ORDER BY profile_id").fetchall()
    store = Store(r.store_dsn)
    try:
        exported = list(store.export())
    finally:
        store.dispose()
    return {pid: dict(doc) for pid, doc in rows}, exported


def _where_records_went(r: Run, pids: list[str]) -> str:
    """For a failure message: which stage lost a differing profile's records.

    A record the offline fold gave the profile but the store's ``records`` table does not
    hold under it was lost before the profile stage (CDC, mapping or identity); if the store
    holds every one of them, the profile stage folded the wrong set.
    """
    core = offline_fold(r).core
    lines = []
    with psycopg.connect(r.store_dsn) as conn:
        for pid in pids:
            want = {rec.record_id for rec in core.states[pid].records}
            rows = conn.execute(
                "SELECT record_id, profile_id, seq FROM records WHERE record_id = ANY(%s)"
                " OR profile_id = %s",
                (sorted(want), pid),
            ).fetchall()
            under = {rid for rid, p, _ in rows if p == pid}
            elsewhere = {rid: p for rid, p, _ in rows if p != pid}
            absent = sorted(want - under - set(elsewhere))
            lines.append(
                f"{pid}: offline {len(want)} records, store {len(under)} under it;"
                f" not in the store: {absent}; under another profile: {elsewhere};"
                f" extra in the store: {sorted(under - want)}"
                + ("" if absent or elsewhere or under != want else " -> the profile stage")
            )
    return "where the records went:\n" + "\n".join(lines)


def _canon(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)


def assert_profiles_match(r: Run, label: str) -> None:
    want = offline_profiles(r)
    got, exported = pipeline_profiles(r)
    problems: list[str] = []
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        problems.append(f"{len(missing)} profiles missing from the store, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected profiles in the store, e.g. {extra[:5]}")
    differing = [pid for pid in sorted(set(want) & set(got)) if want[pid] != got[pid]]
    for pid in differing[:10]:
        fields = sorted(
            k for k in want[pid].keys() | got[pid].keys() if want[pid].get(k) != got[pid].get(k)
        )
        problems.append(
            f"{pid}: fields {fields} differ\n"
            + "\n".join(
                difflib.unified_diff(
                    json.dumps(want[pid], indent=1, sort_keys=True).splitlines(),
                    json.dumps(got[pid], indent=1, sort_keys=True).splitlines(),
                    "offline fold",
                    "pipeline",
                    lineterm="",
                    n=1,
                )
            )
        )
    if len(differing) > 10:
        problems.append(f"... and {len(differing) - 10} more differing profiles")
    if differing:
        problems.append(_where_records_went(r, differing[:10]))
    assert not problems, f"[{label}] {len(want)} expected profiles:\n" + "\n".join(problems)
    # the CLI's export (profile ids are not part of the document): same multiset of documents
    assert sorted(map(_canon, exported)) == sorted(map(_canon, want.values())), label
    assert len(want) > 50, "the history should produce a realistic number of profiles"


def canonical_on_topic(r: Run, expect: set[str]) -> list[tuple[str, bytes]]:
    """(id, value) of every ``cdp.events`` message, once every expected id is there."""
    msgs = read_topic(
        r.broker,
        "cdp.events",
        until=lambda ms: len({orjson.loads(m.value())["id"] for m in ms}) >= len(expect),
        timeout=120,
    )
    return [(orjson.loads(m.value())["id"], m.value()) for m in msgs]


def assert_canonical_exact(r: Run, *, once: bool) -> None:
    """The offline mapping is the pipeline's: the same ids (and, with ``once``, no message
    published twice: true until a crash, a replay or a redelivery, after which cdp.events
    legitimately carries copies that its consumers drop by id)."""
    expect = set(offline_events(r))
    msgs = canonical_on_topic(r, expect)
    ids = {i for i, _ in msgs}
    assert ids == expect, (
        f"{len(expect - ids)} offline ids not on cdp.events, {len(ids - expect)} unexpected"
    )
    twice = [i for i, n in Counter(msgs).items() if n > 1]
    assert not (once and twice), f"{len(twice)} canonical events published twice, e.g. {twice[:3]}"
    collisions = len(msgs) - len(ids)
    print(f"cdp.events: {len(msgs)} messages, {len(ids)} ids ({collisions} id collisions)")


def high_watermarks(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-watermarks"})
    try:
        md = c.list_topics(topic, timeout=10)
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in md.topics[topic].partitions
        )
    finally:
        c.close()


# -- the tests --------------------------------------------------------------------------


def test_history_loaded_concurrently_equals_the_offline_fold(run: Run) -> None:
    t0 = time.monotonic()
    Writers(run, generate(*BATCH_1)).join()
    settle(run)
    print(f"batch 1 loaded and settled in {time.monotonic() - t0:.1f}s")
    assert_canonical_exact(run, once=True)
    assert_profiles_match(run, "history")


def test_sigkill_of_the_worker_mid_stream_loses_and_duplicates_nothing(run: Run) -> None:
    paths = StackPaths(run.state_dir)
    worker = paths.process("worker")
    base = high_watermarks(run.broker, "cdp.resolved")
    # throttled (~3 s per source) so the kill lands while changes are still flowing in
    writers = Writers(run, generate(*BATCH_2), rate=300)
    # kill once the worker is visibly busy with the new batch (notifications flowing)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and high_watermarks(run.broker, "cdp.resolved") < base + 50:
        time.sleep(0.05)
    assert high_watermarks(run.broker, "cdp.resolved") >= base + 50, "the worker never started"
    lag = embedded.consumer_lag(run.broker, embedded.WORKER_GROUP, PIPELINE_TOPICS)
    busy = writers.busy()
    worker.kill()
    deadline = time.monotonic() + 20
    while worker.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker.is_running(), "the worker survived SIGKILL"
    print(f"worker SIGKILLed (writers still running: {busy}, worker lag: {lag})")
    assert busy or sum((lag or {}).values()) > 0, "the kill did not land mid-stream"
    writers.join()
    embedded.up(run.state_dir)  # restarts just the worker
    settle(run)
    assert_canonical_exact(run, once=False)
    assert_profiles_match(run, "after SIGKILL")


def profile_process_of(worker_pid: int) -> int | None:
    """The pid of the worker's profile-stage child (streams/profile_process.py), by name."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                comm = (d / "comm").read_text().strip()
            except OSError:
                continue
            if ppid == worker_pid and comm == PROCESS_NAME:
                return int(d.name)
    return None


def test_sigkill_of_the_profile_process_mid_stream_is_survived_exactly(run: Run) -> None:
    """The worker replaces a profile process that died; the worker itself stays up."""
    worker = StackPaths(run.state_dir).process("worker")
    pid = worker.pid()
    assert pid is not None
    child = profile_process_of(pid)
    assert child is not None, "no profile process under the worker"
    base = high_watermarks(run.broker, "cdp.resolved")
    writers = Writers(run, generate(*BATCH_3), rate=300)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and high_watermarks(run.broker, "cdp.resolved") < base + 50:
        time.sleep(0.05)
    busy = writers.busy()
    os.kill(child, signal.SIGKILL)
    print(f"profile process SIGKILLed (writers still running: {busy})")
    assert busy, "the kill did not land mid-stream"
    writers.join()
    settle(run)
    assert worker.pid() == pid and worker.is_running(), "the worker did not survive"
    replacement = profile_process_of(pid)
    assert replacement is not None and replacement != child
    assert_canonical_exact(run, once=False)
    assert_profiles_match(run, "after SIGKILL of the profile process")


def outbox_ids(r: Run, kind: str | None = None) -> set[str]:
    """Ids in the profile stage's outbox: all, or only ``loyalty`` events / ``guest`` moments."""
    with psycopg.connect(r.store_dsn) as conn:
        rows = conn.execute("SELECT event_id, type FROM loyalty_outbox").fetchall()
    return {
        i for i, t in rows if kind is None or (t == GUEST_PURCHASE) == (kind == "guest")
    }


def test_replay_of_the_change_topics_changes_nothing(run: Run) -> None:
    before = outbox_ids(run)
    rewound = embedded.replay(run.state_dir)
    assert rewound > 0
    settle(run)
    assert_profiles_match(run, "after replay")
    assert outbox_ids(run) == before, "the replay emitted new loyalty events or moments"


def test_duplicated_change_events_change_nothing(run: Run) -> None:
    before = outbox_ids(run)
    p = Producer({"bootstrap.servers": run.broker, "linger.ms": 5})
    n = 0
    for topic in (
        "pos.public.transactions",
        "web.public.orders",
        "pos.public.returns",
        "app.public.users",
    ):
        msgs = read_topic(run.broker, topic, until=lambda ms: len(ms) > 0, timeout=30)
        assert msgs, f"nothing on {topic}"
        for m in msgs[::3]:  # every third change event again, same key, value and partition
            p.produce(
                topic, value=m.value(), key=m.key(), partition=m.partition(), headers=m.headers()
            )
            n += 1
    assert p.flush(30) == 0
    print(f"re-produced {n} change events")
    settle(run)
    assert_profiles_match(run, "after duplicated change events")
    assert_canonical_exact(run, once=False)  # the duplicates minted no new ids
    assert outbox_ids(run) == before, "duplicated change events emitted new events or moments"


# -- loyalty events and profile snapshots on the topics ----------------------------------


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((REPO_ROOT / "schemas" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _errors(v: Draft202012Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in v.iter_errors(doc)
    ]


def _once(run: Run, topic: str, outbox: set[str]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The messages on ``topic`` and their CloudEvents: each id once, exactly the ids in the
    outbox."""
    msgs = read_topic(
        run.broker, topic, until=lambda ms: len(ms) >= len(outbox), timeout=120, settle=3.0
    )
    events = [orjson.loads(m.value()) for m in msgs]
    ids = Counter(e["id"] for e in events)
    dups = {i: c for i, c in ids.items() if c > 1}
    assert not dups, f"{len(dups)} ids published more than once on {topic}, e.g. " + repr(
        [e for e in events if e["id"] in dups][:2]
    )
    assert set(ids) == outbox, f"{topic} and the outbox disagree"
    return msgs, events


def test_every_guest_purchase_is_one_moment(run: Run) -> None:
    """Every purchase by a profile not enrolled at its time, in the final folds, reached the
    decisioning agent's input once (through the SIGKILL, the replay and the duplicates)."""
    _, events = _once(run, "cdp.guest_purchases", outbox_ids(run, "guest"))
    assert {e["type"] for e in events} == {"cdp.purchase.completed"}
    guests = {
        r.record_id
        for st in offline_fold(run).core.states.values()
        for r in st.records
        if isinstance(r, PurchaseCompleted)
        and (st.fold.enrolled_at is None or r.occurred_at < st.fold.enrolled_at)
    }
    assert guests, "the history has no guest purchase"
    missing = guests - {e["data"]["record_id"] for e in events}
    assert not missing, f"{len(missing)} guest purchases never became a moment"


def test_loyalty_events_are_unique_and_valid(run: Run) -> None:
    outbox = outbox_ids(run, "loyalty")
    assert outbox, "no loyalty events at all"
    msgs, events = _once(run, "loyalty.events", outbox)
    ids = Counter(e["id"] for e in events)
    # every moment of every profile's final history was published (exact points out)
    missing = offline_fold(run).final_event_ids() - set(ids)
    assert not missing, f"{len(missing)} loyalty events of the final folds never published"
    v = _validator("loyalty.events.schema.json")
    bad = [(e["type"], _errors(v, e)) for e in events if not v.is_valid(e)]
    assert not bad, f"{len(bad)} invalid loyalty events, e.g. {bad[:3]}"
    for m, e in zip(msgs, events, strict=True):
        assert (
            m.key().decode() == e["subject"] == (e["data"]["member_id"] or e["data"]["profile_id"])
        )
        assert e["time"] == e["data"]["effective_at"]
    types = Counter(e["type"] for e in events)
    print("loyalty events by type:", dict(sorted(types.items())))
    # the history is rich enough to exercise the common moments
    for t in (
        "member_enrolled",
        "points_earned",
        "points_reversed",
        "points_redeemed",
        "tier_upgraded",
        "profiles_merged",
        "consent_changed",
    ):
        assert types[f"loyalty.{t}"] > 0, f"no loyalty.{t} event"


def test_profile_snapshots_are_valid(run: Run) -> None:
    msgs = read_topic(
        run.broker, "cdp.profiles", until=lambda ms: len(ms) > 0, timeout=60, settle=2.0
    )
    v = _validator("cdp.profiles.schema.json")
    values = [orjson.loads(m.value()) for m in msgs if m.value() is not None]
    assert values
    bad = [(d.get("profile_id"), _errors(v, d)) for d in values if not v.is_valid(d)]
    assert not bad, f"{len(bad)} invalid profile snapshots, e.g. {bad[:3]}"
    for m in msgs:
        if m.value() is not None:
            assert m.key().decode() == orjson.loads(m.value())["profile_id"]
    # the latest snapshot per key is the profile in the store (tombstones: not in it)
    latest: dict[str, dict[str, Any] | None] = {}
    for m in msgs:
        latest[m.key().decode()] = None if m.value() is None else orjson.loads(m.value())
    got, _ = pipeline_profiles(run)
    live = {
        k: {f: x for f, x in d.items() if f != "profile_id"}
        for k, d in latest.items()
        if d is not None
    }
    assert set(live) == set(got)
    stale = [k for k in got if live[k] != got[k]]
    assert not stale, f"{len(stale)} profiles whose latest snapshot is not the stored one"


# -- last: it restarts the broker (empty topics), which the tests above read ------------


def test_down_with_a_backlog_then_up_loses_nothing(run: Run) -> None:
    """``down`` right after the sources were written, with the stages still behind: it must
    drain every stage's input before the broker's memory goes (it used to wait for the
    change topics only, and the clean-shutdown marker then kept the next ``up`` from
    reading the rest again), so the profiles after ``up`` are still the offline fold."""
    writers = Writers(run, generate(60, 20, 704, START + timedelta(days=40)))  # full speed
    writers.join()
    embedded.down(run.state_dir)
    assert (StackPaths(run.state_dir).cdc_dir / CLEAN_MARKER).exists(), "not drained in time"
    embedded.up(run.state_dir)
    settle(run)
    assert_profiles_match(run, "after down with a backlog, then up")
