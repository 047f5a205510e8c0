"""``loyalty-cdp wait --caught-up`` and ``loyalty-cdp clock tick``: the pipeline's barriers.

``wait`` proves, stage by stage, that every change committed in the sources before the call
has reached the profile store and the output topics:

1. capture: a fresh token is written to each source's heartbeat table; its change event
   reaches the CDC runner after every change committed before it, and the runner records the
   token only after flushing that batch to the broker;
2. then, for each stage in order (change topics -> canonical agent, which publishes
   ``cdp.events`` and runs the identity stage on the same batch -> ``cdp.resolved`` ->
   profile stage -> ``loyalty.events`` and ``cdp.guest_purchases`` -> decisioning agent),
   the high watermarks of the stage's input
   topics are taken and the stage's group's committed offsets must reach them (the worker
   group's; the decisioning processes have their own, ``stage_group``). Each stage
   flushes its outputs before its input offsets are acknowledged, so once a stage's offsets
   reach the marks, everything derived from those inputs is in the next topic.

``clock tick --to T`` sends a tick to every ``cdp.resolved`` partition (in order with that
partition's notifications) and returns once every partition has recorded ``T`` in the store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from app.cdc.connectors import ConnectorSpec, change_topics, load_connectors
from app.cdc.runner import barrier_file
from app.db.heartbeat import QUALIFIED
from app.settings import settings
from app.stack import postgres
from app.stack.errors import StackError
from app.stack.state import StackPaths, StackState
from streams.topics import DECISIONS_INPUT, stage_group

__all__ = ["STAGES", "tick", "wait_caught_up"]

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _stack(state_dir: Path) -> tuple[StackPaths, StackState]:
    paths = StackPaths(state_dir.resolve())
    state = paths.load()
    if state is None:
        raise StackError(f"no stack in {paths.root}: run `loyalty-cdp up`")
    return paths, state


def STAGES(specs: list[ConnectorSpec]) -> list[tuple[str, list[str]]]:
    """(stage name, its input topics) in pipeline order."""
    return [
        # the canonical agent acknowledges its input once the identity stage has placed the
        # batch (streams/canonical.py): caught up here means identity is too
        ("canonical", [*change_topics(specs), "cdp.ingest"]),
        ("profiles", ["cdp.resolved"]),
        ("decisions", list(DECISIONS_INPUT)),  # its own group (streams/decision_process.py)
    ]


def _lag(consumer: Consumer, topics: list[str], marks: dict[TopicPartition, int]) -> int:
    committed = consumer.committed(list(marks), timeout=10)
    behind = 0
    for tp in committed:
        done = max(tp.offset, 0)
        behind += max(0, marks[TopicPartition(tp.topic, tp.partition)] - done)
    return behind


def _marks(consumer: Consumer, topics: list[str]) -> dict[TopicPartition, int]:
    md = consumer.list_topics(timeout=10)
    marks: dict[TopicPartition, int] = {}
    for t in topics:
        if t not in md.topics:
            continue
        for p in md.topics[t].partitions:
            tp = TopicPartition(t, p)
            marks[tp] = consumer.get_watermark_offsets(tp, timeout=10)[1]
    return marks


def wait_stages(
    broker: str,
    stages: list[tuple[str, list[str]]],
    deadline: float,
    say: Say = _quiet,
    on_stage: Say = _quiet,
) -> dict[str, float]:
    """For each stage in order: wait until its group's committed offsets reach the high
    watermarks of the stage's input topics, taken when the stage's turn comes; ``on_stage``
    is called with each stage's name as soon as it has caught up."""
    phases: dict[str, float] = {}
    consumers: dict[str, Consumer] = {}  # by group: committed() reads the consumer's own
    try:
        for stage, topics in stages:
            group = stage_group(stage)
            consumer = consumers.get(group)
            if consumer is None:
                consumer = consumers[group] = Consumer(
                    {"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False}
                )
            t1 = time.monotonic()
            marks = _marks(consumer, topics)
            while True:
                behind = _lag(consumer, topics, marks)
                if behind == 0:
                    break
                if time.monotonic() > deadline:
                    raise StackError(f"not caught up: stage {stage} is {behind} messages behind")
                time.sleep(0.05)
            phases[stage] = time.monotonic() - t1
            on_stage(stage)
            say(f"{stage}: caught up")
    finally:
        for c in consumers.values():
            c.close()
    return phases


def wait_caught_up(state_dir: Path, timeout: float = 120.0, say: Say = _quiet) -> dict[str, float]:
    """Block until caught up; returns seconds per phase; raises StackError naming the laggard."""
    paths, state = _stack(state_dir)
    specs = load_connectors(settings().connectors_dir)
    deadline = time.monotonic() + timeout
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    tokens = {}
    for spec in specs:
        token = uuid.uuid4().hex
        with psycopg.connect(postgres.dsn_for(state.pg_port, spec.database), autocommit=True) as c:
            c.execute(
                f"UPDATE {QUALIFIED} SET token = %s, at = now() WHERE source = %s",
                (token, spec.name),
            )
        tokens[spec.name] = token
    pending = dict(tokens)
    while pending:
        for name, token in list(pending.items()):
            f = barrier_file(paths.cdc_dir, name)
            if f.exists() and f.read_text().strip() == token:
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise StackError(f"not caught up: capture of {', '.join(sorted(pending))} is behind")
        if pending:
            time.sleep(0.05)
    phases["capture"] = time.monotonic() - t0
    phases.update(wait_stages(state.broker, STAGES(specs), deadline, say))
    phases["total"] = time.monotonic() - t0
    return phases


def tick(state_dir: Path, to: datetime, timeout: float = 120.0) -> int:
    """Apply every time-driven effect up to ``to``; returns the number of partitions."""
    from streams.profiles import encode_tick
    from streams.store import Store

    _, state = _stack(state_dir)
    if state.clock != "manual":
        raise StackError(
            "the stack runs the wall clock: start it with `loyalty-cdp up --clock manual`"
        )
    p = Producer({"bootstrap.servers": state.broker})
    md = p.list_topics("cdp.resolved", timeout=10)
    parts = sorted(md.topics["cdp.resolved"].partitions)
    for part in parts:
        p.produce("cdp.resolved", value=encode_tick(to), key=b"__tick__", partition=part)
    if p.flush(15):
        raise StackError("broker did not acknowledge the clock tick")
    store = Store(postgres.dsn_for(state.pg_port, "cdp"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            with store.tx() as conn:
                acks = store.clock_acks(conn)
            behind = [q for q in parts if q not in acks or acks[q] < to]
            if not behind:
                return len(parts)
            if time.monotonic() > deadline:
                raise StackError(f"clock tick not applied by partitions {behind}")
            time.sleep(0.1)
    finally:
        store.dispose()
