"""Wires the identity and profile stages into the worker's Faust app.

The stages' batch work is blocking (PostgreSQL, the domain fold), so it runs off the event
loop, which stays free for Faust's heartbeats and fetches: the identity stage on its own
single-thread executor, called by the canonical agent with each batch it published
(:func:`identity_resolver`; ``streams/canonical.py`` says why it no longer consumes
``cdp.events``), the profile stage in a child process (streams/profile_process.py) or, with
``LOYALTY_CDP_PROFILE_PROCESS=0``, on a thread, as the agent of ``cdp.resolved``. Either
executor runs one call at a time, in order, so a stage's batches are strictly sequential
(the profile stage's timer and rebalance callbacks go through the same executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import faust

from app.settings import worker_tuning
from streams.identity import IdentityStage
from streams.profile_process import ProfileHandle
from streams.topics import RESOLVED

if TYPE_CHECKING:  # streams.canonical imports this module (crash_on_failure)
    from streams.canonical import Canonical, Resolve

log = logging.getLogger("loyalty_cdp.stages")



async def run_stage(app: faust.App, executor: Executor, fn: Any, *args: Any) -> Any:
    """Run a stage's blocking batch on its executor (returns its result); a failure crashes
    the worker.

    The state is durable in the store, so crashing loudly and restarting resumes exactly;
    carrying on after a failed batch could ack input that was never applied.
    """
    async with crash_on_failure(app, "stage"):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


@contextlib.asynccontextmanager
async def crash_on_failure(app: faust.App, what: str) -> AsyncIterator[None]:
    """Crash the worker (logged) when the block raises; the exception goes on.

    The batch stays unacknowledged (``take_events`` acks a batch only once its agent's body
    returned), so a restarted worker resumes it; Faust's own supervisor would restart the
    agent instead, which reads on past the batch.
    """
    try:
        yield
    except Exception as exc:
        log.exception("%s failed; stopping the worker", what)
        await app.crash(exc)
        raise


def identity_resolver(app: faust.App, identity: IdentityStage) -> Resolve:
    """The canonical agent's ``resolve``: a batch of canonical events through the identity
    stage on its own thread (one transaction per batch, so its working set grows with the
    canonical agent's batch)."""
    ident_exec = ThreadPoolExecutor(1, thread_name_prefix="identity")

    async def resolve(batch: list[Canonical]) -> None:
        await run_stage(app, ident_exec, identity.process, batch)

    return resolve


def register_stages(app: faust.App, profiles: ProfileHandle) -> None:
    """The profile stage's agent, its wall-clock timer and rebalance callbacks.

    Batch size and linger (``LOYALTY_CDP_STAGE_BATCH``, ``LOYALTY_CDP_BATCH_WITHIN_MS``): the
    profile stage writes a batch in chunks of profiles (``LOYALTY_CDP_PROFILE_CHUNK``). What
    arrives while it works is its next batch, handed on at once; only an idle stage waits,
    up to ``within`` after its first message, for more to batch with it (``take_events`` in
    streams/faust_patches.py).
    """
    tuning = worker_tuning()
    batch, within = tuning.stage_batch, tuning.batch_within_ms / 1000

    async def profile_call(name: str, *args: Any) -> None:
        async with crash_on_failure(app, "profile stage"):
            await profiles.call(name, *args)

    resolved = app.topic(RESOLVED, key_serializer="raw", value_serializer="raw")

    @app.agent(resolved, name="profiles")
    async def profiles_agent(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(batch, within=within):
            notes = [(e.message.partition, e.message.value) for e in events]
            await profile_call("process", notes)
            del events, notes

    @app.timer(1.0)
    async def wall_clock() -> None:
        await profile_call("advance_wall_clock")

    @app.on_partitions_assigned.connect  # type: ignore[misc]
    async def on_assigned(app: faust.App, assigned: set[Any], **_: Any) -> None:
        parts = [tp.partition for tp in assigned if tp.topic == RESOLVED]
        if parts:
            await profile_call("assign", parts)

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def on_revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        parts = [tp.partition for tp in revoked if tp.topic == RESOLVED]
        if parts:
            await profile_call("revoke", parts)
