"""Parsing of the ``{id}`` of ``GET /v1/members/{id}`` (SPEC 4 normalisation, 422 cases)."""

from __future__ import annotations

import pytest

from streams.api import IdentifierError, parse_member_ref
from streams.profile_process import event_type


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("M100", ("member_no", "M100")),
        ("member_no: M100 ", ("member_no", "M100")),
        ("email:  Ann@Example.COM ", ("email", "ann@example.com")),
        ("email:%20Ann@Example.COM", ("email", "ann@example.com")),
        ("phone:+1 (555) 010-0100", ("phone", "15550100100")),
        ("card_no:C1", ("card_no", "C1")),
        ("CUSTOMER_ID:W1", ("customer_id", "W1")),
        ("user_id:U1", ("user_id", "U1")),
    ],
)
def test_parse_member_ref(ref: str, expected: tuple[str, str]) -> None:
    assert parse_member_ref(ref) == expected


@pytest.mark.parametrize("ref", ["passport:X", "email:", "phone:---", ":x"])
def test_bad_member_ref(ref: str) -> None:
    with pytest.raises(IdentifierError):
        parse_member_ref(ref)


def test_event_type_from_cloudevent_bytes() -> None:
    payload = (
        b'{"specversion":"1.0","id":"x","source":"s","type":"loyalty.tier_upgraded","data":{}}'
    )
    assert event_type(payload) == "tier_upgraded"
    assert event_type(b"{}") == "unknown"
