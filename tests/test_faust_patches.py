"""The faust-streaming patches of streams/faust_patches.py are installed by build_app."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from faust.streams import Stream
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from streams import faust_patches
from streams.app import WorkerSettings, build_app


def test_build_app_installs_the_patches(tmp_path: Path) -> None:
    build_app(WorkerSettings(broker="127.0.0.1:1", web_port=1, data_dir=tmp_path))
    assert Consumer._drain_messages is faust_patches._drain_messages
    assert getattr(driver.aiokafka.AIOKafkaConsumer, "_loyalty_cdp_patched", False)
    assert getattr(Stream.take_events, "_loyalty_cdp_patched", False)


def test_patches_are_idempotent() -> None:
    faust_patches.apply()
    cls = driver.aiokafka.AIOKafkaConsumer
    take = Stream.take_events
    faust_patches.apply()
    assert driver.aiokafka.AIOKafkaConsumer is cls
    assert Consumer._drain_messages is faust_patches._drain_messages
    assert Stream.take_events is take


def test_fetch_wait_is_passed_to_aiokafka() -> None:
    faust_patches.apply()

    async def wait_ms() -> int:
        consumer = driver.aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(wait_ms()) == faust_patches.fetch_max_wait_ms == 20


def test_the_monitor_is_not_a_sensor(tmp_path: Path) -> None:
    """Faust's Monitor no longer runs on every message; the consumer can still record on it."""
    app = build_app(WorkerSettings(broker="127.0.0.1:1", web_port=1, data_dir=tmp_path))
    app.on_init_dependencies()
    assert app.monitor not in set(app.sensors)
    app.monitor.track_tp_end_offset(TP("cdp.events", 0), 10)  # used directly by Faust


async def _take_one_batch(tmp_path: Path, finish: bool) -> list[bool]:
    """A real Faust stream over an in-memory channel; the agent takes one batch of three and
    either finishes it (and waits for the next) or is cancelled in the middle of it."""
    app = build_app(WorkerSettings(broker="127.0.0.1:1", web_port=1, data_dir=tmp_path))
    app.flow_control.resume()
    channel = app.channel()
    stream = channel.stream()
    batches: list[list[Any]] = []
    in_body = asyncio.Event()

    async def agent() -> None:
        async for events in stream.take_events(3, within=30):
            batches.append(events)
            if not finish:
                in_body.set()
                await asyncio.Event().wait()  # cancelled here, mid-batch
        # (with finish, the loop asks for the next batch and waits there)

    task = asyncio.create_task(agent())
    for i in range(3):
        await channel.send(value=i)
    if finish:
        while not batches:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # back in take_events, waiting for the next batch
    else:
        await asyncio.wait_for(in_body.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await stream.stop()  # closes the take generator, as a stopping worker does
    return [e.message.acked for e in batches[0]]


def test_a_batch_is_acknowledged_once_the_agent_finished_it(tmp_path: Path) -> None:
    assert asyncio.run(_take_one_batch(tmp_path, finish=True)) == [True, True, True]


def test_a_batch_cancelled_mid_way_stays_unacknowledged(tmp_path: Path) -> None:
    """A stopping worker cancels its agents before it commits: Faust's own take_events acked
    the cancelled batch (committed, never processed, lost to the partition's next owner)."""
    assert asyncio.run(_take_one_batch(tmp_path, finish=False)) == [False, False, False]


def test_the_next_batch_fills_while_the_agent_works(tmp_path: Path) -> None:
    """Events that arrive while the agent works on a batch are its next batch, handed on as
    soon as the agent asks for it. Faust's own waited its whole ``within`` (30 s here) again
    before a batch that is not full."""

    async def scenario() -> list[list[int]]:
        app = build_app(WorkerSettings(broker="127.0.0.1:1", web_port=1, data_dir=tmp_path))
        app.flow_control.resume()
        channel = app.channel()
        stream = channel.stream()
        batches: list[list[int]] = []
        working, go_on = asyncio.Event(), asyncio.Event()

        async def agent() -> None:
            async for events in stream.take_events(4, within=30):
                batches.append([e.value for e in events])
                working.set()
                await go_on.wait()

        task = asyncio.create_task(agent())
        for i in range(4):  # a full batch goes at once
            await channel.send(value=i)
        await asyncio.wait_for(working.wait(), 10)
        for i in (4, 5):  # arrive while the agent works on [0..3]
            await channel.send(value=i)
        await asyncio.sleep(0.1)
        go_on.set()
        while len(batches) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stream.stop()
        return batches

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [[0, 1, 2, 3], [4, 5]]
