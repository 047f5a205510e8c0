"""Prometheus metrics of a stream worker, served as ``/metrics`` on its web port.

Kept off the hot path:

* message counts are not incremented per event: a custom collector reads the stages'
  existing ``counts`` dicts (plain ints the stages bump once per batch) at scrape time;
* loyalty events per type are counted once per published batch (one ``Counter`` pass over
  the batch's ``loyalty.events`` rows, the type taken from the start of each CloudEvent's
  bytes, no JSON parse); guest purchase moments (the same outbox) are counted apart;
* latency is the wall time of each stage's batch (a histogram observation per batch).
  An end-to-end "source commit to loyalty event" figure would need the source commit time
  carried through ``cdp.resolved``; the pipeline benchmark measures it instead;
* consumer lag is computed every few seconds by a background thread (the worker group's
  committed offsets against the high watermarks, per stage, as ``wait --caught-up`` does),
  and the scrape reads the last result.

The stages are instrumented by wrapping their batch entry points on the instances at wiring
time (``router.route``, ``identity.process``, ``outbox.publish``; the profile stage reports
its batches and events with each call's result, streams/profile_process.py);
the stage modules themselves are unchanged. Every worker has its own registry, so several
apps in one process (tests) do not collide.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faust
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from streams.profile_process import Report, event_type
from streams.topics import GUEST_PURCHASES, LOYALTY, stage_group

__all__ = ["StageLag", "WorkerMetrics", "register_metrics"]

log = logging.getLogger("loyalty_cdp.metrics")

LAG_INTERVAL_S = 5.0


class StageLag:
    """Messages on each stage's input topics its group has not committed yet.

    Two batched admin requests per measurement (the group's committed offsets, the high
    watermarks of every input partition), not a round trip per partition: the change topics
    alone have dozens of partitions.
    """

    def __init__(self, bootstrap: str, stages: list[tuple[str, list[str]]]):
        """Each stage's lag is read from its own group (``stage_group``)."""
        self.stages = stages
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
        self._tps: list[TopicPartition] = []

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        md = self.admin.list_topics(timeout=5)
        return [
            TopicPartition(t, p)
            for t in topics
            if t in md.topics
            for p in sorted(md.topics[t].partitions)
        ]

    def high_watermarks(self, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
        if not tps:
            return {}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self.admin.list_offsets({tp: latest for tp in tps}, request_timeout=5)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def measure(self) -> dict[str, int]:
        """Stage -> messages behind; raises KafkaException when the broker is unreachable."""
        if not self._tps:
            self._tps = self.partitions(t for _, ts in self.stages for t in ts)
        if not self._tps:
            return {}
        high = self.high_watermarks(self._tps)
        committed: dict[str, dict[tuple[str, int], int]] = {}  # by group
        for group in {stage_group(stage) for stage, _ in self.stages}:
            request = [ConsumerGroupTopicPartitions(group, self._tps)]
            result = self.admin.list_consumer_group_offsets(request, request_timeout=5)
            committed[group] = {
                (tp.topic, tp.partition): max(tp.offset, 0)
                for tp in result[group].result().topic_partitions
            }
        out: dict[str, int] = {}
        for stage, topics in self.stages:
            done = committed[stage_group(stage)]
            out[stage] = sum(
                max(0, h - done.get((t, p), 0)) for (t, p), h in high.items() if t in topics
            )
        return out

    def close(self) -> None:
        """Release the admin client now (it has no close(); its handle goes with the last
        reference), so it does not keep reconnecting, and logging, once the broker stops."""
        self.__dict__.pop("admin", None)


class WorkerMetrics(Collector):
    """The worker's registry: live counters plus the stages' counts read at scrape time."""

    def __init__(self, router: Any, identity: Any, profiles: Any, outbox: Any) -> None:
        self.router, self.identity, self.profiles, self.outbox = router, identity, profiles, outbox
        self.registry = CollectorRegistry(auto_describe=False)
        self.batch_seconds = Histogram(
            "loyalty_cdp_stage_batch_seconds",
            "Wall time to process one batch, per stage (commit and flush included).",
            ["stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.loyalty_events = Counter(
            "loyalty_cdp_loyalty_events",
            "Loyalty events published on loyalty.events, per event type.",
            ["type"],
            registry=self.registry,
        )
        self.lag: dict[str, int] = {}
        self.lag_at = 0.0
        self.registry.register(self)

    # -- instrumentation (wrap batch entry points) --------------------------------------

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        hist = self.batch_seconds.labels(stage)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                hist.observe(time.perf_counter() - t0)

        return timed

    def instrument(self) -> None:
        self.router.route = self._timed("canonical", self.router.route)
        self.identity.process = self._timed("identity", self.identity.process)
        self.profiles.listeners.append(self._profile_report)
        publish = self.outbox.publish

        @functools.wraps(publish)
        def counted(rows: Sequence[Any]) -> None:
            publish(rows)
            self._count_types(Tally(event_type(r.payload) for r in rows if r.topic == LOYALTY))

        self.outbox.publish = counted

    def _profile_report(self, report: Report, new_types: Tally[str]) -> None:
        """A profile-stage call returned (it runs in a child process, streams/profile_process):
        its batch durations and the loyalty events it published since the last report."""
        hist = self.batch_seconds.labels("profiles")
        for s in report["batch_seconds"]:
            hist.observe(s)
        self._count_types(new_types)

    def _count_types(self, types: Tally[str]) -> None:
        for type_, n in types.items():
            self.loyalty_events.labels(type_).inc(n)

    # -- the collector ------------------------------------------------------------------

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        msgs = CounterMetricFamily(
            "loyalty_cdp_stage_messages",
            "Messages in and out of each stage since the worker started.",
            labels=["stage", "direction"],
        )
        c, i, p = self.router.counts, self.identity.counts, self.profiles.counts
        for stage, direction, value in (
            ("canonical", "in", c["in"]),
            ("canonical", "out", c["out"]),
            ("identity", "in", i["in"]),
            ("identity", "out", i["records"]),
            ("profiles", "in", p["notes"]),
            ("profiles", "out", p["profiles_written"]),
        ):
            msgs.add_metric([stage, direction], value)
        yield msgs
        dlq = CounterMetricFamily(
            "loyalty_cdp_dlq_messages",
            "Messages sent to cdp.dlq, per stage (profiles: records the domain rejected).",
            labels=["stage"],
        )
        dlq.add_metric(["canonical"], c["dlq"])
        dlq.add_metric(["identity"], i["dlq"])
        dlq.add_metric(["profiles"], p["rejected"])
        yield dlq
        busy = CounterMetricFamily(
            "loyalty_cdp_stage_busy_seconds",
            "Time the stage spent processing batches (its own counter, where it keeps one).",
            labels=["stage"],
        )
        for stage, counts in (("identity", i), ("profiles", p)):
            if "busy_ms" in counts:
                busy.add_metric([stage], counts["busy_ms"] / 1000)
        yield busy
        merges = CounterMetricFamily("loyalty_cdp_identity_merges", "Profile merges.")
        merges.add_metric([], i["merges"])
        yield merges
        parked = CounterMetricFamily(
            "loyalty_cdp_identity_parked", "Records parked until their purchase is known."
        )
        parked.add_metric([], i["parked"])
        yield parked
        published = CounterMetricFamily(
            "loyalty_cdp_loyalty_events_published", "Loyalty events published, all types."
        )
        published.add_metric([], self._published(LOYALTY))
        yield published
        guests = CounterMetricFamily(
            "loyalty_cdp_guest_purchases_published",
            "Guest purchase moments published on cdp.guest_purchases for the decisioning agent.",
        )
        guests.add_metric([], self._published(GUEST_PURCHASES))
        yield guests
        lag = GaugeMetricFamily(
            "loyalty_cdp_consumer_lag_messages",
            "Messages on each stage's input topics not yet committed by the worker group.",
            labels=["stage"],
        )
        for stage, behind in self.lag.items():
            lag.add_metric([stage], behind)
        yield lag
        age = GaugeMetricFamily(
            "loyalty_cdp_consumer_lag_age_seconds", "Seconds since the lag was last measured."
        )
        if self.lag_at:
            age.add_metric([], time.monotonic() - self.lag_at)
        yield age

    def _published(self, topic: str) -> int:
        """Published by the worker's own outbox (identity's merges) and the profile stage's."""
        return int(self.outbox.published[topic] + self.profiles.published[topic])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- lag poller ---------------------------------------------------------------------

    def start_lag_poller(
        self, bootstrap: str, stages: list[tuple[str, list[str]]], interval: float = LAG_INTERVAL_S
    ) -> threading.Thread:
        def loop() -> None:
            lag: StageLag | None = None
            while True:
                try:
                    lag = lag or StageLag(bootstrap, stages)
                    self.lag = lag.measure()
                    self.lag_at = time.monotonic()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("lag measurement failed: %s", exc)
                    if lag is not None:
                        lag.close()
                    lag = None
                time.sleep(interval)

        t = threading.Thread(target=loop, name="metrics-lag", daemon=True)
        t.start()
        return t


def register_metrics(
    app: faust.App,
    bootstrap: str,
    router: Any,
    identity: Any,
    profiles: Any,
    outbox: Any,
) -> WorkerMetrics:
    """Instrument the stages and mount ``/metrics``; lag polling starts with the worker."""
    metrics = WorkerMetrics(router, identity, profiles, outbox)
    metrics.instrument()

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset in content_type=; the header carries it whole.
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.task  # type: ignore[untyped-decorator]
    async def start_lag() -> None:
        from app.cdc.connectors import load_connectors
        from app.settings import settings
        from app.stack.pipeline import STAGES

        metrics.start_lag_poller(bootstrap, STAGES(load_connectors(settings().connectors_dir)))

    return metrics
