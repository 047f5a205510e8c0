"""The decisioning process's own consumer, on a real broker (Tansu, the embedded stack's):
the group it commits in, where a new group starts (the worker group's offsets, else the
earliest), a batch split by topic; and the restart budget of the worker's children.

The whole child (consume, decide, commit, replaced when SIGKILLed) runs on the real stack in
``tests/integration/test_decisioning.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from app.stack.broker import start_broker
from app.stack.ports import free_port
from app.stack.process import ManagedProcess
from streams import decision_process
from streams.child_process import RestartBudget
from streams.topics import DECISIONS_GROUP, DECISIONS_INPUT, LOYALTY, WORKER_GROUP


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d: Path = tmp_path_factory.mktemp("tansu")
    proc = ManagedProcess("broker", d, d)
    bootstrap = start_broker(proc, free_port())
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(t, 2, 1) for t in DECISIONS_INPUT]).values():
            f.result()
        p = Producer({"bootstrap.servers": bootstrap})
        for i in range(10):
            for topic in DECISIONS_INPUT:
                p.produce(topic, b"%s-%d" % (topic.encode(), i), partition=i % 2)
        assert p.flush(30) == 0
        yield bootstrap
    finally:
        proc.stop(timeout=5)


def _commit(bootstrap: str, group: str, offsets: list[TopicPartition]) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        c.commit(offsets=offsets, asynchronous=False)
    finally:
        c.close()


def _first_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    """Subscribe as the decisioning process does; the first offset read per partition."""
    c = Consumer(decision_process.consumer_config(bootstrap, 10))
    on_assign = decision_process._start_where_the_worker_group_was(bootstrap)
    c.subscribe(list(DECISIONS_INPUT), on_assign=on_assign)
    first: dict[tuple[str, int], int] = {}
    try:
        for _ in range(100):
            for m in c.consume(100, 0.2):
                if m.error() is None:
                    first.setdefault((m.topic(), m.partition()), m.offset())
            if len(first) == 4:
                break
    finally:
        c.close()
    return first


def test_a_new_group_starts_where_the_worker_group_was(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = f"decisions-{uuid.uuid4().hex}"
    monkeypatch.setattr(decision_process, "DECISIONS_GROUP", group)
    worker = f"worker-{uuid.uuid4().hex}"
    monkeypatch.setattr(decision_process, "WORKER_GROUP", worker)
    # the Faust agent had decided loyalty.events/0 up to offset 3 (and nothing else)
    _commit(broker, worker, [TopicPartition(LOYALTY, 0, 3)])
    first = _first_offsets(broker)
    assert first == {
        (LOYALTY, 0): 3,
        (LOYALTY, 1): 0,
        ("cdp.guest_purchases", 0): 0,
        ("cdp.guest_purchases", 1): 0,
    }
    # once the group has its own offsets, the worker group's no longer matter
    _commit(broker, group, [TopicPartition(LOYALTY, 1, 4)])
    _commit(broker, worker, [TopicPartition(LOYALTY, 1, 1)])
    assert _first_offsets(broker)[(LOYALTY, 1)] == 4


def test_the_group_is_its_own() -> None:
    conf = decision_process.consumer_config("h:1", 100)
    assert conf["group.id"] == DECISIONS_GROUP != WORKER_GROUP
    assert conf["enable.auto.commit"] is False  # committed after the decisions
    assert conf["fetch.wait.max.ms"] == 100
    assert conf["queued.min.messages"] == 1  # no fetch held while a batch is decided


class _Msg:
    def __init__(self, topic: str, value: bytes, error: Any = None) -> None:
        self._topic, self._value, self._error = topic, value, error

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def error(self) -> Any:
        return self._error


class _Agent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []

    def process_loyalty(self, values: list[bytes]) -> None:
        self.calls.append(("loyalty", values))

    def process_canonical(self, values: list[bytes]) -> None:
        self.calls.append(("guests", values))


class _Err:
    def code(self) -> int:
        return -191  # _PARTITION_EOF


def test_a_batch_is_split_by_topic_loyalty_first() -> None:
    agent = _Agent()
    msgs = [
        _Msg("cdp.guest_purchases", b"g1"),
        _Msg(LOYALTY, b"l1"),
        _Msg(LOYALTY, b"", _Err()),
        _Msg(LOYALTY, b"l2"),
    ]
    assert decision_process.run_batch(agent, msgs) == 3  # type: ignore[arg-type]
    assert agent.calls == [("loyalty", [b"l1", b"l2"]), ("guests", [b"g1"])]
    assert decision_process.run_batch(agent, [_Msg(LOYALTY, b"", _Err())]) == 0  # type: ignore[arg-type]


def test_restart_budget() -> None:
    budget = RestartBudget(limit=2, window=60.0)
    assert budget.spend() and budget.spend()
    assert not budget.spend()  # a third death within the window: give up
    assert len(budget.recent()) == 2  # what /healthz shows as restarts_last_minute
    budget.times = [t - 61 for t in budget.times]  # a minute later the budget is back
    assert budget.spend()
