"""The decision API process: ``POST /v1/decisions`` and ``GET /v1/members/{id}`` on the
worker's web port, in a process of its own that ``loyalty-cdp worker`` starts and supervises.

Why a separate process (issue 6). Served by the Faust worker's aiohttp server, the API shared
one event loop and one GIL with the stream stages, whose blocking batches run on executor
threads and hold the GIL for tens to hundreds of milliseconds: a 0.2 ms decision waited
behind them (56–81 req/s at saturation, p99 0.28–1.4 s). In its own process the API has a
core's worth of GIL to itself and its latency no longer depends on the stages' batches.

Design:

* **One port, one owner.** The API process binds the worker's web port (``--web-port``, the
  stack's ``api_port``) and serves the two API routes itself. Every other path (``/healthz``,
  ``/metrics``, Faust's own pages) is forwarded, method, path, query, body and headers, over
  a keep-alive connection to the Faust web server, which the worker moves to an internal
  loopback port. So the SPEC's "health and metrics on the worker's web port" and "the API on
  the worker's web port" both hold, and every request goes deterministically to one server
  by its path (two servers sharing the port with ``SO_REUSEPORT`` would split requests at
  random between the fast one and the slow one). The upstream answers (or a 503 ``{"error":
  ...}`` while the worker's web server is down) are passed through unchanged.
* **Ready means ready.** The port is bound only once the program and catalog are loaded, the
  store pool is open and the Faust web server accepts connections, so "the web port listens"
  (what ``up`` and the tests wait for) still means the worker's web server is up.
* **Live state from the store.** The stages commit every profile to PostgreSQL (``cdp``
  database) before anything downstream sees it; the API reads the same rows with asyncpg
  (one parameterised statement, prepared once per connection, ``jsonb`` decoded by orjson),
  the lookups of concurrent requests batched (:class:`ProfileReader`). No stream state is
  shared in memory, so any number of API processes can serve one store. Why asyncpg here
  and psycopg everywhere else: a lookup is the API's only I/O, and through asyncpg it cost
  150 µs of client CPU against 360–410 µs through psycopg's async pool, with a p99 of
  0.6–1.8 ms against 2.4–3.5 ms (3,000 sequential lookups on this host).
* **Cheap requests.** The program and the offer catalog are compiled once at start; a request
  is one indexed lookup plus :func:`app.decisioning.decide` (~0.2 ms) on the loop, answered
  with ``orjson`` through Faust's own ``dumps`` (so the bytes and headers are those the
  Faust views produced: ``application/json; charset=utf-8``). No access log: paths carry
  identifiers (emails, phones).
* **Dies with the worker.** The worker starts this process as its child, in the worker's
  process group (``stop`` of the stack signals the whole group); it asks the kernel for a
  SIGTERM when the worker dies (``PR_SET_PDEATHSIG``) and watches its parent pid as well.
  The worker's :class:`ApiSupervisor` restarts it when it dies (at most
  :data:`MAX_RESTARTS` times in :data:`RESTART_WINDOW_S`; beyond that the worker shuts down,
  as it is useless without its web port) and terminates it when the worker stops.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from faust.utils.json import dumps as faust_json_dumps
from multidict import CIMultiDict
from yarl import URL

from streams.api import (
    IdentifierError,
    RequestError,
    decision_answer,
    load_config,
    parse_decision_request,
    parse_member_ref,
)
from streams.child_process import RestartBudget
from streams.profile_cache import CHANNEL, DEFAULT_SIZE, Found, Key, ProfileCache, cache_size
from streams.store import identifier_hash

__all__ = ["BATCH_SQL", "ApiSupervisor", "ProfileReader", "build_api_app", "main"]

log = logging.getLogger("loyalty_cdp.api")

#: restarts of a dying API process allowed within RESTART_WINDOW_S before the worker stops
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: headers that belong to one connection, not to the message (RFC 9110 7.6.1), plus the
#: ones aiohttp sets itself on the forwarded request or response
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length",
    }
)


def _json(value: Any, status: int = 200) -> web.Response:
    """What ``faust.web.View.json`` sent: orjson with Faust's options and fallbacks (Decimal,
    datetime, ...), ``application/json; charset=utf-8``."""
    return web.Response(
        body=faust_json_dumps(value), status=status,
        content_type="application/json", charset="utf-8",
    )


def _libpq_dsn(dsn: str) -> str:
    """``postgresql+psycopg://...`` (SQLAlchemy style) -> a libpq URL psycopg accepts."""
    scheme, sep, rest = dsn.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else dsn


#: PROFILE_SQL for many identifiers at once: row ``n`` answers the ``n``-th (type, hash) pair.
BATCH_SQL = (
    "SELECT DISTINCT ON (q.n) q.n, p.profile_id, p.doc"
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(t, h, n)"
    " JOIN profile_identifiers i ON i.type = q.t AND i.value_hash = q.h"
    " JOIN profiles p ON p.profile_id = i.profile_id"
    " ORDER BY q.n, p.member_id NULLS LAST, p.profile_id"
)



#: ``application_name`` of the API's notification listener (``pg_stat_activity``)
LISTENER_NAME = "loyalty-cdp-api-listener"


async def _keep_session(_: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing. asyncpg's default sends ``RESET ALL``, ``CLOSE
    ALL``, ``UNLISTEN *`` and an advisory unlock after every use, a second round trip per
    lookup; these connections only ever run :data:`BATCH_SQL`, which leaves no session
    state (asyncpg still rolls back a connection left in a transaction)."""


class ProfileReader:
    """The live profile of an identifier, read from the store over an async pool.

    Lookups are batched the way a data loader does: the lookups that requests make in the
    same turn of the event loop go to the store as one statement (:data:`BATCH_SQL`), and at
    most ``max_inflight`` statements run at once; lookups made meanwhile wait for the next one.
    At a light load every lookup is its own statement, sent at once; under a heavy load the
    round trips (and the store's work per lookup) shrink as the batches grow.
    """

    def __init__(
        self, dsn: str, *, max_inflight: int = 4, max_batch: int = 64,
        cache_size: int = 0, health_interval: float = 5.0,
    ) -> None:
        self.dsn = _libpq_dsn(dsn)
        self.pool: asyncpg.Pool | None = None
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        #: profiles already read, kept while the store's notifications say they are current
        self.cache = ProfileCache(cache_size) if cache_size > 0 else None
        self.health_interval = health_interval
        self._pending: list[tuple[Key, int, asyncio.Future[Found]]] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    @staticmethod
    async def _configure(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "jsonb", schema="pg_catalog", format="text",
            encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
        )

    async def open(self, timeout: float = 30.0) -> None:
        """Open ``max_inflight`` connections (a broken one is replaced on its next use)."""
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.max_inflight, max_size=self.max_inflight,
            init=self._configure, reset=_keep_session, timeout=timeout,
            command_timeout=timeout, server_settings={"application_name": "loyalty-cdp-api"},
        )
        if self.cache is not None:
            self._listener = asyncio.create_task(self._listen(), name="profile-notifications")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self.pool is not None:
            await self.pool.close()

    async def _listen(self) -> None:
        """Keep a connection listening to the store's profile notifications; the cache is
        used only while one is up (``_listen_once`` enables it, and disables it whenever
        the connection ends). Reconnects every second while the store is away."""
        cache = self.cache
        assert cache is not None
        while True:
            try:
                await self._listen_once(cache)
            except Exception as exc:  # the store is down: read through until it is back
                log.warning("profile notifications unavailable (%s); not caching",
                            type(exc).__name__)
            await asyncio.sleep(1.0)

    async def _listen_once(self, cache: ProfileCache) -> None:
        """One listening connection, until it is lost (checked every ``health_interval``
        seconds too, as a half-open connection would otherwise go unnoticed)."""
        lost = asyncio.Event()
        conn = await asyncpg.connect(
            self.dsn, timeout=10, server_settings={"application_name": LISTENER_NAME}
        )
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, msg: cache.invalidate(msg))
            cache.enable()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.health_interval)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self.health_interval)
        finally:
            cache.disable()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def profile(self, type_: str, value: str) -> Found:
        """``(profile_id, export document)`` of the profile holding ``type_:value``, or None."""
        key = (type_, identifier_hash(type_, value))
        cache = self.cache
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                return hit
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Found] = loop.create_future()
        self._pending.append((key, cache.generation if cache is not None else 0, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._kick)
        return await fut

    def _kick(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self.max_inflight:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._inflight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Key, int, asyncio.Future[Found]]]) -> None:
        try:
            assert self.pool is not None, "ProfileReader.open() first"
            rows = await self.pool.fetch(
                BATCH_SQL, [k[0] for k, _, _ in batch], [k[1] for k, _, _ in batch]
            )
        except Exception as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            found = {n: (pid, doc) for n, pid, doc in rows}
            cache = self.cache
            for n, (key, generation, fut) in enumerate(batch, 1):
                one = found.get(n)
                if cache is not None:
                    cache.put(key, one, generation)
                if not fut.done():  # a request cancelled meanwhile (client went away)
                    fut.set_result(one)
        finally:
            self._inflight -= 1
            self._kick()


_UNAVAILABLE = {"error": "profile store unavailable"}


def build_api_app(reader: ProfileReader, upstream: str) -> web.Application:
    """The API routes, and everything else forwarded to the worker's web server ``upstream``
    (``http://127.0.0.1:PORT``)."""
    app = web.Application(client_max_size=1 << 20)
    sessions: list[ClientSession] = []
    base = upstream.rstrip("/")

    async def decisions(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _json({"error": "method not allowed"}, 405)
        try:
            req, type_, value = parse_decision_request(await request.read())
        except RequestError as exc:
            return _json({"error": str(exc)}, 422)
        try:
            found = await reader.profile(type_, value)
        except Exception:  # the store is down or the pool timed out: no details, no PII
            log.exception("profile read failed")
            return _json(_UNAVAILABLE, 503)
        return _json(decision_answer(req, found, datetime.now(UTC)))

    async def member(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _json({"error": "method not allowed"}, 405)
        try:
            type_, value = parse_member_ref(request.match_info["member_ref"])
        except IdentifierError as exc:
            return _json({"error": str(exc)}, 422)
        try:
            found = await reader.profile(type_, value)
        except Exception:
            log.exception("profile read failed")
            return _json(_UNAVAILABLE, 503)
        if found is None:
            # Name the type only: the value may be an email or a phone (no PII in replies).
            return _json({"error": f"no profile with this {type_}"}, 404)
        return _json(found[1])

    async def forward(request: web.Request) -> web.StreamResponse:
        if not sessions:
            sessions.append(ClientSession(
                connector=TCPConnector(limit=16), timeout=ClientTimeout(total=30),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
            ))
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        body = await request.read()
        try:
            async with sessions[0].request(
                request.method, URL(base + request.raw_path, encoded=True),
                data=body or None, headers=headers, allow_redirects=False,
            ) as r:
                data = await r.read()
                out = CIMultiDict(
                    (k, v) for k, v in r.headers.items()
                    if k.lower() not in _HOP_BY_HOP and k.lower() not in ("date", "server")
                )
                return web.Response(body=data, status=r.status, reason=r.reason, headers=out)
        except (ClientError, TimeoutError):
            return _json({"error": "the worker's web server is not answering"}, 503)

    async def close_sessions(_: web.Application) -> None:
        for s in sessions:
            await s.close()

    app.router.add_route("*", "/v1/decisions", decisions)
    app.router.add_route("*", "/v1/members/{member_ref}", member)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close_sessions)
    return app


# -- the process ------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` (the worker) dies (Linux); checked again below."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the prctl took effect
        raise SystemExit(0)


async def _accepting(port: int, host: str = "127.0.0.1") -> bool:
    try:
        _, w = await asyncio.open_connection(host, port)
    except OSError:
        return False
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return True


async def serve(
    host: str, port: int, upstream_port: int, dsn: str, parent: int | None,
    ready_timeout: float = 120.0, cache: int = DEFAULT_SIZE,
) -> None:
    """Serve until SIGTERM/SIGINT or until ``parent`` is gone."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    load_config()  # program and catalog compiled (and validated) before serving
    # What is loaded now lives as long as the process: out of the collector's sight, a full
    # collection no longer walks the program, the catalog and the imported modules in the
    # middle of a request.
    gc.collect()
    gc.freeze()
    reader = ProfileReader(dsn, cache_size=cache)
    await reader.open()
    runner = web.AppRunner(
        build_api_app(reader, f"http://127.0.0.1:{upstream_port}"),
        access_log=None, handle_signals=False,
    )
    await runner.setup()
    try:
        deadline = time.monotonic() + ready_timeout
        while not await _accepting(upstream_port):
            if stop.is_set() or time.monotonic() > deadline:
                if not stop.is_set():
                    log.error("the worker's web server did not start on port %d", upstream_port)
                    raise SystemExit(3)
                return
            await asyncio.sleep(0.05)
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        while not stop.is_set():
            if parent is not None and os.getppid() != parent:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await runner.cleanup()
        await reader.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.api_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the worker's web port")
    parser.add_argument("--upstream-port", type=int, required=True,
                        help="the Faust web server's internal loopback port")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s api %(levelname)s %(message)s")
    dsn = os.environ.get("LOYALTY_CDP_STORE_DSN", "")  # env, not argv: ps shows argv
    if not dsn:
        print("error: $LOYALTY_CDP_STORE_DSN is required", file=sys.stderr)
        return 2
    try:
        cache = cache_size()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    asyncio.run(
        serve(args.host, args.port, args.upstream_port, dsn, args.parent_pid, cache=cache)
    )
    return 0


# -- the worker's side ------------------------------------------------------------------


class ApiSupervisor:
    """Start the API process, restart it when it dies, stop it with the worker.

    It runs on a daemon thread of the worker (the thread that starts the child must outlive
    it: ``PR_SET_PDEATHSIG`` fires when that *thread* ends). ``on_give_up`` is called (on that
    thread) when the child died more than :data:`MAX_RESTARTS` times in
    :data:`RESTART_WINDOW_S`; the worker then shuts itself down.
    """

    def __init__(
        self, host: str, port: int, upstream_port: int, store_dsn: str,
        on_give_up: Callable[[], None],
    ) -> None:
        self.argv = [
            sys.executable, "-m", "streams.api_server", "--host", host, "--port", str(port),
            "--upstream-port", str(upstream_port), "--parent-pid", str(os.getpid()),
        ]
        self.env = {**os.environ, "LOYALTY_CDP_STORE_DSN": store_dsn}
        self.on_give_up = on_give_up
        self.stopping = threading.Event()
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="api-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        atexit.register(self.stop)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self.stopping.is_set():
                return None
            self._proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL)
            return self._proc

    def _run(self) -> None:
        budget = RestartBudget(MAX_RESTARTS, RESTART_WINDOW_S)
        while True:
            proc = self._spawn()
            if proc is None:
                return
            rc = proc.wait()
            # A clean exit is the API process obeying a SIGTERM/SIGINT that stops the whole
            # process group (the worker included): give the worker time to say it is stopping.
            if rc == 0:
                self.stopping.wait(2.0)
            if self.stopping.is_set():
                return
            if not budget.spend():
                log.error("the API process died %d times in %.0f s (last exit status %s);"
                          " stopping the worker", len(budget.times) + 1, RESTART_WINDOW_S, rc)
                self.on_give_up()
                return
            log.warning("the API process exited with status %s; restarting it", rc)
            self.restarts += 1
            self.stopping.wait(0.2 * len(budget.times))

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the API process (SIGTERM, SIGKILL after ``timeout``); no restart."""
        self.stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
