"""The profile stage's blocking work, in a child process of the worker (or on a thread).

Why a process: at 1,000 rows/s the worker's one GIL was saturated (py-spy: Faust's event
loop 39%, aiokafka's consumer thread 23%, the identity stage 18%, the profile stage 23%), so
a notification waited for the profile batch before its own and then for its own, each
running on under a quarter of a core: the profile stage was the hop with most of the
latency (docs/benchmarks-history.md, session 5). In a process of its own the fold, the store
round trips and the publication run beside the worker's delivery and identity work, on the
other core.

What stays the same: the Faust agent in the worker consumes ``cdp.resolved`` and awaits
each batch before it takes the next, and acknowledges it only once the batch returned, so
offsets are committed only after the profiles are committed and their events published.
The wall-clock timer and the rebalance callbacks go to the same single-process pool, which
serves its queue in order: as on the stage thread before, a stage's calls are strictly
sequential. The child has its own store connections (``application_name`` ``loyalty-cdp
profiles``), producer and outbox; what it parses it reads from the store (the in-process
hand-over of parsed records, :mod:`streams.parsed_records`, only works on a thread).

Each call returns a :data:`Report`: the stage's counters, what its outbox published, the
loyalty events per type and the batch durations since the last report, which the worker's
``/healthz`` and ``/metrics`` show (:class:`ProfileHandle`).

``LOYALTY_CDP_PROFILE_PROCESS=0`` runs the same calls on a thread of the worker instead
(the design before session 6), e.g. on a one-core host.

Lifetime (:mod:`streams.child_process`, as the decisioning process): ``spawn``, it
ignores Ctrl-C, and a watchdog exits it when the worker dies (a SIGKILL included), so no
orphan keeps store connections or a partition's advisory lock. A child that dies breaks
its pool: :class:`ProfileHandle` starts a new one and makes the call again (too many
deaths in a row crash the worker, whose restart resumes from the committed offsets and
the store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from streams.child_process import RestartBudget, become_child, spawn_pool
from streams.gc_freeze import GcFreezer, count_gc
from streams.profiles import COUNTS, ProfileStage
from streams.topics import LOYALTY

__all__ = [
    "PROCESS_NAME",
    "ProfileHandle",
    "ProfileHost",
    "Report",
    "advance_wall_clock",
    "assign",
    "process",
    "revoke",
    "start_pool",
]

log = logging.getLogger("loyalty_cdp.profile_process")

#: what ``ps``/``top`` (``/proc/<pid>/comm``) show for the child; ``bench`` finds it by it
PROCESS_NAME = "lcdp-profiles"
_TYPE_MARK = b'"type":"loyalty.'

#: ``counts`` (the stage's), ``published`` (topic -> messages) and ``types`` (loyalty
#: event type -> published), all since the stage started; ``batch_seconds``: the duration
#: of each batch since the previous report.
Report = dict[str, Any]


def event_type(payload: bytes) -> str:
    """The event type from the start of a CloudEvent (``"type":"loyalty.X"`` precedes data),
    without a JSON parse."""
    i = payload.find(_TYPE_MARK)
    if i < 0:
        return "unknown"
    i += len(_TYPE_MARK)
    return payload[i : payload.index(b'"', i)].decode()


class ProfileHost:
    """Where the stage runs: its calls, each returning a :data:`Report`.

    ``freezer`` (the child process): after every call the young garbage is collected and
    the survivors, the member states above all, are frozen out of the collector's reach
    (streams/gc_freeze.py).
    """

    def __init__(
        self,
        stage: ProfileStage,
        trim: Callable[[], object] | None = None,
        *,
        freezer: GcFreezer | None = None,
        gc_counts: bool = True,
    ) -> None:
        """``gc_counts``: count this process's collector into the stage's counters; off on
        a thread of the worker, whose own counters (``worker_gc``) already cover the
        process (both would report the same collections)."""
        self.stage = stage
        self.freezer = freezer
        self.types: Counter[str] = Counter()
        self._seconds: list[float] = []
        self._trim = trim
        publish = stage.outbox.publish

        def counted(rows: Sequence[Any]) -> None:
            publish(rows)
            self.types.update(event_type(r.payload) for r in rows if r.topic == LOYALTY)

        stage.outbox.publish = counted  # type: ignore[method-assign]
        if gc_counts:
            count_gc(stage.counts)

    def report(self) -> Report:
        seconds, self._seconds = self._seconds, []
        if self.freezer is not None:
            self.freezer.settle()
        if self._trim is not None:
            self._trim()
        return {
            "counts": dict(self.stage.counts),
            "published": dict(self.stage.outbox.published),
            "types": dict(self.types),
            "batch_seconds": seconds,
        }

    def process(self, notes: Sequence[tuple[int, bytes]]) -> Report:
        t0 = time.perf_counter()
        try:
            self.stage.process(notes)
        finally:
            self._seconds.append(time.perf_counter() - t0)
        return self.report()

    def advance_wall_clock(self) -> Report:
        self.stage.advance_wall_clock()
        return self.report()

    def assign(self, partitions: Sequence[int]) -> Report:
        self.stage.assign(partitions)
        return self.report()

    def revoke(self, partitions: Sequence[int]) -> Report:
        self.stage.revoke(partitions)
        return self.report()

    def calls(self) -> dict[str, Callable[..., Report]]:
        """The calls of a :class:`ProfileHandle` that runs this host on a thread (the same
        names as the child's, :data:`CHILD_CALLS`)."""
        return {name: getattr(self, name) for name in CHILD_CALLS}


class ProfileHandle:
    """The worker's side: runs the stage's calls on ``executor`` (the child's pool, or a
    thread) and keeps the last report for ``/healthz`` and ``/metrics``.

    ``calls`` are ``process``, ``advance_wall_clock``, ``assign`` and ``revoke``: this
    module's functions for the child, a :class:`ProfileHost`'s bound methods on a thread.

    A child that died (killed, out of memory) is replaced by ``restart`` when given: the new
    child is told the partitions this worker holds and the call is made again. That is exact
    because the child's state is a cache of the store: the interrupted batch was not
    acknowledged and a re-run applies only what the store does not have yet (the versions
    of what the dead child committed no longer match an empty cache, so it reloads). More
    than ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW_S`` raise instead: something is
    wrong that a new child will not fix, and the worker crashes (streams/stages.py).
    """

    MAX_RESTARTS = 5
    RESTART_WINDOW_S = 60.0

    def __init__(
        self,
        executor: Executor,
        calls: dict[str, Callable[..., Report]],
        restart: Callable[[], Executor] | None = None,
    ) -> None:
        self.executor = executor
        self.calls = calls
        self.restart = restart
        self.counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
        self.published: Counter[str] = Counter()
        self.types: Counter[str] = Counter()  # loyalty events published, by type
        self._base_counts: dict[str, int] = {}  # of the children before this one
        self._base_published: Counter[str] = Counter()
        self._child_types: Counter[str] = Counter()  # as this child last reported them
        #: called with each report (``/metrics`` observes durations and new events)
        self.listeners: list[Callable[[Report, Counter[str]], None]] = []
        self.assigned: set[int] = set()  # what a replacement child is told it holds
        self.budget = RestartBudget(self.MAX_RESTARTS, self.RESTART_WINDOW_S)
        self._lock = asyncio.Lock()

    async def call(self, name: str, *args: Any) -> None:
        """Run one call of the stage and take its report (a dead child is replaced)."""
        loop = asyncio.get_running_loop()
        while True:
            executor = self.executor
            try:
                report = await loop.run_in_executor(executor, self.calls[name], *args)
                break
            except BrokenProcessPool:
                await self._replace(executor)
        if name == "assign":
            self.assigned.update(args[0])
        elif name == "revoke":
            self.assigned.difference_update(args[0])
        self.apply(report)

    async def _replace(self, broken: Executor) -> None:
        async with self._lock:
            if self.executor is not broken:
                return  # a concurrent call replaced it already
            if self.restart is None or not self.budget.spend():
                raise BrokenProcessPool("the profile process died too often; giving up")
            self._base_counts, self._base_published = dict(self.counts), Counter(self.published)
            self._child_types = Counter()
            log.warning("the profile process died; starting a new one")
            broken.shutdown(wait=False)
            self.executor = self.restart()
            if self.assigned:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.calls["assign"], sorted(self.assigned)
                )

    def apply(self, report: Report) -> None:
        """Take a child's report; figures add up across children (a replacement starts at 0),
        so ``/metrics`` counters never go back."""
        self.counts = {k: self._base_counts.get(k, 0) + v for k, v in report["counts"].items()}
        self.published = self._base_published + Counter(report["published"])
        types: Counter[str] = Counter(report["types"])
        new = types - self._child_types
        self._child_types = types
        self.types += new
        for listener in self.listeners:
            listener(report, new)


def start_pool(broker: str, clock: str, store_dsn: str, partitions: int) -> ProcessPoolExecutor:
    """The one-process pool (started now, so the first call does not wait for its imports)."""
    pool = spawn_pool(_init, broker, clock, store_dsn, partitions)
    pool.submit(int)  # starts the process
    return pool


_HOST: ProfileHost | None = None  # the child's stage


def _init(broker: str, clock: str, store_dsn: str, partitions: int, parent: int) -> None:
    global _HOST
    become_child(parent, PROCESS_NAME)
    from app.domain.program import load_program
    from app.settings import settings
    from streams.malloc_trim import make_trimmer
    from streams.outbox import Outbox
    from streams.producer import BatchProducer
    from streams.store import Store

    program = load_program(settings().program_file).compile()
    store = Store(store_dsn, application_name="loyalty-cdp profiles")
    out = BatchProducer(broker)
    stage = ProfileStage(program, store, out, Outbox(store, out, broker), partitions, clock=clock)
    trimmer = make_trimmer()  # the worker's own timer trims the worker
    check = trimmer.check if trimmer is not None else None
    _HOST = ProfileHost(stage, check, freezer=GcFreezer())


def _host() -> ProfileHost:
    if _HOST is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("profile process not initialised")
    return _HOST


def process(notes: Sequence[tuple[int, bytes]]) -> Report:
    return _host().process(notes)


def advance_wall_clock() -> Report:
    return _host().advance_wall_clock()


def assign(partitions: Sequence[int]) -> Report:
    return _host().assign(partitions)


def revoke(partitions: Sequence[int]) -> Report:
    return _host().revoke(partitions)


CHILD_CALLS: dict[str, Callable[..., Report]] = {
    "process": process,
    "advance_wall_clock": advance_wall_clock,
    "assign": assign,
    "revoke": revoke,
}
