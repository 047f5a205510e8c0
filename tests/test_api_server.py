"""The API process (``streams/api_server.py``) without the stack: batched store lookups equal
the single-lookup path, the routes answer as the Faust views did (same bytes and headers),
everything else is forwarded to the worker's web server (503 while it is down), and the
supervisor restarts a dying API process, gives up after too many deaths and stops it."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text

from app.stack.ports import free_port
from streams import api_server
from streams.api import _profile, parse_decision_request
from streams.api_server import ApiSupervisor, ProfileReader, build_api_app
from streams.store import Store
from tests.test_decisions_api import MEMBER_DOC

pytest_plugins = ["tests.pg_support"]

DOC = {**MEMBER_DOC, "identifiers": ["card_no:C1", "email:ann@example.com", "member_no:M1"]}
GUEST = {**DOC, "member_id": None, "member_nos": [], "identifiers": ["card_no:C1"],
         "tier": None, "enrolled_at": None}
LOOKUPS = [("email", "ann@example.com"), ("member_no", "M1"), ("card_no", "C1"),
           ("email", "nobody@example.com"), ("member_no", "M1"), ("card_no", "C2")]


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    s = Store(source_dsns["cdp"])
    with s.tx() as conn:
        conn.execute(text("TRUNCATE profiles, profile_identifiers"))
        # a guest profile shares card C1 with the member: the member's profile wins
        s.upsert_profiles(conn, {"P1": DOC, "P0": GUEST}, {"P1": 1, "P0": 1})
    yield s
    s.dispose()


@pytest.fixture()
async def reader(store: Store) -> AsyncIterator[ProfileReader]:
    r = ProfileReader(str(store.engine.url.render_as_string(hide_password=False)),
                      max_inflight=1)
    await r.open()
    yield r
    await r.close()


async def test_batched_lookups_equal_single_lookups(store: Store, reader: ProfileReader) -> None:
    expected = [_profile(store, t, v) for t, v in LOOKUPS]
    assert expected[0] == ("P1", DOC) and expected[2] == ("P1", DOC) and expected[3] is None
    # one connection: the first lookup goes alone, the other five wait and go as one batch
    got = await asyncio.gather(*(reader.profile(t, v) for t, v in LOOKUPS))
    assert got == expected
    assert await reader.profile("card_no", "C1") == ("P1", DOC)


async def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture()
async def cached(store: Store) -> AsyncIterator[ProfileReader]:
    r = ProfileReader(str(store.engine.url.render_as_string(hide_password=False)),
                      max_inflight=1, cache_size=100, health_interval=0.3)
    await r.open()
    assert r.cache is not None
    await _until(lambda: r.cache is not None and r.cache.enabled, "listener not up")
    yield r
    await r.close()


async def test_the_cache_follows_every_committed_change(
    store: Store, cached: ProfileReader
) -> None:
    cache = cached.cache
    assert cache is not None
    assert await cached.profile("email", "ann@example.com") == ("P1", DOC)
    assert await cached.profile("card_no", "C1") == ("P1", DOC)
    assert await cached.profile("email", "ann@example.com") == ("P1", DOC)
    assert (cache.hits, len(cache)) == (1, 2)
    # bookkeeping that leaves the document alone (next_due) notifies nothing
    generation = cache.generation
    with store.tx() as conn:
        store.set_due(conn, {"P1": datetime(2030, 1, 1, tzinfo=UTC)})
    await asyncio.sleep(0.5)
    assert cache.generation == generation and len(cache) == 2
    # a new snapshot of P1: both of its identifiers are dropped once the commit is notified
    newer = {**DOC, "points_balance": DOC["points_balance"] + 500}
    with store.tx() as conn:
        store.upsert_profiles(conn, {"P1": newer}, {"P1": 2})
    await _until(lambda: len(cache) == 0, "the new snapshot was not notified")
    assert await cached.profile("card_no", "C1") == ("P1", newer)
    # P1 goes (erased, or absorbed by a merge): card C1 is the guest's again
    with store.tx() as conn:
        store.delete_profiles(conn, ["P1"])
    await _until(lambda: len(cache) == 0, "the deletion was not notified")
    assert await cached.profile("card_no", "C1") == ("P0", GUEST)
    assert await cached.profile("email", "ann@example.com") is None
    # an identifier moving to another profile is notified by key: C1 joins a new member
    with store.tx() as conn:
        store.upsert_profiles(conn, {"P2": {**DOC, "member_id": "M2"}}, {"P2": 1})
    await _until(lambda: len(cache) == 0, "the identifier's new owner was not notified")
    found = await cached.profile("card_no", "C1")
    assert found is not None and found[0] == "P2"


async def test_no_cache_while_notifications_are_lost(
    store: Store, cached: ProfileReader
) -> None:
    cache = cached.cache
    assert cache is not None
    await cached.profile("card_no", "C1")
    assert len(cache) == 1
    with store.tx() as conn:  # the listening connection dies (a store restart, a proxy)
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = :name"
        ), {"name": api_server.LISTENER_NAME})
    await _until(lambda: not cache.enabled, "the lost listener went unnoticed")
    assert len(cache) == 0
    assert await cached.profile("card_no", "C1") == ("P1", DOC)  # read through
    assert len(cache) == 0
    await _until(lambda: cache.enabled, "the listener did not come back", timeout=15)
    await cached.profile("card_no", "C1")
    assert len(cache) == 1


class _Upstream:
    """A stand-in for the Faust web server."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/echo", self.echo)
        self.server = TestServer(app, port=free_port())

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "q": request.query_string})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="x_total 1\n", content_type="text/plain")

    async def echo(self, request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), status=201,
                            headers={"X-Seen": request.headers.get("X-Test", "")})


@pytest.fixture()
async def upstream() -> AsyncIterator[_Upstream]:
    up = _Upstream()
    await up.server.start_server()
    yield up
    await up.server.close()


@pytest.fixture()
async def client(reader: ProfileReader, upstream: _Upstream) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_api_app(reader, f"http://127.0.0.1:{upstream.server.port}")
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_routes_answer_as_the_faust_views(
    client: TestClient[Any, Any], store: Store
) -> None:
    r = await client.get("/v1/members/email:%20ANN@example.com")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    # what the Faust view sent: faust.utils.json.dumps (orjson) of the store's document
    as_before = orjson.dumps(store.profile_doc("email", "ann@example.com"),
                             option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)
    assert await r.read() == as_before
    r = await client.get("/v1/members/email:nobody@example.com")
    assert r.status == 404 and "nobody" not in await r.text()
    assert (await client.get("/v1/members/passport:X1")).status == 422
    body = {"identifier": "card_no:C1", "placement": "cart",
            "cart": [{"sku": "COF-250", "qty": 2, "unit_price": "12.99"}]}
    r = await client.post("/v1/decisions", data=orjson.dumps(body))
    assert r.status == 200
    ans = await r.json()
    assert ans["member"]["member_id"] == "M1" and ans["member"]["cart_total_cents"] == 2598
    r = await client.post("/v1/decisions", data=orjson.dumps({**body, "placement": "footer"}))
    assert r.status == 422 and (await r.json())["error"].startswith("placement:")
    r = await client.post("/v1/decisions", data=b"{nope")
    assert r.status == 422 and (await r.json())["error"].startswith("body:")
    assert (await client.get("/v1/decisions")).status == 405
    req, _, _ = parse_decision_request(orjson.dumps(body))  # the same parser as the views
    assert req.cart[0].unit_price_cents == 1299


async def test_everything_else_is_forwarded(
    client: TestClient[Any, Any], upstream: _Upstream
) -> None:
    r = await client.get("/healthz?x=1")
    assert r.status == 200 and await r.json() == {"status": "ok", "q": "x=1"}
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert await r.text() == "x_total 1\n"
    r = await client.post("/echo", data=b"abc", headers={"X-Test": "t"})
    assert (r.status, await r.read(), r.headers["X-Seen"]) == (201, b"abc", "t")
    assert (await client.get("/nothing")).status == 404
    await upstream.server.close()
    r = await client.get("/healthz")
    assert r.status == 503 and "error" in await r.json()


def _wait(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_supervisor_restarts_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_server, "MAX_RESTARTS", 2)
    gave_up: list[bool] = []
    sup = ApiSupervisor(
        "127.0.0.1", 1, 2, "postgresql://x", on_give_up=lambda: gave_up.append(True)
    )
    sup.argv = [sys.executable, "-c", "import sys; sys.exit(3)"]  # dies at once, every time
    sup.start()
    _wait(lambda: bool(gave_up))
    assert sup.restarts == 2
    sup.stop()


def test_supervisor_stop_terminates_the_child() -> None:
    sup = ApiSupervisor("127.0.0.1", 1, 2, "postgresql://x", on_give_up=lambda: None)
    sup.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    sup.start()
    _wait(lambda: sup.pid is not None)
    pid = sup.pid
    sup.stop(timeout=5)
    assert sup._proc is not None and sup._proc.returncode is not None
    assert sup.pid == pid and sup.restarts == 0
