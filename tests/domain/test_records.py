"""The canonical-record parser: typed records out, typed errors naming the record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.records import (
    ConsentChanged,
    Identifier,
    InvalidRecord,
    MemberEnrolled,
    PurchaseCompleted,
    record_from_cloudevent,
    record_from_data,
    record_to_data,
)


def event(type_: str, **data: Any) -> dict[str, Any]:
    base = {
        "record_id": "pos.transactions:T1", "source": "pos", "table": "transactions",
        "pk": "T1", "occurred_at": "2026-03-01T10:15:00.000000Z",
        "identifiers": [{"type": "card_no", "value": " C1 "},
                        {"type": "email", "value": " Ann@X.COM "},
                        {"type": "phone", "value": "+1 (555) 010-0200"}],
    }
    base.update(data)
    return {"specversion": "1.0", "id": "x", "source": "loyalty-cdp/pos", "type": type_,
            "subject": "pos.transactions:T1", "time": base["occurred_at"],
            "datacontenttype": "application/json", "data": base}


PURCHASE = {"purchase_id": "pos:T1", "amount_cents": 1234, "currency": "USD"}


def test_purchase_parses_normalised_and_utc() -> None:
    r = record_from_cloudevent(event("cdp.purchase.completed", **PURCHASE,
                                     occurred_at="2026-03-01T12:15:00+02:00"))
    assert isinstance(r, PurchaseCompleted)
    assert r.occurred_at == datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    assert r.identifiers == (Identifier("card_no", "C1"), Identifier("email", "ann@x.com"),
                             Identifier("phone", "15550100200"))
    assert record_from_data(r.TYPE, record_to_data(r)) == r


def test_enrollment_links_its_member_no_and_consent_round_trips() -> None:
    r = record_from_cloudevent(event("cdp.member.enrolled", member_no="M7"))
    assert isinstance(r, MemberEnrolled) and Identifier("member_no", "M7") in r.identifiers
    c = record_from_cloudevent(event("cdp.consent.changed",
                                     consent={"sms_consent": True, "push_token": False}))
    assert isinstance(c, ConsentChanged)
    assert c.consent == (("push_token", False), ("sms_consent", True))
    assert record_from_data(c.TYPE, record_to_data(c)) == c


@pytest.mark.parametrize(
    ("type_", "data", "reason"),
    [
        ("cdp.purchase.completed", {**PURCHASE, "amount_cents": -5}, "amount_cents: negative"),
        ("cdp.purchase.completed", {**PURCHASE, "currency": "XXX"}, "unknown currency"),
        ("cdp.purchase.completed", {**PURCHASE, "amount_cents": 12.5}, "not an integer"),
        ("cdp.purchase.completed", {**PURCHASE, "amount_cents": True}, "not an integer"),
        ("cdp.purchase.completed", {"amount_cents": 1, "currency": "USD"}, "purchase_id"),
        ("cdp.purchase.completed", {**PURCHASE, "occurred_at": None}, "occurred_at: missing"),
        ("cdp.purchase.completed", {**PURCHASE, "occurred_at": "2026-03-01T10:15:00"},
         "without timezone"),
        ("cdp.purchase.completed", {**PURCHASE, "occurred_at": "yesterday"}, "RFC 3339"),
        ("cdp.purchase.refunded", {"refund_id": "R", "purchase_id": "p", "amount_cents": 0},
         "amount_cents"),
        ("cdp.purchase.refunded", {"refund_id": "R", "purchase_id": "p", "amount_cents": -1},
         "negative"),
        ("cdp.points.redeemed", {"redemption_id": "X", "points": 0}, "points"),
        ("cdp.consent.changed", {"consent": {"email_opt_in": "yes"}}, "email_opt_in"),
        ("cdp.engagement.recorded", {"kind": "dance", "sku": None}, "kind"),
        ("cdp.member.enrolled", {}, "member_no"),
        ("cdp.nope", {}, "unknown canonical type"),
        ("cdp.identity.linked", {"identifiers": [{"type": "ssn", "value": "1"}]}, "unknown type"),
    ],
)
def test_invalid_records_name_the_record(type_: str, data: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        record_from_cloudevent(event(type_, **data))
    assert info.value.record_id == "pos.transactions:T1"
    assert reason in info.value.reason


def test_currency_allow_list_is_configurable() -> None:
    ev = event("cdp.purchase.completed", **{**PURCHASE, "currency": "PLN"})
    with pytest.raises(InvalidRecord):
        record_from_cloudevent(ev)
    r = record_from_cloudevent(ev, currencies={"PLN"})
    assert isinstance(r, PurchaseCompleted) and r.currency == "PLN"


def test_envelope_errors() -> None:
    with pytest.raises(InvalidRecord, match="data"):
        record_from_cloudevent({"specversion": "1.0", "type": "cdp.identity.linked"})
    bad = event("cdp.identity.linked")
    bad["specversion"] = "0.3"
    with pytest.raises(InvalidRecord, match="specversion"):
        record_from_cloudevent(bad)
    missing_id = event("cdp.identity.linked")
    del missing_id["data"]["record_id"]
    with pytest.raises(InvalidRecord, match="record_id"):
        record_from_cloudevent(missing_id)
