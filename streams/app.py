"""The Faust application of the stream workers.

Built by :func:`build_app` from explicit settings (broker, web port, data dir), so the same
code runs against the embedded Tansu broker and a production Kafka cluster. Consumer
settings follow what the embedded broker needs (``session.timeout.ms`` about 6 s, else the
first group join takes ~25 s) and are fine for Kafka too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from app.settings import worker_tuning
from streams import faust_patches

__all__ = ["WorkerSettings", "build_app"]


@dataclass(frozen=True)
class WorkerSettings:
    broker: str  # host:port[,host:port]
    web_port: int
    data_dir: Path
    app_id: str = "loyalty-cdp"
    web_host: str = "127.0.0.1"
    store_dsn: str = ""
    clock: str = "wall"  # or "manual"


class _App(faust.App):
    """``faust.App`` without its ``Monitor`` among the sensors.

    Why: Faust calls every sensor several times per message (message in, stream event in and
    out, message out), and its ``Monitor`` keeps per-topic and per-stream statistics for
    Faust's own web pages, which nobody reads here (``/metrics`` is ``streams/metrics.py``).
    The monitor object stays (the consumer records end offsets and commits on it directly);
    it just no longer runs on every message.
    """

    def on_init_dependencies(self) -> Any:
        deps = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return deps


def build_app(cfg: WorkerSettings) -> faust.App:
    """The worker's Faust app.

    ``stream_buffer_maxsize`` (``LOYALTY_CDP_STREAM_BUFFER``, Faust's default 4096; was
    16384): messages an agent's stream queues ahead of its take buffer; when the queue is
    full the consumer pauses the partition. It bounds how much of a burst sits fetched in
    the worker: `bench pipeline`, 2 runs each, 16384 / 4096 / 1024: rss_bytes_per_member
    39.4-42.2 / 36.6-39.0 / 32.7-35.3 KB, rss_bytes_per_added_member 15.9-20.0 / 13.3-14.0 /
    17.3-21.5 KB, events_per_s 744-971 / 910-1,341 / 579-665 (1024 starves the stages).
    """
    tuning = worker_tuning()
    faust_patches.apply(tuning.fetch_max_wait_ms, tuning.faust_batched_drain)
    return _App(
        cfg.app_id,
        broker=",".join(f"kafka://{b}" for b in cfg.broker.split(",")),
        datadir=str(cfg.data_dir),
        store="memory://",
        web_enabled=True,
        web_port=cfg.web_port,
        web_bind=cfg.web_host,
        web_host=cfg.web_host,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        stream_buffer_maxsize=tuning.stream_buffer,
        broker_max_poll_records=2000,
        producer_linger_ms=2,
        topic_partitions=8,
        autodiscover=False,
    )
