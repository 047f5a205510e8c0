"""The decisioning agent's blocking work, in a child process of the worker.

Why a process: a decision is ~0.2-1 ms of pure Python per moment (candidates, scoring,
explanations, two JSON documents), and in the worker's process it shared one GIL with the
identity and profile stages: on 2 cores the decisions took more CPU than both stages
together and slowed them down. In a child process it runs on the other core.

What stays the same: the Faust agents in the worker consume ``loyalty.events`` and
``cdp.guest_purchases`` and await each batch's completion before taking the next (so offsets
are committed only after the decisions are committed, as before); the child runs
:class:`DecisionAgent` exactly as the thread did, one batch at a time (a single-process pool
serves its queue in order). Its store connection and producer are its own.

Priority: it runs ``LOYALTY_CDP_DECISIONS_NICE`` (5) steps below the stages that feed it
(app/stack/process.py ``decisions_nice``), and so do the PostgreSQL processes of its store
connections when the server is on this host (``Store(backend_nice=)``): on a saturated host
the loyalty events come first.

Lifetime (streams/child_process.py): started with the ``spawn`` method (the worker has
threads; forking them is unsafe), it ignores Ctrl-C (the worker shuts it down), and a
watchdog thread exits it when the worker dies (e.g. SIGKILL), so no orphan keeps store
connections or advisory locks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

from streams.child_process import become_child, spawn_pool

if TYPE_CHECKING:
    from streams.decisioning import DecisionAgent

__all__ = ["guest_purchases", "loyalty", "start_pool"]

#: what ``ps``/``top`` (``/proc/<pid>/comm``) show for the child
PROCESS_NAME = "lcdp-decisions"
_AGENT: DecisionAgent | None = None  # the child's agent


def start_pool(broker: str, clock: str, store_dsn: str) -> ProcessPoolExecutor:
    return spawn_pool(_init, broker, clock, store_dsn)


def _init(broker: str, clock: str, store_dsn: str, parent: int) -> None:
    global _AGENT
    become_child(parent, PROCESS_NAME)
    from app.stack.process import decisions_nice

    with contextlib.suppress(OSError):
        os.nice(decisions_nice())  # validated by the worker before it started
    from app.decisioning import load_catalog
    from app.domain.program import load_program
    from app.settings import settings
    from streams.decisioning import DecisionAgent, offers_file
    from streams.producer import BatchProducer
    from streams.store import Store

    program = load_program(settings().program_file).compile()
    _AGENT = DecisionAgent(
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


def _agent() -> DecisionAgent:
    if _AGENT is None:  # pragma: no cover - the pool's initializer sets it
        raise RuntimeError("decisioning process not initialised")
    return _AGENT


def loyalty(values: Sequence[bytes]) -> dict[str, int]:
    """Decide a batch of ``loyalty.events`` values; returns the agent's counters."""
    agent = _agent()
    agent.process_loyalty(values)
    return agent.counts.as_dict()


def guest_purchases(values: Sequence[bytes]) -> dict[str, int]:
    """Decide a batch of ``cdp.guest_purchases`` values (canonical purchase CloudEvents);
    returns the agent's counters."""
    agent = _agent()
    agent.process_canonical(values)
    return agent.counts.as_dict()
