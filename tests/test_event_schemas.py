"""The JSON Schemas of ``loyalty.events`` and ``cdp.profiles`` against what the code emits.

Fast (no stack): a simulated multi-source history is mapped and folded offline
(``tests/offline_pipeline.py``); every loyalty event, encoded exactly as the outbox publishes
it, and every profile snapshot must validate, and the schemas must reject what breaks the
contract. The real topics are validated end to end in
``tests/integration/test_profiles_pipeline.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from app.domain.events import EVENT_TYPES, LoyaltyEvent
from app.domain.program import CompiledProgram, load_program
from app.mapping.engine import Mapper
from app.settings import REPO_ROOT, settings
from app.simulate import generate
from streams.loyalty_events import encode
from tests.offline_pipeline import fold, map_traffic, records_of


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((REPO_ROOT / "schemas" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _program() -> CompiledProgram:
    return load_program(settings().program_file).compile()


@cache
def _history() -> tuple[dict[str, dict[str, Any]], tuple[LoyaltyEvent, ...]]:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    traffic = generate(30, 380, 77, start)  # > 1 year: expiries, downgrades, lapses
    events = map_traffic(Mapper.from_dir(settings().mappings_dir), [traffic])
    until = max(op.at for op in traffic.ops) + timedelta(days=400)
    folded = fold(_program(), records_of(_program(), events), until)
    return folded.profiles, tuple(folded.events)


def test_the_schema_names_every_event_type() -> None:
    schema = json.loads((REPO_ROOT / "schemas" / "loyalty.events.schema.json").read_text())
    assert schema["properties"]["type"]["enum"] == [f"loyalty.{t}" for t in EVENT_TYPES]
    branches = {b["if"]["properties"]["type"]["const"] for b in schema["allOf"]}
    assert branches == {f"loyalty.{t}" for t in EVENT_TYPES}


def test_every_emitted_loyalty_event_validates() -> None:
    v = _validator("loyalty.events.schema.json")
    _, events = _history()
    docs = [orjson.loads(encode(e)) for e in events]
    bad = [(d["type"], [e.message for e in v.iter_errors(d)]) for d in docs if not v.is_valid(d)]
    assert not bad, bad[:3]
    types = Counter(d["type"] for d in docs)
    # the history reaches most moments, time-driven ones included
    for t in (
        "points_earned",
        "points_expiring",
        "points_expired",
        "tier_upgraded",
        "tier_downgraded",
        "lapse_risk",
        "redemption_overdraft",
        "consent_changed",
    ):
        assert types[f"loyalty.{t}"] > 0, (t, types)


def test_every_profile_snapshot_validates() -> None:
    v = _validator("cdp.profiles.schema.json")
    profiles, _ = _history()
    bad = [pid for pid, doc in profiles.items() if not v.is_valid({"profile_id": pid, **doc})]
    assert not bad, bad[:3]


def _event(type_: str) -> dict[str, Any]:
    _, events = _history()
    return orjson.loads(encode(next(e for e in events if e.type == type_)))


@pytest.mark.parametrize(
    ("type_", "breaks"),
    [
        ("points_earned", lambda d: d["data"].pop("balance")),
        ("points_earned", lambda d: d["data"].update(points="12")),
        ("points_earned", lambda d: d["data"].update(surprise=1)),
        ("points_expiring", lambda d: d["data"].update(expires_at="2026-01-01T00:00:00+00:00")),
        ("consent_changed", lambda d: d["data"]["changed"].update(email_opt_in="yes")),
        ("tier_upgraded", lambda d: d["data"].update(reason="magic")),
        ("member_enrolled", lambda d: d["data"].pop("member_id")),
        ("member_enrolled", lambda d: d.update(type="loyalty.unknown")),
        ("member_enrolled", lambda d: d.update(id="not-hex")),
    ],
)
def test_the_schema_rejects_contract_breaks(type_: str, breaks: Any) -> None:
    v = _validator("loyalty.events.schema.json")
    doc = _event(type_)
    assert v.is_valid(doc)
    breaks(doc)
    assert not v.is_valid(doc)
