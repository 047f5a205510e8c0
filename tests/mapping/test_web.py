from __future__ import annotations

import hashlib

import orjson

from app.mapping import event_id
from tests.mapping.conftest import MapFn

CUST = {
    "customer_id": "C1",
    "email": "  Ann.Lee@Example.COM ",
    "phone": "+1 (555) 010-2",
    "member_no": None,
    "email_opt_in": True,
    "sms_consent": None,
    "admt_opt_out": False,
    "updated_at": "2026-03-01T10:00:00Z",
}
ORDER = {
    "order_id": "O77",
    "customer_id": "C1",
    "total": "120.00",
    "currency": "EUR",
    "status": "placed",
    "refunded_amount": "0.00",
    "updated_at": "2026-03-01T10:00:00Z",
}
T = "web.public.orders"


def test_customer_insert_links_identifiers_and_records_consent(m: MapFn) -> None:
    linked, consent = m("web.public.customers", "c", CUST)
    assert linked.type == "cdp.identity.linked"
    assert linked.data["identifiers"] == [
        {"type": "customer_id", "value": "C1"},
        {"type": "email", "value": "ann.lee@example.com"},
        {"type": "phone", "value": "15550102"},
    ]
    # version = digest of (updated_at normalised, raw email, phone, member_no): no PII in ids,
    # and two row versions sharing one updated_at stay two records
    version = hashlib.sha256(
        orjson.dumps(["2026-03-01T10:00:00.000000Z", CUST["email"], CUST["phone"], None])
    ).hexdigest()[:16]
    assert linked.data["record_id"] == f"web.customers:C1#{version}@identity.linked"
    assert "Ann" not in linked.data["record_id"]
    assert consent.type == "cdp.consent.changed"
    assert consent.data["consent"] == {"email_opt_in": True, "admt_opt_out": False}  # null omitted
    assert consent.data["identifiers"] == [{"type": "customer_id", "value": "C1"}]
    assert linked.id != consent.id


def test_consent_change_without_identifier_change(m: MapFn) -> None:
    after = {**CUST, "sms_consent": True, "updated_at": "2026-03-05T12:00:00.5+00:00"}
    [ev] = m("web.public.customers", "u", after, CUST)
    assert ev.type == "cdp.consent.changed"
    assert ev.time == "2026-03-05T12:00:00.500000Z"
    assert ev.data["consent"] == {"email_opt_in": True, "sms_consent": True, "admt_opt_out": False}


def test_identifier_change_without_consent_change(m: MapFn) -> None:
    after = {**CUST, "member_no": "M0009", "updated_at": "2026-03-06T00:00:00Z"}
    [ev] = m("web.public.customers", "u", after, CUST)
    assert ev.type == "cdp.identity.linked"
    assert {"type": "member_no", "value": "M0009"} in ev.data["identifiers"]


def test_customer_update_of_nothing_relevant_emits_nothing(m: MapFn) -> None:
    after = {**CUST, "updated_at": "2026-03-06T00:00:00Z"}
    assert m("web.public.customers", "u", after, CUST) == []


def test_customer_with_all_consents_null_emits_no_consent(m: MapFn) -> None:
    row = {**CUST, "email_opt_in": None, "sms_consent": None, "admt_opt_out": None}
    [ev] = m("web.public.customers", "r", row)
    assert ev.type == "cdp.identity.linked"


def test_enrollment(m: MapFn) -> None:
    row = {"member_no": "M0009", "customer_id": "C1", "enrolled_at": "2026-03-01T11:00:00.1Z"}
    [ev] = m("web.public.loyalty_enrollments", "c", row)
    assert ev.type == "cdp.member.enrolled"
    assert ev.time == "2026-03-01T11:00:00.100000Z"
    assert ev.data["member_no"] == "M0009"
    assert ev.data["identifiers"] == [
        {"type": "member_no", "value": "M0009"},
        {"type": "customer_id", "value": "C1"},
    ]


def test_order_lifecycle_placed_paid_partially_refunded_refunded(m: MapFn) -> None:
    v0 = ORDER
    assert m(T, "c", v0) == []  # placed earns nothing

    v1 = {**v0, "status": "paid", "updated_at": "2026-03-01T10:05:00Z"}
    [paid] = m(T, "u", v1, v0)
    assert paid.type == "cdp.purchase.completed"
    assert paid.time == "2026-03-01T10:05:00.000000Z"
    assert (paid.data["purchase_id"], paid.data["amount_cents"], paid.data["currency"]) == (
        "web:O77",
        12000,
        "EUR",
    )
    assert paid.id == event_id("web", "orders", "O77", "paid", "cdp.purchase.completed")

    v2 = {
        **v1,
        "status": "partially_refunded",
        "refunded_amount": "20.10",
        "updated_at": "2026-03-03T09:00:00Z",
    }
    [r1] = m(T, "u", v2, v1)
    assert r1.type == "cdp.purchase.refunded"
    assert (r1.data["refund_id"], r1.data["amount_cents"]) == ("web:O77#2010", 2010)
    assert r1.data["purchase_id"] == "web:O77"
    assert r1.time == "2026-03-03T09:00:00.000000Z"
    assert r1.id == event_id("web", "orders", "O77", "2010", "cdp.purchase.refunded")

    v3 = {**v2, "refunded_amount": "35.10", "updated_at": "2026-03-04T09:00:00Z"}
    [r2] = m(T, "u", v3, v2)
    assert (r2.data["refund_id"], r2.data["amount_cents"]) == ("web:O77#3510", 1500)

    v4 = {
        **v3,
        "status": "refunded",
        "refunded_amount": "120.00",
        "updated_at": "2026-03-05T09:00:00Z",
    }
    [r3] = m(T, "u", v4, v3)
    assert (r3.data["refund_id"], r3.data["amount_cents"]) == ("web:O77#12000", 8490)
    assert 2010 + 1500 + 8490 == 12000
    assert len({paid.id, r1.id, r2.id, r3.id}) == 4

    # a later touch of the row (no status or refund change) produces nothing
    v5 = {**v4, "updated_at": "2026-03-06T09:00:00Z"}
    assert m(T, "u", v5, v4) == []


def test_paid_to_later_states_never_repeat_the_purchase(m: MapFn) -> None:
    v1 = {**ORDER, "status": "paid"}
    v2 = {**v1, "status": "partially_refunded"}  # refunded_amount unchanged: no refund either
    assert m(T, "u", v2, v1) == []


def test_cancelled_order_earns_nothing(m: MapFn) -> None:
    assert m(T, "u", {**ORDER, "status": "cancelled"}, ORDER) == []


def test_snapshot_of_paid_order_counts_as_paid_at_its_updated_at(m: MapFn) -> None:
    row = {**ORDER, "status": "paid", "updated_at": "2026-03-01T10:05:00Z"}
    [ev] = m(T, "r", row)
    assert ev.type == "cdp.purchase.completed"
    assert ev.time == "2026-03-01T10:05:00.000000Z"
    # same id as the live placed -> paid transition: a re-snapshot duplicates nothing
    [live] = m(T, "u", row, ORDER)
    assert ev.id == live.id


def test_snapshot_of_refunded_order_is_purchase_plus_one_refund(m: MapFn) -> None:
    row = {
        **ORDER,
        "status": "partially_refunded",
        "refunded_amount": "30.00",
        "updated_at": "2026-03-09T10:00:00Z",
    }
    paid, refund = m(T, "r", row)
    assert paid.type == "cdp.purchase.completed" and paid.data["amount_cents"] == 12000
    assert refund.type == "cdp.purchase.refunded"
    assert (refund.data["refund_id"], refund.data["amount_cents"]) == ("web:O77#3000", 3000)
    # the id of a refund is the one of the increment that reached the same cumulative amount
    v1 = {**ORDER, "status": "paid", "refunded_amount": "10.00"}
    [live] = m(T, "u", row, v1)
    assert live.id == refund.id and live.data["amount_cents"] == 2000


def test_refunded_amount_decrease_is_not_a_refund(m: MapFn) -> None:
    v1 = {**ORDER, "status": "paid", "refunded_amount": "10.00"}
    v2 = {**v1, "refunded_amount": "5.00"}
    assert m(T, "u", v2, v1) == []


def test_order_item(m: MapFn) -> None:
    item = {"order_id": "O77", "line_no": 1, "sku": "SKU-1", "qty": 1, "unit_price": "120.00"}
    [ev] = m("web.public.order_items", "r", item)
    assert ev.type == "cdp.purchase.line"
    assert ev.key == "web.order_items:O77/1"
    assert ev.data["purchase_id"] == "web:O77" and ev.data["unit_price_cents"] == 12000


def test_delete_is_ignored(m: MapFn) -> None:
    assert m("web.public.customers", "d", None, CUST) == []
    assert m(T, "d", None, ORDER) == []
