"""Four changes to faust-streaming 0.15's consumer and streams, applied by :func:`apply`.

1. **Fetch wait.** faust-streaming hard-codes a 1,500 ms ``fetch_max_wait_ms``; the embedded
   broker (Tansu) holds a fetch until this timeout even when data arrives, which put ~0.5 s
   on every hop of the pipeline. :data:`fetch_max_wait_ms` (default 20 ms) replaces it
   (``LOYALTY_CDP_FETCH_MAX_WAIT_MS``); a short wait costs a few idle requests per second.

2. **One wait per fetched batch, not per message.** ``Consumer._drain_messages`` hands every
   message to the agents through ``wait_first(callback(message), suspend_flow.wait())``,
   which creates four asyncio tasks per message (the callback, the flow event, and mode's
   stopped/crashed events). On this machine a bare aiokafka ``getmany`` loop reads ~225,000
   messages/s from Tansu, a Faust agent taking 5,000-message batches ~4,000/s, most of it in
   that per-message task churn. The replacement delivers a whole fetched batch inside one
   ``wait_first``: the same race against a flow suspension (a rebalance), with the same
   outcome (what was fetched but not yet delivered is dropped and re-read from the committed
   offsets after the rebalance), at one set of tasks per fetch. The offset, gap and
   commit-every bookkeeping per message is Faust's own, unchanged; a message whose delivery
   outlived a flow stop or a new generation does not move the read offset (see
   ``_drain_messages``).

3. **A batch is acknowledged only when the agent finished it.** ``Stream.take_events`` acks
   the events of the batch it yielded in a ``finally``: also when the agent's loop body
   raised or was cancelled. A worker that stops (SIGTERM) cancels its agents first and
   commits its acknowledged offsets last, so a batch whose work was cancelled, or never ran
   (a profile batch queued on its stage thread behind the wall-clock timer), was committed
   as done and its messages never reached the next owner of the partition: the rebalance
   test once lost a purchase this way. The replacement acks a batch only when the agent
   asks for the next one; an unfinished batch stays unacknowledged and is redelivered to
   whoever owns the partition next (at-least-once; the stages are idempotent).

4. **The next batch fills while the agent works on one.** Faust's ``take_events`` stops
   filling while the agent works and then waits its whole ``within`` window before every
   batch (unless ``max_`` events arrive first); ours keeps filling and hands the next batch
   on as soon as the agent asks. Batches then size themselves to the load (what arrived
   during the last one) and only an idle stage lingers, ``within`` after its first event
   (``LOYALTY_CDP_BATCH_WITHIN_MS``). Both are in ``_take_events``.

All are monkeypatches of a pinned dependency (``faust-streaming>=0.15,<0.16`` in
pyproject); ``tests/test_faust_patches.py`` checks they are in place, and the integration
tests (``test_profiles_pipeline``, ``test_rebalance``: exact results with a worker killed,
joining and leaving mid-stream) run real workers with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

__all__ = ["apply", "fetch_max_wait_ms"]

#: The fetch wait every consumer created from now on gets (set by :func:`apply`).
fetch_max_wait_ms = 20

_YIELD_EVERY = 100  # Faust's own: give the loop a turn every 100 messages


def apply(fetch_wait_ms: int = 20, batched_drain: bool = True) -> None:
    """Install the patches (idempotent). ``fetch_wait_ms`` is ``LOYALTY_CDP_FETCH_MAX_WAIT_MS``;
    ``batched_drain=False`` (``LOYALTY_CDP_FAUST_BATCHED_DRAIN=0``) keeps Faust's own
    per-message drain (an escape hatch, and the A/B of the benchmark)."""
    global fetch_max_wait_ms
    fetch_max_wait_ms = fetch_wait_ms
    _short_fetch_wait()
    if batched_drain:
        _batched_drain()
    _ack_finished_batches_only()


def _short_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as driver

    original = driver.aiokafka.AIOKafkaConsumer
    if getattr(original, "_loyalty_cdp_patched", False):
        return

    class Consumer(original):  # type: ignore[misc, valid-type]
        _loyalty_cdp_patched = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = fetch_max_wait_ms
            super().__init__(*args, **kwargs)

    driver.aiokafka.AIOKafkaConsumer = Consumer


def _batched_drain() -> None:
    from faust.transport.consumer import Consumer

    if getattr(Consumer._drain_messages, "_loyalty_cdp_patched", False):
        return
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]


async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - via a worker
    """``faust.transport.consumer.Consumer._drain_messages`` with one wait per batch."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    from faust.transport.consumer import CONSUMER_FETCHING

    async def deliver(batch: list[tuple[Any, Any]], generation: Any) -> None:
        for n, (tp, message) in enumerate(batch, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            # as Faust's getmany does between messages: stop at a flow stop or a new
            # generation (a rebalance); the rest is re-read from the committed offsets
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await callback(message)
                # the callback can wait (a full stream queue, a commit in flight) across a
                # rebalance that popped this partition's read offset and sought it to the
                # committed one: a stale offset written now would drop the re-read messages
                # below it (Faust's "DROPPED MESSAGE ROFF")
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return
                set_read_offset(tp, offset)

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(CONSUMER_FETCHING)
            batch = [item async for item in cast(Any, getmany(timeout=1.0))]
            # read after the fetch: getmany yields its records without awaiting, so this is
            # the generation it checked them against
            generation = self.app.consumer_generation_id
            await self.sleep(0)
            if batch and not self.should_stop:
                await self.wait_first(deliver(batch, generation), self.suspend_flow.wait())
            self.diag.unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        self.diag.unset_flag(CONSUMER_FETCHING)


_drain_messages._loyalty_cdp_patched = True  # type: ignore[attr-defined]


def _ack_finished_batches_only() -> None:
    from faust import streams

    if getattr(streams.Stream.take_events, "_loyalty_cdp_patched", False):
        return
    patched = streams._tracks_buffer_agen(_take_events)
    patched._loyalty_cdp_patched = True  # type: ignore[attr-defined]
    streams.Stream.take_events = patched  # type: ignore[method-assign]


async def _take_events(self: Any, max_: int, within: Any) -> AsyncGenerator[list[Any], None]:
    """``faust.streams.Stream.take_events`` with two changes (module doc, 3 and 4).

    * A batch is acknowledged only after the agent's loop body returned for it.
    * The next batch fills while the agent works on the current one, and is handed on as
      soon as the agent asks for it. Only an idle stream waits: from its first event, up
      to ``within`` for more (or until ``max_``). Faust's own blocks the buffer while the
      agent works and then waits ``within`` again before every batch, so at a steady rate
      every stage added its whole window to the latency on top of its work.

    As in Faust's, a processor on the stream fills the batch (the stream's passive
    iteration), at most ``max_`` events are handed on at once, and a full batch holds the
    stream back (the consumer pauses when the stream's queue is full).
    """
    from mode import want_seconds
    from mode.utils.aiter import aiter

    batch: list[Any] = []  # the batch being filled
    arrived = asyncio.Event()  # the filling batch is no longer empty
    full = asyncio.Event()  # ... has max_ events
    room = asyncio.Event()  # ... was handed on: the processor may add again
    linger = want_seconds(within) if within else 0.0
    stream_enable_acks: bool = self.enable_acks
    channel_it = aiter(self.channel)

    async def add_to_batch(value: Any) -> Any:
        try:
            while len(batch) >= max_:
                room.clear()
                await self.wait(room)
            event = self.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            batch.append(event)
            arrived.set()
            if len(batch) >= max_:
                full.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("Error adding to take buffer: %r", exc)
            await self.crash(exc)
        return value

    self.enable_acks = False  # acked here, once the agent is done with them
    self.add_processor(add_to_batch)
    self._enable_passive(channel_it)
    try:
        while not self.should_stop:
            if not batch:
                await self.wait_for_stopped(arrived, timeout=1.0)
                if not batch:
                    continue
                if linger and not full.is_set():
                    await self.wait_for_stopped(full, timeout=linger)
            events = batch[:max_]
            del batch[:max_]
            if not batch:
                arrived.clear()
            full.clear()
            room.set()
            finished = False
            try:
                yield events
                finished = True  # resumed by the agent: its body returned
            finally:
                if finished:
                    for event in events:
                        await self.ack(event)
    finally:
        self.enable_acks = stream_enable_acks
        self._processors.remove(add_to_batch)
