from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from app.mapping import MappingError, parse_ingest, validate_canonical
from app.mapping.bench import synthetic_changes
from app.mapping.engine import Mapper
from app.mapping.schema import schema

GOOD: dict[str, Any] = {
    "specversion": "1.0",
    "id": "kiosk-0001",
    "source": "loyalty-cdp/kiosk",
    "type": "cdp.purchase.completed",
    "subject": "kiosk.sales:S1",
    "time": "2026-03-01T10:15:00.000000Z",
    "datacontenttype": "application/json",
    "data": {
        "record_id": "kiosk.sales:S1",
        "source": "kiosk",
        "table": "sales",
        "pk": "S1",
        "occurred_at": "2026-03-01T10:15:00.000000Z",
        "identifiers": [{"type": "email", "value": "ann@example.com"}],
        "purchase_id": "kiosk:S1",
        "amount_cents": 999,
        "currency": "USD",
    },
}


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(schema())


def test_every_mapped_event_validates(mapper: Mapper) -> None:
    seen = set()
    for topic, value in synthetic_changes(1200):
        for ev in mapper.map(topic, value):
            validate_canonical(orjson.loads(ev.to_json()))
            seen.add(ev.type)
    assert seen == set(schema()["properties"]["type"]["enum"])


def test_good_ingest_event() -> None:
    validate_canonical(GOOD)
    [ev] = parse_ingest(orjson.dumps(GOOD))
    assert ev.key == "kiosk.sales:S1"
    assert ev.event == GOOD
    assert parse_ingest(None) == [] and parse_ingest(b"") == []


def _mutated(path: str, value: Any) -> dict[str, Any]:
    ev = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = ev
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return ev


_DELETE = object()


BAD: list[tuple[str, Any]] = [
    ("specversion", "0.3"),
    ("id", _DELETE),
    ("type", "cdp.purchase.exploded"),
    ("time", "2026-03-01T10:15:00Z"),  # not the canonical spelling
    ("time", "2026-03-01T10:15:00.000000+01:00"),
    ("datacontenttype", "text/plain"),
    ("source", "kiosk"),
    ("source", "loyalty-cdp/pos"),  # does not match data.source
    ("subject", "kiosk.sales:S2"),
    ("Extension", "x"),  # attribute names are lower-case alphanumerics
    ("data.amount_cents", -1),
    ("data.amount_cents", 9.99),
    ("data.amount_cents", "999"),
    ("data.currency", "usd"),
    ("data.purchase_id", _DELETE),
    ("data.occurred_at", "2026-02-30T10:15:00.000000Z"),
    ("data.occurred_at", "2026-03-01T10:15:01.000000Z"),  # time != occurred_at
    ("data.identifiers", [{"type": "email", "value": "Ann@Example.com"}]),
    ("data.identifiers", [{"type": "ssn", "value": "1"}]),
    ("data.identifiers", [{"type": "email", "value": ""}]),
    ("data.points", 5),  # not a field of purchase.completed
    ("data", "not an object"),
]


@pytest.mark.parametrize(("path", "value"), BAD)
def test_bad_ingest_events_are_rejected(path: str, value: Any) -> None:
    bad = _mutated(path, value)
    with pytest.raises(MappingError) as err:
        validate_canonical(bad)
    assert err.value.code == "invalid_event" and err.value.topic == "cdp.ingest"
    with pytest.raises(MappingError):
        parse_ingest(orjson.dumps(bad))


def test_the_fast_and_the_reference_engine_agree() -> None:
    """The Rust engine decides validity, the Python one (the reference) only explains a
    rejection: they must agree on every example here, valid and invalid."""
    from app.mapping.schema import _fast_validator, _validator

    cases: list[Any] = [GOOD, {**GOOD, "traceparent": "00-abc-def-01"}]
    cases += [_mutated(path, value) for path, value in BAD]
    for event in cases:
        assert _fast_validator().is_valid(event) == _validator().is_valid(event), event


def test_ingest_error_names_the_path() -> None:
    with pytest.raises(MappingError, match="data/amount_cents"):
        validate_canonical(_mutated("data.amount_cents", -1))


def test_extension_attribute_allowed() -> None:
    validate_canonical({**GOOD, "traceparent": "00-abc-def-01"})


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("cdp.consent.changed", {"consent": {}}),
        ("cdp.consent.changed", {"consent": {"push_token": "abc"}}),
        ("cdp.points.redeemed", {"redemption_id": "D", "points": 0, "reward_code": None}),
        ("cdp.engagement.recorded", {"kind": "rage_click", "sku": None}),
        ("cdp.purchase.refunded", {"refund_id": "R", "purchase_id": "P", "amount_cents": 0}),
        ("cdp.identity.linked", {}),  # no identifiers at all
    ],
)
def test_per_type_rules(type_: str, data: dict[str, Any]) -> None:
    common = {
        k: v
        for k, v in GOOD["data"].items()
        if k in ("record_id", "source", "table", "pk", "occurred_at")
    }
    ids = [] if type_ == "cdp.identity.linked" else GOOD["data"]["identifiers"]
    ev = {**GOOD, "type": type_, "data": {**common, "identifiers": ids, **data}}
    with pytest.raises(MappingError):
        validate_canonical(ev)


def test_bad_json_on_ingest() -> None:
    with pytest.raises(MappingError) as err:
        parse_ingest(b"\xff\xfe")
    assert err.value.code == "bad_json"
