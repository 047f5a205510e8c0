"""Registers the identity and profile stages as Faust agents on the worker's app.

The stages' batch work is blocking (PostgreSQL, the domain fold), so it runs off the event
loop, which stays free for Faust's heartbeats and fetches: the identity stage on its own
single-thread executor, the profile stage in a child process (streams/profile_process.py)
or, with ``LOYALTY_CDP_PROFILE_PROCESS=0``, on a thread. Either executor runs one call at a
time, in order, so a stage's batches are strictly sequential (the profile stage's timer and
rebalance callbacks go through the same executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import faust

from app.settings import worker_tuning
from streams.identity import IdentityStage
from streams.profile_process import ProfileHandle
from streams.topics import CANONICAL, RESOLVED

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


def register_stages(app: faust.App, identity: IdentityStage, profiles: ProfileHandle) -> None:
    """The two stage agents, the profile stage's wall-clock timer and rebalance callbacks.

    Batch size and linger (``LOYALTY_CDP_STAGE_BATCH``, ``LOYALTY_CDP_BATCH_WITHIN_MS``): the
    profile stage writes a batch in chunks of profiles (``LOYALTY_CDP_PROFILE_CHUNK``); the
    identity stage resolves a batch in one transaction, so its working set grows with the
    batch size. What arrives while a stage works is its next batch, handed on at once; only
    an idle stage waits, up to ``within`` after its first message, for more to batch with it
    (``take_events`` in streams/faust_patches.py).
    """
    tuning = worker_tuning()
    batch, within = tuning.stage_batch, tuning.batch_within_ms / 1000
    ident_exec = ThreadPoolExecutor(1, thread_name_prefix="identity")

    async def profile_call(name: str, *args: Any) -> None:
        async with crash_on_failure(app, "profile stage"):
            await profiles.call(name, *args)

    canonical = app.topic(CANONICAL, key_serializer="raw", value_serializer="raw")
    resolved = app.topic(RESOLVED, key_serializer="raw", value_serializer="raw")

    @app.agent(canonical, name="identity")
    async def identity_agent(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(batch, within=within):
            await run_stage(app, ident_exec, identity.process, [e.message for e in events])
            del events  # not kept (messages and all) while the stream is idle

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
