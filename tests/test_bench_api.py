"""``bench api``'s load generator against a stand-in server: the open loop sends every due
request or sheds it (counted) when all connections are busy, the closed loop keeps its
clients busy; errors are counted. Figures are printed, nothing is timed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.bench.api import _bodies, _saturation, _steady


@pytest.fixture()
async def server() -> AsyncIterator[str]:
    async def decide(request: web.Request) -> web.Response:
        body = await request.read()
        if b"nobody" in body:
            return web.json_response({"error": "x"}, status=422)
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/decisions", decide)
    srv = TestServer(app)
    await srv.start_server()
    yield f"http://127.0.0.1:{srv.port}/v1/decisions"
    await srv.close()


async def test_open_loop_sends_or_sheds_every_due_request(server: str) -> None:
    bodies = _bodies(10)  # 1 in 10 an unknown email: here a 422, counted as an error
    ph = await _steady(server, bodies, rate=200, duration=0.5)
    print(ph)
    assert ph.requests + ph.errors + ph.shed == 100
    assert ph.errors == 10 and ph.target_rps == 200
    assert ph.send_late_p99_ms is not None and ph.send_late_p99_ms >= 0
    slow = await _steady(server + "?sleep=0.2", bodies[1:], rate=200, duration=0.5,
                         connections=2)
    print(slow)
    assert slow.shed > 0 and slow.requests + slow.errors + slow.shed == 100
    assert slow.p50_ms >= 200  # latency includes the server's time


async def test_closed_loop(server: str) -> None:
    ph = await _saturation(server, _bodies(10)[1:], concurrency=4, duration=0.3)
    print(ph)
    assert ph.requests > 0 and ph.errors == 0 and ph.target_rps is None
