"""The decisioning agent in a child process of the worker, reading its input itself.

Why a process: a decision is ~0.2-1 ms of pure Python per moment (candidates, scoring,
explanations, two JSON documents), and in the worker's process it shared one GIL with the
identity and profile stages: on 2 cores the decisions took more CPU than both stages
together and slowed them down. In a child process it runs on the other core.

Why its own consumer (session 7; until then the worker's Faust agents consumed
``loyalty.events`` and ``cdp.guest_purchases`` and handed each batch over): decisioning
runs below the stages' priority and falls behind them under load, by design. On the
worker's one Faust consumer that backlog held the stages up: Faust delivers every fetched
message before the next fetch and waits when a stream's queue is full, and aiokafka sends no
fetch to a broker while a paused partition's records sit unconsumed (its 100 ms prefetch
backoff), so at 1,000 rows/s a change event reached the canonical agent 0.4-0.8 s after it
was on its topic although the worker's threads were idle half the time. The loyalty events
were also ~40% of the messages the worker's event loop delivered (~0.1 ms each).

Now the child consumes in its own group (``loyalty-cdp-decisions``, :data:`DECISIONS_GROUP`)
with a confluent-kafka consumer: it takes a batch, runs :class:`DecisionAgent` on it exactly
as before (loyalty moments, then guest purchases), and commits the batch's offsets only after
the agent committed its decisions (at-least-once: a batch redelivered after a crash is
skipped moment by moment, the ``decisions`` table holds each moment once). Several workers'
children share the group; the per-profile advisory lock serialises two of them on one
profile, as before. Its fetch wait is ``LOYALTY_CDP_DECISIONS_FETCH_WAIT_MS`` (100 ms):
offers are not in the stages' latency budget, and idle fetches cost the broker.

First start on a deployment that ran the Faust agents: a partition the new group has no
offset for starts at the worker group's committed offset (what the Faust agent had
decided), so nothing is decided twice or skipped; with neither, at the earliest offset.

Priority: it runs ``LOYALTY_CDP_DECISIONS_NICE`` (5) steps below the stages that feed it
(app/stack/process.py ``decisions_nice``), and so do the PostgreSQL processes of its store
connections when the server is on this host (``Store(backend_nice=)``): on a saturated host
the loyalty events come first.

Lifetime: started with the ``spawn`` method (the worker has threads; forking them is
unsafe), it ignores Ctrl-C. The worker stops it with SIGTERM on shutdown (it finishes its
batch, commits and leaves the group); when the worker dies (e.g. SIGKILL) the child notices
within 0.5 s and does the same, and a watchdog ends it 10 s later if it has not, so no
orphan keeps store connections or advisory locks. A child that dies is replaced
(:class:`DecisionProcess`); more than 5 deaths in 60 s crash the worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.child_process import RestartBudget, become_child
from streams.topics import DECISIONS_GROUP, DECISIONS_INPUT, LOYALTY, WORKER_GROUP

if TYPE_CHECKING:
    from streams.decisioning import DecisionAgent

__all__ = ["PROCESS_NAME", "DecisionProcess", "consumer_config", "run_batch"]

log = logging.getLogger("loyalty_cdp.decisions")

#: what ``ps``/``top`` (``/proc/<pid>/comm``) show for the child
PROCESS_NAME = "lcdp-decisions"
#: messages per batch, and how long an idle consumer waits to fill one
BATCH = 5000
WITHIN_S = 0.1
#: seconds an orphaned child has to finish its batch and leave the group
ORPHAN_GRACE_S = 10.0


class DecisionProcess:
    """The worker's handle on its decisioning child: start it, replace it when it dies,
    stop it on shutdown."""

    def __init__(self, broker: str, clock: str, store_dsn: str) -> None:
        self.args = (broker, clock, store_dsn)
        self.proc: BaseProcess | None = None
        self.stopping = False
        self.budget = RestartBudget()  # 5 replacements in 60 s

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.proc = ctx.Process(target=_main, args=(*self.args, os.getpid()), name=PROCESS_NAME)
        self.proc.start()

    def check(self) -> None:
        """Replace a dead child (the worker's 1 s timer); raise when it dies too often."""
        proc = self.proc
        if self.stopping or proc is None or proc.is_alive():
            return
        if not self.budget.spend():
            raise RuntimeError(
                f"the decisioning process died too often (last exit code {proc.exitcode})"
            )
        log.warning("the decisioning process exited (code %s); starting a new one", proc.exitcode)
        self.start()

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: whether the child runs, its pid and how often it was replaced
        in the last minute."""
        proc = self.proc
        return {
            "alive": proc is not None and proc.is_alive(),
            "pid": None if proc is None else proc.pid,
            "restarts_last_minute": len(self.budget.recent()),
        }

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: the child finishes its batch, commits and leaves the group."""
        self.stopping = True
        proc = self.proc
        if proc is None or not proc.is_alive():
            return
        proc.terminate()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def consumer_config(broker: str, fetch_wait_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker,
        "group.id": DECISIONS_GROUP,
        "enable.auto.commit": False,  # committed after the agent's own commit
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": fetch_wait_ms,
        # fetch a partition again only once its fetched messages were taken: librdkafka
        # otherwise keeps a fetch outstanding all the time (up to 100,000 queued messages a
        # partition), and the embedded broker spends CPU on a fetch for as long as it holds
        # it: 16 busy partitions cost it ~0.19 of a core, ~0.03 this way
        # (docs/benchmarks-history.md, session 7)
        "queued.min.messages": 1,
        # the embedded broker's first group join takes ~25 s at the default 45 s
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 2000,
    }


def run_batch(agent: DecisionAgent, messages: Sequence[Any]) -> int:
    """Decide one consumed batch (loyalty moments, then guest purchases); returns how many
    messages it held. Consumer errors are informational (librdkafka recovers by itself)."""
    loyalty: list[bytes] = []
    guests: list[bytes] = []
    for m in messages:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("decisioning consumer: %s", err)
            continue
        (loyalty if m.topic() == LOYALTY else guests).append(m.value())
    if loyalty:
        agent.process_loyalty(loyalty)
    if guests:
        agent.process_canonical(guests)
    return len(loyalty) + len(guests)


def _start_where_the_worker_group_was(broker: str) -> Any:
    """``on_assign``: a partition without an offset of this group starts at the worker
    group's committed one (the Faust agents that decided before session 7), if any."""

    def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        fresh = [
            tp for tp in consumer.committed(partitions, timeout=10) if tp.offset < 0
        ]
        if fresh:
            old = Consumer({"bootstrap.servers": broker, "group.id": WORKER_GROUP})
            try:
                starts = {
                    (tp.topic, tp.partition): tp.offset
                    for tp in old.committed(
                        [TopicPartition(t.topic, t.partition) for t in fresh], timeout=10
                    )
                    if tp.offset >= 0
                }
            finally:
                old.close()
            for tp in partitions:
                if (tp.topic, tp.partition) in starts:
                    tp.offset = starts[(tp.topic, tp.partition)]
        consumer.assign(partitions)

    return on_assign


def _build_agent(broker: str, clock: str, store_dsn: str) -> DecisionAgent:
    from app.decisioning import load_catalog
    from app.domain.program import load_program
    from app.settings import settings
    from streams.decisioning import DecisionAgent, offers_file
    from streams.producer import BatchProducer
    from streams.store import Store

    program = load_program(settings().program_file).compile()
    return DecisionAgent(
        program,
        load_catalog(offers_file()),
        Store(
            store_dsn,
            backend_nice=os.getpriority(os.PRIO_PROCESS, 0),  # its own; see Store
            application_name="loyalty-cdp decisions",
        ),
        BatchProducer(broker),
        broker,
        clock=clock,
    )


def _main(broker: str, clock: str, store_dsn: str, parent: int) -> None:
    """The child: consume, decide, commit, until SIGTERM or the worker is gone."""
    stop = threading.Event()
    become_child(parent, PROCESS_NAME, orphaned=stop, grace=ORPHAN_GRACE_S)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from app.settings import worker_tuning
    from app.stack.process import decisions_nice

    with contextlib.suppress(OSError):
        os.nice(decisions_nice())  # validated by the worker before it started
    agent = _build_agent(broker, clock, store_dsn)
    consumer = Consumer(consumer_config(broker, worker_tuning().decisions_fetch_wait_ms))
    consumer.subscribe(list(DECISIONS_INPUT), on_assign=_start_where_the_worker_group_was(broker))
    try:
        while not stop.is_set():
            messages = consumer.consume(BATCH, WITHIN_S)
            if messages and run_batch(agent, messages):
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:  # e.g. the partitions moved meanwhile
                    # the batch is redelivered to their owner, which skips its moments
                    log.warning("decisioning offsets not committed: %s", exc)
    finally:
        consumer.close()  # leaves the group: its partitions move at once
