"""``loyalty-cdp worker``: run one stream worker (Faust) until SIGTERM/SIGINT.

In the embedded stack ``up`` starts it with ``--state-dir``; in production it is started
with ``--broker`` and ``--web-port`` (or the ``LOYALTY_CDP_*`` environment) on as many
machines as needed: Faust's consumer group spreads the partitions over the workers.

The web port belongs to the worker's API process (:mod:`streams.api_server`), a child that
the worker starts, restarts and stops: it serves ``/v1/decisions`` and ``/v1/members/{id}``
and forwards everything else (``/healthz``, ``/metrics``) to the Faust web server, which
listens on an internal loopback port (``--internal-web-port``, default: a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from confluent_kafka.admin import AdminClient
from faust.web import Request, Response, View

from app.cdc.connectors import change_topics, load_connectors
from app.domain.program import CompiledProgram, load_program
from app.mapping.engine import Mapper
from app.settings import settings, worker_tuning
from app.stack.errors import StackError
from app.stack.ports import free_port
from app.stack.postgres import dsn_for
from app.stack.process import decisions_nice, stream_nice
from app.stack.state import StackPaths
from streams import profile_process
from streams.api_server import ApiSupervisor
from streams.app import WorkerSettings, build_app
from streams.canonical import register_canonical_agent
from streams.decisioning import register_decisioning
from streams.gc_freeze import GcFreezer, count_gc
from streams.identity import IdentityStage
from streams.malloc_trim import register_malloc_trim
from streams.metrics import register_metrics
from streams.outbox import Outbox
from streams.parsed_records import ParsedRecords
from streams.producer import BatchProducer
from streams.profile_cache import cache_size
from streams.profile_process import ProfileHandle, ProfileHost
from streams.profiles import ProfileStage
from streams.stages import identity_resolver, register_stages
from streams.store import Store
from streams.topics import GUEST_PURCHASES, LOYALTY, RESOLVED

log = logging.getLogger("loyalty_cdp.worker")


def _partitions(bootstrap: str, topic: str) -> int:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=15)
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise SystemExit(
            f"error: topic {topic} missing on {bootstrap}: run `loyalty-cdp topics apply`"
        )
    return len(meta.partitions)


def create_worker_app(cfg: WorkerSettings) -> faust.App:
    conf = settings()
    app = build_app(cfg)
    mapper = Mapper.from_dir(conf.mappings_dir)
    topics = change_topics(load_connectors(conf.connectors_dir))
    out = BatchProducer(cfg.broker)
    program = load_program(conf.program_file).compile()
    store = Store(cfg.store_dsn, application_name="loyalty-cdp worker")
    outbox = Outbox(store, out, cfg.broker)
    partitions = _partitions(cfg.broker, RESOLVED)
    # the hand-over of parsed records only works within one process (the threaded stage)
    parsed = None if worker_tuning().profile_process else ParsedRecords()
    identity = IdentityStage(program, store, out, outbox, partitions, parsed)
    router = register_canonical_agent(
        app, mapper, out, topics, resolve=identity_resolver(app, identity)
    )
    profiles = _profile_stage(cfg, program, store, out, partitions, parsed)
    register_stages(app, profiles)
    decisions = register_decisioning(app, cfg.broker, cfg.clock, cfg.store_dsn)
    register_metrics(app, cfg.broker, router, identity, profiles, outbox)
    register_malloc_trim(app)

    gc_counts: dict[str, int] = {}
    count_gc(gc_counts)
    freezer = GcFreezer()  # the identity graph out of the collector's reach (gc_freeze.py)

    @app.timer(1.0)
    async def settle_gc() -> None:
        await asyncio.get_running_loop().run_in_executor(None, freezer.settle)

    def published(topic: str) -> int:
        return outbox.published[topic] + profiles.published[topic]

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "status": "ok",
                    "clock": cfg.clock,
                    "canonical": router.counts,
                    "identity": identity.counts,
                    "profiles": profiles.counts,
                    "worker_gc": gc_counts,
                    "decisions_process": decisions.health(),
                    "loyalty_events_published": published(LOYALTY),
                    "guest_purchases_published": published(GUEST_PURCHASES),
                }
            )

    return app


def _profile_stage(
    cfg: WorkerSettings,
    program: CompiledProgram,
    store: Store,
    out: BatchProducer,
    partitions: int,
    parsed: ParsedRecords | None,
) -> ProfileHandle:
    """The profile stage: in a child process (streams/profile_process.py), or on a thread of
    this worker, taking ``parsed`` records over, with ``LOYALTY_CDP_PROFILE_PROCESS=0``."""
    if parsed is None:

        def start() -> Executor:
            return profile_process.start_pool(cfg.broker, cfg.clock, cfg.store_dsn, partitions)

        return ProfileHandle(start(), profile_process.CHILD_CALLS, restart=start)
    stage = ProfileStage(
        program, store, out, Outbox(store, out, cfg.broker), partitions, clock=cfg.clock,
        parsed=parsed,
    )
    threads = ThreadPoolExecutor(1, thread_name_prefix="profiles")
    return ProfileHandle(threads, ProfileHost(stage, gc_counts=False).calls())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loyalty-cdp worker")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--broker", default=None)
    parser.add_argument("--web-port", type=int, default=None)
    parser.add_argument("--web-host", default="127.0.0.1", help="bind address of the web server")
    parser.add_argument(
        "--internal-web-port", type=int,
        default=None,
        help="loopback port of the Faust web server behind the API process"
        " (default $LOYALTY_CDP_INTERNAL_WEB_PORT, else a free one)",
    )
    parser.add_argument("--loglevel", default="warn")
    args = parser.parse_args(argv)
    broker, web_port, data_dir = args.broker, args.web_port, None
    store_dsn = os.environ.get("LOYALTY_CDP_STORE_DSN")
    clock = os.environ.get("LOYALTY_CDP_CLOCK", "wall")
    if args.state_dir is not None:
        paths = StackPaths(args.state_dir)
        state = paths.load()
        if state is None:
            print(f"error: no stack in {args.state_dir}", file=sys.stderr)
            return 2
        broker = broker or state.broker
        web_port = web_port or state.api_port
        data_dir = paths.root / "worker"
        store_dsn = store_dsn or dsn_for(state.pg_port, "cdp")
        clock = state.clock
    if not broker or not web_port or not store_dsn:
        print(
            "error: --broker, --web-port and $LOYALTY_CDP_STORE_DSN (or --state-dir) are required",
            file=sys.stderr,
        )
        return 2
    try:
        nice = stream_nice()
        decisions_nice()  # read again by the decisioning process when it starts
        cache_size()  # the API process's setting: refused here, before anything starts
        tuning = worker_tuning()  # read again where each is used; refused here first
    except (StackError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    internal = args.internal_web_port or tuning.internal_web_port or free_port()
    cfg = WorkerSettings(
        broker=broker,
        web_port=internal,  # the Faust web server, behind the API process
        data_dir=data_dir or Path("worker-data"),
        web_host="127.0.0.1",
        store_dsn=store_dsn,
        clock=clock,
    )
    workers: list[Any] = []  # the Faust worker, once it exists

    def give_up() -> None:
        for w in workers:
            w.loop.call_soon_threadsafe(w.shutdown_on_signal)

    # The API supervisor starts first, at the worker's priority; everything after it (the
    # app's producers and consumers, Faust's threads) runs ``nice`` steps lower.
    api = ApiSupervisor(args.web_host, web_port, internal, store_dsn, on_give_up=give_up)
    api.start()
    _lower_stream_priority(nice)
    app = create_worker_app(cfg)
    worker: Any = _Worker(app, loglevel=args.loglevel, quiet=True)
    worker.api = api
    workers.append(worker)
    try:
        worker.execute_from_commandline()
    finally:
        api.stop()
    return 0


def _lower_stream_priority(nice: int) -> None:
    """Run this thread, and every thread and process it starts from now on (Faust's loop and
    executors, the decisioning process), ``nice`` steps lower, but not the API process.

    On Linux a priority belongs to a thread (``setpriority(PRIO_PROCESS, 0)`` and ``nice()``
    change the calling thread only) and a new thread or child inherits its creator's. The API
    supervisor's thread was started before this call, so it keeps the worker's priority and
    so do the API processes it (re)starts: a checkout's decision does not queue behind a
    stage's batch (app/stack/process.py).
    """
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)


class _Worker(faust.Worker):
    """Tells the API supervisor that a shutdown is under way before any restart decision, and
    runs without Faust's terminal spinner.

    Why no spinner: ``faust.Worker`` always creates one, and at a log level of WARN or above
    it sets the *root* logger to DEBUG so that the spinner turns on every log record. Every
    ``log.debug`` in aiokafka, Faust and mode (several per fetch and per partition) then built
    a ``LogRecord`` only for the handlers to drop it: about a fifth of the idle worker's CPU.
    The worker runs detached (its output goes to a log file), so the spinner showed nothing.
    """

    api: ApiSupervisor | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    def _schedule_shutdown(self, sig: signal.Signals) -> None:
        if self.api is not None:
            self.api.stopping.set()
        super()._schedule_shutdown(sig)

    def shutdown_on_signal(self) -> None:
        self._schedule_shutdown(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
