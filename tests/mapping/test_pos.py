from __future__ import annotations

import hashlib

import pytest

from app.mapping import MappingError, event_id
from tests.mapping.conftest import MapFn

TXN = {
    "txn_id": "T1001",
    "store_id": "S7",
    "card_no": "K42",
    "total": "12.34",
    "currency": "USD",
    "occurred_at": "2026-03-01T10:15:00.123456Z",
}
CARD = {
    "card_no": "K42",
    "member_no": "M0001",
    "phone": "+1 (555) 010-2",
    "issued_at": "2026-02-01T09:00:00Z",
}


def test_transaction_insert_is_a_purchase(m: MapFn) -> None:
    [ev] = m("pos.public.transactions", "c", TXN)
    assert ev.key == "pos.transactions:T1001"
    expected_id = hashlib.sha256(b"pos|transactions|T1001||cdp.purchase.completed").hexdigest()
    assert ev.event == {
        "specversion": "1.0",
        "id": expected_id[:32],
        "source": "loyalty-cdp/pos",
        "type": "cdp.purchase.completed",
        "subject": "pos.transactions:T1001@purchase.completed",
        "time": "2026-03-01T10:15:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "record_id": "pos.transactions:T1001@purchase.completed",
            "source": "pos",
            "table": "transactions",
            "pk": "T1001",
            "occurred_at": "2026-03-01T10:15:00.123456Z",
            "identifiers": [{"type": "card_no", "value": "K42"}],
            "purchase_id": "pos:T1001",
            "amount_cents": 1234,
            "currency": "USD",
        },
    }


def test_snapshot_read_maps_like_insert_with_same_id(m: MapFn) -> None:
    [c] = m("pos.public.transactions", "c", TXN)
    [r] = m("pos.public.transactions", "r", TXN)
    assert c.event == r.event


def test_anonymous_transaction_has_no_identifiers(m: MapFn) -> None:
    [ev] = m("pos.public.transactions", "c", {**TXN, "card_no": None, "currency": None})
    assert ev.data["identifiers"] == []
    assert ev.data["currency"] == "USD"  # the column default applies to a null currency


def test_transaction_update_and_delete_emit_nothing(m: MapFn) -> None:
    assert m("pos.public.transactions", "u", {**TXN, "store_id": "S8"}, TXN) == []
    assert m("pos.public.transactions", "d", None, TXN) == []


def test_transaction_line(m: MapFn) -> None:
    line = {"txn_id": "T1001", "line_no": 2, "sku": "SKU-9", "qty": 3, "unit_price": "4.5"}
    [ev] = m("pos.public.transaction_lines", "c", line)
    assert ev.type == "cdp.purchase.line"
    assert ev.key == "pos.transaction_lines:T1001/2"
    assert ev.time == "2026-03-01T10:15:00.250000Z"  # $commit: source.ts_ms
    assert {
        k: ev.data[k] for k in ("purchase_id", "line_no", "sku", "qty", "unit_price_cents")
    } == {
        "purchase_id": "pos:T1001",
        "line_no": 2,
        "sku": "SKU-9",
        "qty": 3,
        "unit_price_cents": 450,
    }
    assert ev.id == event_id("pos", "transaction_lines", "T1001/2", "", "cdp.purchase.line")


def test_return_is_a_refund_without_identifiers(m: MapFn) -> None:
    ret = {
        "return_id": "R9",
        "txn_id": "T1001",
        "amount": "2.00",
        "occurred_at": "2026-03-02T08:00:00+00:00",
    }
    [ev] = m("pos.public.returns", "c", ret)
    assert ev.type == "cdp.purchase.refunded"
    assert ev.time == "2026-03-02T08:00:00.000000Z"
    assert ev.data["identifiers"] == []
    assert (ev.data["refund_id"], ev.data["purchase_id"], ev.data["amount_cents"]) == (
        "pos:R9",
        "pos:T1001",
        200,
    )


def test_zero_return_is_rejected(m: MapFn) -> None:
    ret = {
        "return_id": "R9",
        "txn_id": "T1001",
        "amount": "0.00",
        "occurred_at": "2026-03-02T08:00:00Z",
    }
    with pytest.raises(MappingError) as err:
        m("pos.public.returns", "c", ret)
    assert err.value.topic == "pos.public.returns"


def test_card_issued_is_enrollment_linking_card_member_phone(m: MapFn) -> None:
    [ev] = m("pos.public.loyalty_cards", "c", CARD)
    assert ev.type == "cdp.member.enrolled"
    assert ev.time == "2026-02-01T09:00:00.000000Z"
    assert ev.data["member_no"] == "M0001"
    assert ev.data["identifiers"] == [
        {"type": "card_no", "value": "K42"},
        {"type": "member_no", "value": "M0001"},
        {"type": "phone", "value": "15550102"},
    ]


def test_card_phone_change_links_again_without_pii_in_ids(m: MapFn) -> None:
    new = {**CARD, "phone": "+1 555 0199"}
    [ev] = m("pos.public.loyalty_cards", "u", new, CARD)
    assert ev.type == "cdp.identity.linked"
    assert "5550199" not in ev.data["record_id"] and "5550199" not in ev.key
    assert {"type": "phone", "value": "15550199"} in ev.data["identifiers"]
    # unchanged card: nothing
    assert m("pos.public.loyalty_cards", "u", CARD, CARD) == []
    # redelivery of the same change: same id
    [again] = m("pos.public.loyalty_cards", "u", new, CARD)
    assert again.id == ev.id
