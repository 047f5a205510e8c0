"""The worker's web port on the real embedded stack: ``GET /v1/members/{id}`` returns the
export document (by member number, by any normalised ``type:value``), 404 for an unknown
identifier, 422 for a bad type; ``/metrics`` carries non-zero stage, loyalty-event and
latency series and the per-stage lag; ``/healthz`` answers."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from app.stack import embedded, pipeline
from streams.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _exec(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn) as conn:
        for sql in statements:
            conn.execute(sql)
        conn.commit()


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    # Not under pytest's basetemp: a concurrent pytest run re-privatises (chmod 0700)
    # /tmp/pytest-of-<user>, and the unprivileged PostgreSQL could then not be stopped.
    root = Path(tempfile.mkdtemp(prefix="loyalty-cdp-api-"))
    state_dir = root / "stack"
    try:
        st = embedded.up(state_dir)
        _exec(
            st["sources"]["pos"],
            "INSERT INTO loyalty_cards VALUES"
            " ('C1','M100','+1 (555) 010-0100','2026-01-05T09:00:00Z')",
            "INSERT INTO transactions VALUES ('T1','S1','C1',120.50,'USD','2026-02-01T10:00:00Z')",
        )
        _exec(
            st["sources"]["web"],
            "INSERT INTO customers VALUES"
            " ('W1',' Ann@Example.COM ','555-0101',NULL,true,false,false,'2026-01-10T08:00:00Z')",
            "INSERT INTO loyalty_enrollments VALUES ('M200','W1','2026-01-11T08:00:00Z')",
        )
        pipeline.wait_caught_up(state_dir, timeout=180)
        st["state_dir_path"] = state_dir
        yield st
    finally:
        embedded.down(state_dir, drain_timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _get(st: dict[str, Any], path: str) -> httpx.Response:
    return httpx.get(st["api"] + path, timeout=10)


def _exported(st: dict[str, Any], member_id: str) -> dict[str, Any]:
    store = Store(st["store"])
    try:
        return next(d for d in store.export() if d["member_id"] == member_id)
    finally:
        store.dispose()


def test_member_by_member_number_is_the_export_document(stack: dict[str, Any]) -> None:
    r = _get(stack, "/v1/members/M100")
    assert r.status_code == 200, r.text
    doc = r.json()
    exported = _exported(stack, "M100")
    # The wall clock moves as_of every second (the profile stage's timer): compare the rest.
    assert {**doc, "as_of": None} == {**exported, "as_of": None}
    assert doc["member_id"] == "M100"
    assert "card_no:C1" in doc["identifiers"]
    assert doc["purchase_count"] == 1
    assert doc["lifetime_spend_cents"] == 12050
    assert set(doc) == {
        "member_id",
        "member_nos",
        "identifiers",
        "enrolled_at",
        "tier",
        "points_balance",
        "qualifying_spend_cents",
        "lifetime_spend_cents",
        "purchase_count",
        "last_purchase_at",
        "lapse_risk",
        "consent",
        "as_of",
    }


def test_member_by_identifiers(stack: dict[str, Any]) -> None:
    by_email = _get(stack, "/v1/members/" + quote("email:  ANN@example.Com "))
    assert by_email.status_code == 200, by_email.text
    assert by_email.json()["member_id"] == "M200"
    assert "email:ann@example.com" in by_email.json()["identifiers"]
    assert (
        by_email.json()["identifiers"]
        == _get(stack, "/v1/members/member_no:M200").json()["identifiers"]
    )
    by_card = _get(stack, "/v1/members/card_no:C1")
    assert by_card.status_code == 200
    assert by_card.json()["member_id"] == "M100"
    assert _get(stack, "/v1/members/customer_id:W1").json()["member_id"] == "M200"


def test_unknown_and_bad_identifiers(stack: dict[str, Any]) -> None:
    for path in ("/v1/members/M999", "/v1/members/email:nobody@example.com"):
        r = _get(stack, path)
        assert r.status_code == 404
        assert "error" in r.json()
        assert "nobody" not in r.text  # the reply does not echo the identifier value
    for path in ("/v1/members/passport:X1", "/v1/members/email:%20"):
        r = _get(stack, path)
        assert r.status_code == 422, path
        assert "error" in r.json()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_and_health(stack: dict[str, Any]) -> None:
    assert _get(stack, "/healthz").status_code == 200
    deadline = time.monotonic() + 30
    while True:  # the lag series appears after the poller's first measurement
        r = _get(stack, "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        m = _samples(r.text)
        if 'loyalty_cdp_consumer_lag_messages{stage="profiles"}' in m:
            break
        assert time.monotonic() < deadline, "no lag series"
        time.sleep(1)
    for stage in ("canonical", "identity", "profiles"):
        for direction in ("in", "out"):
            assert (
                m[f'loyalty_cdp_stage_messages_total{{direction="{direction}",stage="{stage}"}}']
                > 0
            )
        assert m[f'loyalty_cdp_stage_batch_seconds_count{{stage="{stage}"}}'] > 0
        assert f'loyalty_cdp_dlq_messages_total{{stage="{stage}"}}' in m
        assert f'loyalty_cdp_consumer_lag_messages{{stage="{stage}"}}' in m
    assert m['loyalty_cdp_loyalty_events_total{type="member_enrolled"}'] >= 2
    assert m['loyalty_cdp_loyalty_events_total{type="points_earned"}'] >= 1
    assert m["loyalty_cdp_loyalty_events_published_total"] >= 3
