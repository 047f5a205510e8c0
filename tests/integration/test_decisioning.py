"""Decisioning on the real embedded stack (wall clock).

A POS card member (M100) whose web account (same member_no, email opt-in) gives the email
consent; an old purchase (20 days ago: its moments are stale, not decided) brings the balance
to 900 and a recent one (1 h ago, silver x1.25) into the 1,000-point milestone band
[950, 1000). Expected on ``offers.email``: the milestone-approaching offer (a product closing
the gap, with its reasons) and the points receipt; every produced offer message valid against
``schemas/offers.schema.json``. A guest (web customer G2, no member number, email opt-in)
buying an hour ago gets the enrollment offer once, through the profile stage's outbox and
``cdp.guest_purchases``. A replay (worker restarted, every loyalty, guest purchase and
canonical event delivered a second time) sends no offer twice. ``POST /v1/decisions`` for
the member, an unknown person and malformed bodies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Producer
from jsonschema import Draft202012Validator

from app.settings import REPO_ROOT
from app.stack import embedded, pipeline
from app.stack.state import StackPaths
from streams.decision_process import PROCESS_NAME
from tests.integration.kafka_util import cloudevents, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

OFFER_TOPICS = ("offers.email", "offers.sms", "offers.push", "offers.in_app")
GUEST_ORDER = "web.orders:O2#paid@purchase.completed"  # the guest's purchase: its moment id
#: what ``_offers`` waits for on ``offers.email``: the member's milestone and the guest's offer
MARKERS = (b"milestone_approaching", GUEST_ORDER.encode())
VALIDATOR = Draft202012Validator(
    json.loads((REPO_ROOT / "schemas" / "offers.schema.json").read_text())
)


def _exec(dsn: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn) as conn:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()


def _wait(st: dict[str, Any]) -> None:
    pipeline.wait_caught_up(st["state_dir_path"], timeout=300)


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="loyalty-cdp-decisions-"))
    state_dir = root / "stack"
    now = datetime.now(UTC)
    try:
        st = embedded.up(state_dir)
        st["state_dir_path"] = state_dir
        _exec(
            st["sources"]["pos"],
            ("INSERT INTO loyalty_cards VALUES ('C1','M100',NULL,%s)",
             (now - timedelta(days=30),)),
            ("INSERT INTO transactions VALUES ('T1','S1','C1',900.00,'USD',%s)",
             (now - timedelta(days=20),)),
        )
        _exec(
            st["sources"]["web"],
            ("INSERT INTO customers VALUES ('W1','ann@example.com',NULL,'M100',true,false,"
             "false,%s)", (now - timedelta(days=29),)),
        )
        _wait(st)
        _exec(
            st["sources"]["pos"],
            ("INSERT INTO transactions VALUES ('T2','S1','C1',50.00,'USD',%s)",
             (now - timedelta(hours=1),)),
        )
        _exec(
            st["sources"]["web"],
            ("INSERT INTO customers VALUES ('G2','gus@example.com',NULL,NULL,true,false,"
             "false,%s)", (now - timedelta(days=2),)),
            ("INSERT INTO orders VALUES ('O2','G2',42.50,'USD','paid',0,%s)",
             (now - timedelta(hours=1),)),
        )
        _wait(st)
        yield st
    finally:
        embedded.down(state_dir, drain_timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _offers(st: dict[str, Any], until_email: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every offer message; with ``until_email``, once the :data:`MARKERS` are on
    ``offers.email``."""
    out = {}
    for topic in OFFER_TOPICS:
        def done(msgs: list[Any], topic: str = topic) -> bool:
            return not until_email or topic != "offers.email" or all(
                any(mark in m.value() for m in msgs) for mark in MARKERS
            )
        msgs = read_topic(st["broker"], topic, until=done, timeout=90 if until_email else 5)
        for m in msgs:
            assert m.key() is not None
        out[topic] = cloudevents(msgs)
        for ev in out[topic]:
            VALIDATOR.validate(ev)
            assert ev["type"] == topic
    return out


def test_milestone_band_purchase_to_email_offer(stack: dict[str, Any]) -> None:
    offers = _offers(stack, until_email=True)
    emails = [e for e in offers["offers.email"] if e["data"]["member_id"] == "M100"]
    near = [e for e in emails if e["data"]["moment"]["type"] == "milestone_approaching"]
    assert len(near) == 1, emails
    ev = near[0]
    assert ev["subject"] == "M100" and ev["data"]["member_id"] == "M100"
    assert ev["data"]["address"] == "ann@example.com"
    member = ev["data"]["member"]
    assert 950 <= member["points_balance"] < 1000
    assert member["next_milestone"] == 1000
    chosen = ev["data"]["offers"][0]
    codes = {r["code"] for r in chosen["reasons"]}
    assert "closes_milestone_gap" in codes, chosen
    assert ev["data"]["rejected"]
    receipts = [e for e in emails if e["data"]["moment"]["type"] == "purchase"]
    assert [r["data"]["offers"][0]["kind"] for r in receipts] == ["points_receipt"]
    # the 20-day-old moments (enrollment, first purchase, tier upgrade) were not decided
    assert {e["data"]["moment"]["type"] for e in emails} == {"milestone_approaching", "purchase"}


def test_guest_purchase_gets_the_enrollment_offer_once(stack: dict[str, Any]) -> None:
    offers = _offers(stack, until_email=True)
    guest = [e for t in OFFER_TOPICS for e in offers[t] if e["data"]["member_id"] is None]
    assert guest and {e["data"]["moment"]["id"] for e in guest} == {GUEST_ORDER}, guest
    assert len({e["type"] for e in guest}) == len(guest), "a guest offer was sent twice"
    ev = next(e for e in guest if e["type"] == "offers.email")
    assert ev["data"]["offers"][0]["kind"] == "enrollment"
    assert ev["data"]["address"] == "gus@example.com"
    assert ev["data"]["member"]["points_if_enrolled"] == 42
    # the moment travelled as the canonical purchase, keyed by the guest's profile; the
    # member's purchases are no guest moments
    moments = read_topic(stack["broker"], "cdp.guest_purchases", timeout=5)
    assert [(m.key().decode(), e["data"]["record_id"], e["type"])
            for m, e in zip(moments, cloudevents(moments), strict=True)] == [
        (ev["subject"], GUEST_ORDER, "cdp.purchase.completed")
    ]


def test_api_member_unknown_and_malformed(stack: dict[str, Any]) -> None:
    url = stack["api"] + "/v1/decisions"
    body = {"identifier": "card_no:C1", "placement": "checkout_confirmation",
            "cart": [{"sku": "COF-250", "qty": 2, "unit_price": "12.99"}]}
    r = httpx.post(url, json=body, timeout=10)
    assert r.status_code == 200, r.text
    ans = r.json()
    m = ans["member"]
    assert (m["enrolled"], m["member_id"], m["tier"]) == (True, "M100", "silver")
    assert 950 <= m["points_balance"] < 1000
    assert m["cart_total_cents"] == 2598 and m["points"] == 31  # floor(25 x 1.25)
    assert m["milestone_gap_points"] == 1000 - m["points_balance"]
    assert m["next_tier"] == "gold" and m["tier_gap_cents"] == 200000 - 95000
    assert ans["offers"][0]["kind"] == "points_receipt"
    assert all(o["reasons"] for o in ans["offers"])

    r = httpx.post(url, json={**body, "identifier": "email:nobody@example.com"}, timeout=10)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["member"]["known"] is False and ans["member"]["points_if_enrolled"] == 25
    assert ans["offers"][0]["kind"] == "enrollment"

    for bad, field in (
        ({**body, "placement": "footer"}, "placement"),
        ({**body, "cart": [{"sku": "A", "qty": 1, "unit_price": 1.001}]}, "cart.0.unit_price"),
        ({"placement": "cart"}, "identifier"),
        ({**body, "identifier": "passport:1"}, "identifier"),
    ):
        r = httpx.post(url, json=bad, timeout=10)
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(field + ":"), r.text
    r = httpx.post(url, content=b"{nope", timeout=10)
    assert r.status_code == 422 and r.json()["error"].startswith("body:")


def _decisioning_pids(st: dict[str, Any]) -> list[int]:
    """The worker's decisioning processes (by the name they give themselves)."""
    worker = StackPaths(st["state_dir_path"].resolve()).process("worker").pid()
    assert worker is not None
    out = []
    for d in Path("/proc").iterdir():
        try:
            if (d / "comm").read_text().strip() != PROCESS_NAME:
                continue
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == worker:
            out.append(int(d.name))
    return out


def test_a_killed_decisioning_process_is_replaced(stack: dict[str, Any]) -> None:
    """The decisioning process consumes in its own group; SIGKILLed, it is replaced by the
    worker, and the new one decides what arrived meanwhile (``wait`` waits for its group)."""
    [old] = _decisioning_pids(stack)
    os.kill(old, signal.SIGKILL)
    _exec(
        stack["sources"]["web"],
        ("INSERT INTO customers VALUES ('G3','gil@example.com',NULL,NULL,true,false,"
         "false,%s)", (datetime.now(UTC) - timedelta(days=1),)),
        ("INSERT INTO orders VALUES ('O3','G3',19.00,'USD','paid',0,%s)",
         (datetime.now(UTC) - timedelta(minutes=5),)),
    )
    deadline = time.monotonic() + 30
    while (new := _decisioning_pids(stack)) in ([], [old]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(new) == 1 and new != [old], new
    _wait(stack)
    # /healthz shows the replacement
    health = httpx.get(stack["api"] + "/healthz", timeout=10).json()["decisions_process"]
    assert health == {"alive": True, "pid": new[0], "restarts_last_minute": 1}, health
    # `status` shows the offers' backlog from the decisioning group: none once caught up
    lag = embedded.status(stack["state_dir_path"])["lag"]["decisions_messages"]
    assert lag == {"loyalty.events": 0, "cdp.guest_purchases": 0}, lag
    moment = "web.orders:O3#paid@purchase.completed"
    emails = read_topic(stack["broker"], "offers.email", timeout=5,
                        until=lambda msgs: any(moment.encode() in m.value() for m in msgs))
    mine = [e for e in cloudevents(emails) if e["data"]["moment"]["id"] == moment]
    assert [e["data"]["offers"][0]["kind"] for e in mine] == ["enrollment"], mine


def _redeliver(st: dict[str, Any], topic: str, to: str | None = None) -> int:
    """Every message of ``topic`` once more (onto ``to``, default the same topic), same key
    and bytes (at-least-once redelivery)."""
    msgs = read_topic(st["broker"], topic, timeout=5)
    p = Producer({"bootstrap.servers": st["broker"]})
    for m in msgs:
        p.produce(to or topic, m.value(), m.key())
    assert p.flush(30) == 0
    return len(msgs)


def test_replay_sends_no_offer_twice(stack: dict[str, Any]) -> None:
    """A restarted worker (fresh agent memory) gets every loyalty event, guest purchase moment
    and canonical event again. (``embedded.replay`` cannot rewind the group on this Tansu
    build: its offset commit is refused with UNKNOWN_MEMBER_ID after the worker left, so the
    redelivery is produced instead of rewound; for the agent it is the same input twice.)"""
    before = _offers(stack, until_email=True)
    state_dir = stack["state_dir_path"]
    StackPaths(state_dir.resolve()).process("worker").stop(timeout=30)
    assert _redeliver(stack, "loyalty.events") > 0
    assert _redeliver(stack, "cdp.guest_purchases") > 0
    # the canonical events once more into the worker: nothing in it consumes cdp.events
    # (the identity stage gets the canonical agent's batches), so through cdp.ingest
    assert _redeliver(stack, "cdp.events", to="cdp.ingest") > 0
    embedded.up(state_dir)  # starts the worker again
    _wait(stack)
    time.sleep(2)
    after = _offers(stack)
    for topic in OFFER_TOPICS:
        ids = [e["id"] for e in after[topic]]
        assert len(ids) == len(set(ids)), f"{topic}: an offer was sent twice"
        assert sorted(ids) == sorted(e["id"] for e in before[topic]), topic
