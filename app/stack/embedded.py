"""``loyalty-cdp up/down/status``: the embedded stack on one machine, no Docker.

Components, in start order: PostgreSQL (sources + profile store), migrations, the broker
(Tansu, memory storage), the topic plan, the CDC runner (Debezium embedded engine, one
connector per source) and one stream worker. Each is a detached process tracked by a pid file
in the state dir; ``down`` stops them in reverse order after draining, so the change events
already captured are consumed before the in-memory broker goes away (see ``app/cdc/runner``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.cdc.connectors import ConnectorSpec, change_topics, load_connectors
from app.cdc.java import find_jvm
from app.cdc.runner import CLEAN_MARKER
from app.db.migrate import SOURCE_DATABASES, STORE_DATABASE, database_dsn, upgrade_all
from app.settings import settings, worker_tuning
from app.stack import postgres
from app.stack.broker import start_broker, wait_listening
from app.stack.errors import StackError
from app.stack.ports import free_port, port_is_free
from app.stack.process import decisions_nice, stream_nice
from app.stack.state import StackPaths, StackState
from app.stack.topics import apply_topics, load_plan
from streams.topics import DECISIONS_GROUP, DECISIONS_INPUT, INGEST, RESOLVED, WORKER_GROUP

__all__ = ["WORKER_GROUP", "down", "status", "up"]

COMPONENTS = ("postgres", "broker", "cdc", "worker")
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _connectors() -> list[ConnectorSpec]:
    return load_connectors(settings().connectors_dir)


def _choose_state(
    paths: StackPaths,
    pg_port: int | None,
    broker_port: int | None,
    api_port: int | None,
    clock: str | None,
) -> StackState:
    old = paths.load()
    state = StackState(
        pg_port=pg_port or (old.pg_port if old else free_port()),
        broker_port=broker_port or (old.broker_port if old else free_port()),
        api_port=api_port or (old.api_port if old else free_port()),
        clock=clock or (old.clock if old else "wall"),
    )
    if len({state.pg_port, state.broker_port, state.api_port}) != 3:
        raise StackError("the PostgreSQL, broker and API ports must differ")
    return state


def _check_ports(paths: StackPaths, state: StackState, *, with_worker: bool) -> None:
    """Fail fast, starting nothing, when a port a component still has to bind is taken."""
    wanted = [
        ("PostgreSQL", state.pg_port, "--pg-port", postgres.is_running(paths.postgres_dir)),
        ("broker", state.broker_port, "--broker-port", paths.process("broker").is_running()),
    ]
    if with_worker:
        wanted.append(("API", state.api_port, "--api-port", paths.process("worker").is_running()))
    for what, port, flag, running in wanted:
        if not running and not port_is_free(port):
            raise StackError(
                f"{what} port {port} on 127.0.0.1 is already in use; choose another with {flag}"
            )


def _wait_slots_active(admin_dsn: str, specs: list[ConnectorSpec], timeout: float) -> bool:
    """True once every connector's replication slot is streaming (the connectors are live)."""
    slots = [s.slot_name for s in specs]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE active AND slot_name = ANY(%s)",
                (slots,),
            ).fetchall()
        if len(rows) == len(slots):
            return True
        time.sleep(0.25)
    return False


def up(
    state_dir: Path,
    *,
    pg_port: int | None = None,
    broker_port: int | None = None,
    api_port: int | None = None,
    clock: str | None = None,
    say: Say = _quiet,
    with_worker: bool = True,
) -> dict[str, Any]:
    """Start whatever is not running yet; return the status. Idempotent."""
    paths = StackPaths(state_dir.resolve())
    specs = _connectors()
    state = _choose_state(paths, pg_port, broker_port, api_port, clock)
    nice = stream_nice()  # a bad value fails here, before anything is saved or started
    decisions_nice()  # the worker's settings, refused here too
    worker_tuning()
    _check_ports(paths, state, with_worker=with_worker)  # before anything is saved or started
    paths.save(state)
    t0 = time.monotonic()

    if not postgres.is_running(paths.postgres_dir):
        say(f"starting PostgreSQL on 127.0.0.1:{state.pg_port}")
        postgres.start(paths.postgres_dir, state.pg_port)
    admin = postgres.dsn_for(state.pg_port)
    say("migrating databases pos, web, app, cdp")
    upgrade_all(admin)

    broker = paths.process("broker")
    if not broker.is_running():
        say(f"starting broker on {state.broker}")
        start_broker(broker, state.broker_port, nice)
    results = apply_topics(state.broker, load_plan(settings().topics_file, specs))
    created = sum(1 for v in results.values() if v == "created")
    say(f"topics: {created} created, {len(results) - created} existing")

    cdc = paths.process("cdc")
    if not cdc.is_running():
        find_jvm()  # a clear error before spawning
        say("starting Debezium connectors: " + ", ".join(s.name for s in specs))
        cdc.start(
            [sys.executable, "-m", "app.cdc.runner", "--state-dir", str(paths.root)],
            nice=nice,
        )
        if not _wait_slots_active(admin, specs, timeout=180):
            tail = _log_tail(cdc.log_file)
            cdc.stop(timeout=10)
            raise StackError(f"Debezium connectors did not start: {tail}")

    worker = paths.process("worker")
    if with_worker and not worker.is_running():
        if not port_is_free(state.api_port):
            raise StackError(f"API port {state.api_port} is taken; choose another with --api-port")
        say(f"starting stream worker (API on {state.api_url})")
        worker.start([sys.executable, "-m", "streams.worker", "--state-dir", str(paths.root)])
        if not wait_listening(state.api_port, timeout=60) or not worker.is_running():
            raise StackError(f"stream worker did not start: {_log_tail(worker.log_file)}")
    say(f"stack up in {time.monotonic() - t0:.1f}s")
    return status(state_dir)


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return (errors or lines or ["no log"])[-1][-300:]


def consumer_lag(bootstrap: str, group: str, topics: list[str]) -> dict[str, int] | None:
    """Messages not yet consumed by ``group``, per topic (None if the broker is unreachable)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "socket.timeout.ms": 5000,
        }
    )
    try:
        md = c.list_topics(timeout=5)
        tps = [
            TopicPartition(t, p) for t in topics if t in md.topics for p in md.topics[t].partitions
        ]
        committed = c.committed(tps, timeout=10) if tps else []
        lag: dict[str, int] = {}
        for tp in committed:
            _, high = c.get_watermark_offsets(tp, timeout=5)
            done = tp.offset if tp.offset >= 0 else 0
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - done)
        return lag
    except KafkaException:
        return None
    finally:
        c.close()


def slot_lag(admin_dsn: str, specs: list[ConnectorSpec]) -> dict[str, int | None]:
    """WAL bytes each connector's slot has not yet confirmed (None: no slot yet)."""
    out: dict[str, int | None] = {s.name: None for s in specs}
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
            " FROM pg_replication_slots"
        ).fetchall()
    by_slot = {s.slot_name: s.name for s in specs}
    for slot, lag in rows:
        if slot in by_slot:
            out[by_slot[slot]] = lag
    return out


def status(state_dir: Path) -> dict[str, Any]:
    paths = StackPaths(state_dir.resolve())
    state = paths.load()
    if state is None:
        raise StackError(f"no stack in {paths.root}: run `loyalty-cdp up`")
    specs = _connectors()
    comps = {
        "postgres": postgres.is_running(paths.postgres_dir),
        "broker": paths.process("broker").is_running(),
        "cdc": paths.process("cdc").is_running(),
        "worker": paths.process("worker").is_running(),
    }
    admin = postgres.dsn_for(state.pg_port)
    lag: dict[str, Any] = {}
    if comps["postgres"]:
        try:
            lag["cdc_wal_bytes"] = slot_lag(admin, specs)
        except psycopg.Error:
            lag["cdc_wal_bytes"] = None
    if comps["broker"]:
        lag["worker_messages"] = consumer_lag(state.broker, WORKER_GROUP, change_topics(specs))
        # the offers' backlog: the decisioning processes read in a group of their own
        lag["decisions_messages"] = consumer_lag(
            state.broker, DECISIONS_GROUP, list(DECISIONS_INPUT)
        )
    return {
        "state_dir": str(paths.root),
        "sources": {db: database_dsn(admin, db) for db in SOURCE_DATABASES},
        "store": database_dsn(admin, STORE_DATABASE),
        "broker": state.broker,
        "api": state.api_url if comps["worker"] else None,
        "clock": state.clock,
        "components": {k: "up" if v else "down" for k, v in comps.items()},
        "lag": lag,
    }


def wait_drained(
    state: StackState, topics: list[str], timeout: float, group: str = WORKER_GROUP
) -> bool:
    """Wait until ``group`` has consumed every message on ``topics``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lag = consumer_lag(state.broker, group, topics)
        if lag is not None and sum(lag.values()) == 0:
            return True
        time.sleep(0.5)
    return False


def _commit_when_group_empty(c: Consumer, tps: list[TopicPartition], timeout: float = 60) -> None:
    """Commit offsets for the worker group from outside it.

    The broker refuses (UNKNOWN_MEMBER_ID / REBALANCE_IN_PROGRESS) while the stopped worker is
    still a member, i.e. until its leave is processed or its session times out (~6 s), so
    retry until the group is empty.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.commit(offsets=tps, asynchronous=False)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise StackError(f"could not rewind the worker group: {exc.args[0]}") from exc
            time.sleep(1.0)


def replay(state_dir: Path, *, say: Say = _quiet) -> int:
    """Stop the worker, rewind its group on every change topic to the start, start it again.

    Everything downstream is idempotent (deterministic canonical ids, records keyed by id,
    loyalty events and guest purchase moments deduplicated by the outbox, decisions by
    moment), so a replay recomputes and changes nothing.
    """
    paths = StackPaths(state_dir.resolve())
    state = paths.load()
    if state is None:
        raise StackError(f"no stack in {paths.root}")
    worker = paths.process("worker")
    if worker.stop(timeout=30):
        say("stopped stream worker")
    topics = change_topics(_connectors())
    c = Consumer({"bootstrap.servers": state.broker, "group.id": WORKER_GROUP,
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10)
        tps = []
        for t in topics:
            for p in md.topics[t].partitions if t in md.topics else []:
                low, _ = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                tps.append(TopicPartition(t, p, low))
        if tps:
            _commit_when_group_empty(c, tps)
    finally:
        c.close()
    up(state_dir, say=say)
    return len(tps)


def down(state_dir: Path, *, say: Say = _quiet, drain_timeout: float = 60.0) -> list[str]:
    """Stop everything ``up`` started, in reverse order; return what was stopped."""
    paths = StackPaths(state_dir.resolve())
    state = paths.load()
    if state is None:
        raise StackError(f"no stack in {paths.root}")
    stopped: list[str] = []
    cdc, worker, broker = paths.process("cdc"), paths.process("worker"), paths.process("broker")
    if cdc.stop(timeout=60):
        stopped.append("cdc")
        say("stopped Debezium connectors")
    if worker.is_running() and broker.is_running():
        # Every stage's input, in pipeline order: the broker keeps them in memory only, so
        # what a stage has not consumed when it stops is gone (a notification on
        # cdp.resolved, a moment on loyalty.events), and only a re-snapshot would bring the
        # profiles and the decisions back up to date.
        say("draining: waiting for the worker to consume every captured change")
        inputs = [*change_topics(_connectors()), INGEST, RESOLVED]
        deadline = time.monotonic() + drain_timeout
        if wait_drained(state, inputs, drain_timeout) and wait_drained(
            state, list(DECISIONS_INPUT), max(1.0, deadline - time.monotonic()),
            group=DECISIONS_GROUP,
        ):
            (paths.cdc_dir / CLEAN_MARKER).write_text("drained\n")
        else:
            say("warning: not drained in time; the next `up` re-snapshots the sources")
    if worker.stop(timeout=30):
        stopped.append("worker")
        say("stopped stream worker")
    if broker.stop(timeout=10):
        stopped.append("broker")
        say("stopped broker")
    if postgres.stop(paths.postgres_dir):
        stopped.append("postgres")
        say("stopped PostgreSQL")
    return stopped
