from __future__ import annotations

import pytest

from app.mapping import MappingError
from tests.mapping.conftest import MapFn

USER = {
    "user_id": "U5",
    "email": "Bob@X.org",
    "phone": None,
    "member_no": None,
    "push_token": None,
    "push_opt_in": False,
    "updated_at": "2026-03-01T10:00:00Z",
}
U = "app.public.users"


def test_user_insert_links_and_records_consent(m: MapFn) -> None:
    linked, consent = m(U, "c", USER)
    assert linked.type == "cdp.identity.linked"
    assert linked.data["identifiers"] == [
        {"type": "user_id", "value": "U5"},
        {"type": "email", "value": "bob@x.org"},
    ]
    assert consent.data["consent"] == {"push_opt_in": False, "push_token": False}


def test_member_no_set_is_enrollment_at_updated_at(m: MapFn) -> None:
    after = {**USER, "member_no": "M0042", "updated_at": "2026-03-02T08:30:00.654321Z"}
    linked, enrolled = m(U, "u", after, USER)
    assert linked.type == "cdp.identity.linked"
    assert enrolled.type == "cdp.member.enrolled"
    assert enrolled.time == "2026-03-02T08:30:00.654321Z"
    assert enrolled.data["member_no"] == "M0042"
    assert enrolled.data["record_id"] == "app.users:U5#M0042@member.enrolled"
    # a later snapshot of the enrolled user gives the same enrollment id
    later = {**after, "email": "bob@y.org", "updated_at": "2026-04-01T00:00:00Z"}
    snap = {e.type: e for e in m(U, "r", later)}
    assert snap["cdp.member.enrolled"].id == enrolled.id
    assert snap["cdp.identity.linked"].id != linked.id  # a new version of the row


def test_user_inserted_with_member_no_is_enrolled(m: MapFn) -> None:
    types = [e.type for e in m(U, "c", {**USER, "member_no": "M1"})]
    assert types == ["cdp.identity.linked", "cdp.member.enrolled", "cdp.consent.changed"]


def test_push_token_is_never_copied_and_rotation_is_no_change(m: MapFn) -> None:
    v1 = {
        **USER,
        "push_token": "secret-token-1",
        "push_opt_in": True,
        "updated_at": "2026-03-03T00:00:00Z",
    }
    [ev] = m(U, "u", v1, USER)
    assert ev.type == "cdp.consent.changed"
    assert ev.data["consent"] == {"push_opt_in": True, "push_token": True}
    assert b"secret-token" not in ev.to_json()
    v2 = {**v1, "push_token": "secret-token-2", "updated_at": "2026-03-04T00:00:00Z"}
    assert m(U, "u", v2, v1) == []
    v3 = {**v2, "push_token": None, "updated_at": "2026-03-05T00:00:00Z"}
    [gone] = m(U, "u", v3, v2)
    assert gone.data["consent"] == {"push_opt_in": True, "push_token": False}


def test_app_purchase(m: MapFn) -> None:
    row = {
        "purchase_id": "P5",
        "user_id": "U5",
        "total": "9.99",
        "currency": "gbp",
        "occurred_at": "2026-03-01T10:15:00.000001Z",
    }
    [ev] = m("app.public.purchases", "c", row)
    assert ev.type == "cdp.purchase.completed"
    assert (ev.data["purchase_id"], ev.data["amount_cents"], ev.data["currency"]) == (
        "app:P5",
        999,
        "GBP",
    )
    assert ev.data["identifiers"] == [{"type": "user_id", "value": "U5"}]


def test_redemption(m: MapFn) -> None:
    row = {
        "redemption_id": "D1",
        "user_id": "U5",
        "points": 500,
        "reward_code": None,
        "occurred_at": "2026-03-01T10:15:00Z",
    }
    [ev] = m("app.public.redemptions", "r", row)
    assert ev.type == "cdp.points.redeemed"
    assert (ev.data["redemption_id"], ev.data["points"], ev.data["reward_code"]) == (
        "app:D1",
        500,
        None,
    )


def test_redemption_of_zero_points_is_rejected(m: MapFn) -> None:
    row = {
        "redemption_id": "D1",
        "user_id": "U5",
        "points": 0,
        "reward_code": "X",
        "occurred_at": "2026-03-01T10:15:00Z",
    }
    with pytest.raises(MappingError, match="minimum"):
        m("app.public.redemptions", "c", row)


def test_app_event(m: MapFn) -> None:
    row = {
        "event_id": "E1",
        "user_id": "U5",
        "kind": "referral_sent",
        "sku": None,
        "occurred_at": "2026-03-01T10:15:00Z",
    }
    [ev] = m("app.public.app_events", "c", row)
    assert ev.type == "cdp.engagement.recorded"
    assert (ev.data["kind"], ev.data["sku"]) == ("referral_sent", None)


def test_unknown_app_event_kind_is_rejected(m: MapFn) -> None:
    row = {
        "event_id": "E1",
        "user_id": "U5",
        "kind": "rage_click",
        "sku": None,
        "occurred_at": "2026-03-01T10:15:00Z",
    }
    with pytest.raises(MappingError) as err:
        m("app.public.app_events", "c", row)
    assert err.value.code == "bad_value"


def test_updates_of_insert_only_tables_emit_nothing(m: MapFn) -> None:
    row = {
        "event_id": "E1",
        "user_id": "U5",
        "kind": "view",
        "sku": "S",
        "occurred_at": "2026-03-01T10:15:00Z",
    }
    assert m("app.public.app_events", "u", {**row, "sku": "T"}, row) == []
    assert m("app.public.app_events", "d", None, row) == []
