"""``POST /v1/decisions`` without the stack: body validation (422 naming the field), exact
cents, and the answer for a member and an unknown person over a real PostgreSQL store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import text

from streams.api import RequestError, decide_request, parse_decision_request
from streams.store import Store

pytest_plugins = ["tests.pg_support"]

NOW = datetime(2026, 6, 10, 16, 0, tzinfo=UTC)
#: a silver member 40 points short of the 1,000 milestone (also used by test_api_server)
MEMBER_DOC: dict[str, object] = {
    "member_id": "M1", "member_nos": ["M1"],
    "identifiers": ["email:ann@example.com", "member_no:M1"],
    "enrolled_at": "2026-01-01T00:00:00.000000Z", "tier": "silver",
    "points_balance": 960, "qualifying_spend_cents": 60000,
    "lifetime_spend_cents": 60000, "purchase_count": 4,
    "last_purchase_at": "2026-06-01T00:00:00.000000Z", "lapse_risk": False,
    "consent": {"email_opt_in": False, "sms_consent": False, "admt_opt_out": False,
                "push_opt_in": False},
    "as_of": "2026-06-10T00:00:00.000000Z",
}


def _body(**kw: object) -> bytes:
    base: dict[str, object] = {"identifier": "member_no:M1", "placement": "checkout_confirmation",
                               "cart": [{"sku": "COF-250", "qty": 2, "unit_price": 19.99}]}
    base.update(kw)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def test_valid_body_exact_cents() -> None:
    req, t, v = parse_decision_request(
        b'{"identifier": "email: Ann@Example.COM ", "placement": "cart",'
        b' "cart": [{"sku": "A", "qty": 3, "unit_price": 0.29}, {"sku": "B", "qty": 1,'
        b' "unit_price": "1234.50"}, {"sku": "C", "qty": 1, "unit_price": 7}]}'
    )
    assert (t, v) == ("email", "ann@example.com")
    assert [i.unit_price_cents for i in req.cart] == [29, 123450, 700]
    req, _, _ = parse_decision_request(b'{"identifier": "M1", "placement": "home"}')
    assert req.cart == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1]", "body"),
        (_body(identifier=None), "identifier"),
        (_body(identifier="passport:X1"), "identifier"),
        (_body(identifier="email: "), "identifier"),
        (_body(placement="footer"), "placement"),
        (_body(cart=[{"sku": "A", "qty": 0, "unit_price": 1}]), "cart.0.qty"),
        (_body(cart=[{"sku": "A", "qty": "2", "unit_price": 1}]), "cart.0.qty"),
        (_body(cart=[{"sku": "A", "qty": 1, "unit_price": 1.999}]), "cart.0.unit_price"),
        (_body(cart=[{"sku": "A", "qty": 1, "unit_price": -1}]), "cart.0.unit_price"),
        (_body(cart=[{"sku": "A", "qty": 1, "unit_price": "abc"}]), "cart.0.unit_price"),
        (_body(cart=[{"sku": "A", "qty": 1, "unit_price": True}]), "cart.0.unit_price"),
        (_body(cart=[{"qty": 1, "unit_price": 1}]), "cart.0.sku"),
        (_body(cart=[{"sku": "A", "qty": 1, "unit_price": 1, "x": 1}]), "cart.0.x"),
        (_body(cart="A"), "cart"),
        (_body(extra=1), "extra"),
    ],
)
def test_bad_bodies_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(RequestError) as exc:
        parse_decision_request(body)
    assert str(exc.value).startswith(field + ":"), str(exc.value)


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    s = Store(source_dsns["cdp"])
    with s.tx() as conn:
        # contact_history too: the API must write none, whatever ran before in this server
        conn.execute(text("TRUNCATE profiles, profile_identifiers, contact_history"))
        s.upsert_profiles(conn, {"P1": MEMBER_DOC}, {"P1": 1})
    yield s
    s.dispose()


def test_member_context_and_ranked_offers(store: Store) -> None:
    req, t, v = parse_decision_request(_body(identifier="email:ANN@example.com"))
    ans = decide_request(store, req, t, v, NOW)
    m = ans["member"]
    assert (m["known"], m["enrolled"], m["member_id"], m["tier"]) == (True, True, "M1", "silver")
    assert m["points_balance"] == 960 and m["cart_total_cents"] == 3998
    assert m["points"] == 48  # floor(39 x 1.25)
    assert m["next_milestone"] == 1000 and m["milestone_gap_points"] == 40
    assert m["next_tier"] == "gold" and m["tier_gap_cents"] == 140000
    assert ans["offers"][0]["kind"] == "points_receipt"
    assert "48" in ans["offers"][0]["body"]
    assert all(o["reasons"] for o in ans["offers"])
    assert ans["ranked"][0]["rank"] == 1
    with store.tx() as conn:  # an answer is not a contact
        assert conn.execute(text("SELECT count(*) FROM contact_history")).scalar_one() == 0


def test_unknown_person_gets_guest_context_and_enrollment(store: Store) -> None:
    req, t, v = parse_decision_request(_body(identifier="email:nobody@example.com"))
    ans = decide_request(store, req, t, v, NOW)
    m = ans["member"]
    assert (m["known"], m["enrolled"], m["member_id"], m["points"]) == (False, False, None, 0)
    assert m["points_if_enrolled"] == 39
    assert ans["ordering"] == "rules"
    assert ans["offers"][0]["kind"] == "enrollment"
    assert "39" in ans["offers"][0]["body"]
