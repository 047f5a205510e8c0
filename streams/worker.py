"""``loyalty-cdp worker``: run one stream worker (Faust) until SIGTERM/SIGINT.

In the embedded stack ``up`` starts it with ``--state-dir``; in production it is started
with ``--broker`` and ``--web-port`` (or the ``LOYALTY_CDP_*`` environment) on as many
machines as needed: Faust's consumer group spreads the partitions over the workers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View

from app.cdc.connectors import change_topics, load_connectors
from app.mapping.engine import Mapper
from app.settings import settings
from app.stack.state import StackPaths
from streams.app import WorkerSettings, build_app
from streams.canonical import register_canonical_agent
from streams.producer import BatchProducer

log = logging.getLogger("loyalty_cdp.worker")


def create_worker_app(cfg: WorkerSettings) -> faust.App:
    conf = settings()
    app = build_app(cfg)
    mapper = Mapper.from_dir(conf.mappings_dir)
    topics = change_topics(load_connectors(conf.connectors_dir))
    out = BatchProducer(cfg.broker)
    router = register_canonical_agent(app, mapper, out, topics)

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "canonical": router.counts})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loyalty-cdp worker")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--broker", default=None)
    parser.add_argument("--web-port", type=int, default=None)
    parser.add_argument("--web-host", default="127.0.0.1", help="bind address of the web server")
    parser.add_argument("--loglevel", default="warn")
    args = parser.parse_args(argv)
    broker, web_port, data_dir = args.broker, args.web_port, None
    if args.state_dir is not None:
        paths = StackPaths(args.state_dir)
        state = paths.load()
        if state is None:
            print(f"error: no stack in {args.state_dir}", file=sys.stderr)
            return 2
        broker = broker or state.broker
        web_port = web_port or state.api_port
        data_dir = paths.root / "worker"
    if not broker or not web_port:
        print("error: --broker and --web-port (or --state-dir) are required", file=sys.stderr)
        return 2
    cfg = WorkerSettings(
        broker=broker,
        web_port=web_port,
        data_dir=data_dir or Path("worker-data"),
        web_host=args.web_host,
    )
    app = create_worker_app(cfg)
    worker: Any = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
