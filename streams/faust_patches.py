"""Two measured fixes to faust-streaming 0.15's consumer, applied by :func:`apply`.

1. **Fetch wait.** faust-streaming hard-codes a 1,500 ms ``fetch_max_wait_ms``; the embedded
   broker (Tansu) holds a fetch until this timeout even when data arrives, which put ~0.5 s
   on every hop of the pipeline. :data:`FETCH_MAX_WAIT_MS` (default 20 ms) replaces it
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
   commit-every bookkeeping per message is Faust's own, unchanged.

Both are monkeypatches of a pinned dependency (``faust-streaming>=0.15,<0.16`` in
pyproject); ``tests/test_faust_patches.py`` checks they are in place, and the integration
tests (``test_profiles_pipeline``, ``test_rebalance``: exact results with a worker killed,
joining and leaving mid-stream) run real workers with them.
"""

from __future__ import annotations

import asyncio
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
