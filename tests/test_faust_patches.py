"""The faust-streaming patches of streams/faust_patches.py are installed by build_app."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from streams import faust_patches
from streams.app import WorkerSettings, build_app


def test_build_app_installs_both_patches(tmp_path: Path) -> None:
    build_app(WorkerSettings(broker="127.0.0.1:1", web_port=1, data_dir=tmp_path))
    assert Consumer._drain_messages is faust_patches._drain_messages
    assert getattr(driver.aiokafka.AIOKafkaConsumer, "_loyalty_cdp_patched", False)


def test_patches_are_idempotent() -> None:
    faust_patches.apply()
    cls = driver.aiokafka.AIOKafkaConsumer
    faust_patches.apply()
    assert driver.aiokafka.AIOKafkaConsumer is cls
    assert Consumer._drain_messages is faust_patches._drain_messages


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
