"""The decisioning agent's logic over a real PostgreSQL store, without Kafka.

A fake producer records what the offer outbox publishes. Checks: the loyalty-event and
purchase moments, a milestone-band moment to an email offer with its reasons, every message
valid against ``schemas/offers.schema.json``, a replay sending nothing twice, caps exact
across batches (history persisted), guests, and the per-profile serialisation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import text

from app.decisioning import load_catalog
from app.domain.program import load_program
from app.domain.records import format_time
from app.settings import REPO_ROOT, settings
from streams.decisioning import (
    DecisionAgent,
    moment_from_canonical,
    moment_from_loyalty,
    offers_file,
)
from streams.store import Store

pytest_plugins = ["tests.pg_support"]

PROGRAM = load_program(settings().program_file).compile()
CATALOG = load_catalog(offers_file())
T0 = datetime(2026, 6, 10, 16, 0, tzinfo=UTC)  # 12:00 in New York: outside quiet hours
SCHEMA = json.loads((REPO_ROOT / "schemas" / "offers.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self._lock = threading.Lock()

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes]] | None = None,
             partition: int | None = None) -> None:
        assert value is not None and key is not None
        with self._lock:
            self.sent.append((topic, key, value))

    def flush_sync(self, timeout: float = 60.0) -> None:
        pass


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    s = Store(source_dsns["cdp"])
    with s.tx() as conn:
        conn.execute(text(
            "TRUNCATE decisions, contact_history, offer_outbox, offer_outbox_pending, profiles,"
            " profile_identifiers, records, clock"
        ))
    yield s
    s.dispose()


def _agent(store: Store) -> tuple[DecisionAgent, FakeProducer]:
    out = FakeProducer()
    agent = DecisionAgent(PROGRAM, CATALOG, store, out, "unused:9092",  # type: ignore[arg-type]
                          clock="manual", resolve_timeout=0.5)
    return agent, out


def _doc(member: str | None, balance: int, *, email: bool = True,
         enrolled: bool = True, **extra: Any) -> dict[str, Any]:
    idents = ["email:ann@example.com"] + ([f"member_no:{member}"] if member else [])
    return {
        "member_id": member, "member_nos": [member] if member else [],
        "identifiers": sorted(idents),
        "enrolled_at": "2026-01-01T00:00:00.000000Z" if enrolled else None,
        "tier": "member" if enrolled else None, "points_balance": balance,
        "qualifying_spend_cents": balance * 100, "lifetime_spend_cents": balance * 100,
        "purchase_count": 5, "last_purchase_at": format_time(T0 - timedelta(days=2)),
        "lapse_risk": False,
        "consent": {"email_opt_in": email, "sms_consent": False, "admt_opt_out": False,
                    "push_opt_in": False},
        "as_of": format_time(T0), **extra,
    }


def _put(store: Store, pid: str, doc: dict[str, Any]) -> None:
    with store.tx() as conn:
        store.upsert_profiles(conn, {pid: doc}, {pid: 1})


def _event(type_: str, pid: str, member: str | None, at: datetime, n: int,
           **data: Any) -> bytes:
    return orjson.dumps({
        "specversion": "1.0", "id": f"{n:032x}", "source": "loyalty-cdp/loyalty",
        "type": f"loyalty.{type_}", "subject": member or pid, "time": format_time(at),
        "datacontenttype": "application/json",
        "data": {"member_id": member, "profile_id": pid, "effective_at": format_time(at),
                 "cause_record_id": f"pos.transactions:T{n}", **data},
    })


def _messages(out: FakeProducer) -> list[tuple[str, str, dict[str, Any]]]:
    msgs = [(t, k.decode(), orjson.loads(v)) for t, k, v in out.sent]
    for _, _, m in msgs:
        VALIDATOR.validate(m)
    return msgs


def test_moments_from_events() -> None:
    types = frozenset({"milestone_approaching"})
    pe = orjson.loads(_event("points_earned", "P1", "M1", T0, 1, points=12, amount_cents=1250))
    p = moment_from_loyalty(pe, types)
    assert p is not None and p.moment.type == "purchase"
    assert (p.moment.id, p.moment.points_earned, p.moment.amount_cents) == (
        "pos.transactions:T1", 12, 1250)
    ma = orjson.loads(_event("milestone_approaching", "P1", "M1", T0, 2))
    assert moment_from_loyalty(ma, types).moment.type == "milestone_approaching"  # type: ignore[union-attr]
    assert moment_from_loyalty(orjson.loads(_event("points_expired", "P1", "M1", T0, 3)),
                               types) is None
    purchase: dict[str, Any] = {"type": "cdp.purchase.completed", "data": {
        "record_id": "web.orders:O1", "occurred_at": format_time(T0), "amount_cents": 5000,
        "identifiers": [{"type": "customer_id", "value": "W1"}]}}
    g = moment_from_canonical(purchase)
    assert g is not None and g.profile_id is None and g.record_id == "web.orders:O1"
    anonymous = {**purchase, "data": {**purchase["data"], "identifiers": []}}
    assert moment_from_canonical(anonymous) is None


def test_milestone_band_to_email_offer_with_reasons_and_replay(store: Store) -> None:
    _put(store, "P1", _doc("M1", 960))
    agent, out = _agent(store)
    batch = [
        _event("points_earned", "P1", "M1", T0, 1, points=40, amount_cents=4000,
               multiplier="1", debt_repaid=0, purchase_id="T1"),
        _event("milestone_approaching", "P1", "M1", T0, 2, points_balance=960, milestone=1000,
               gap_points=40),
    ]
    agent.process_loyalty(batch)
    msgs = _messages(out)
    emails = [m for t, _, m in msgs if t == "offers.email"]
    assert {m["data"]["moment"]["type"] for m in emails} == {"purchase", "milestone_approaching"}
    near = next(m for m in emails if m["data"]["moment"]["type"] == "milestone_approaching")
    assert near["subject"] == "M1" and near["data"]["address"] == "ann@example.com"
    codes = {r["code"] for r in near["data"]["offers"][0]["reasons"]}
    assert "closes_milestone_gap" in codes
    assert near["data"]["rejected"], "rejected candidates are explained"
    receipt = next(m for m in emails if m["data"]["moment"]["type"] == "purchase")
    assert receipt["data"]["offers"][0]["kind"] == "points_receipt"
    assert all(k == "M1" for _, k, _ in msgs)
    with store.tx() as conn:
        n_hist = conn.execute(text("SELECT count(*) FROM contact_history")).scalar_one()
        pending = conn.execute(text("SELECT count(*) FROM offer_outbox_pending")).scalar_one()
        rows = conn.execute(text("SELECT count(*) FROM offer_outbox")).scalar_one()
    assert n_hist == len(msgs)
    assert rows == len(msgs) and pending == 0  # published, then marked at once

    # a replay (same events, a fresh agent as after a restart) sends nothing
    agent2, out2 = _agent(store)
    agent2.process_loyalty(batch)
    agent2.process_loyalty(batch)
    assert out2.sent == []
    assert agent2.counts.duplicates == 4


def test_caps_exact_across_batches(store: Store) -> None:
    _put(store, "P1", _doc("M1", 960))
    agent, out = _agent(store)
    for i in range(8):  # one moment per batch, an hour apart: the history is the store's
        at = T0 + timedelta(hours=i)
        agent.process_loyalty([_event("points_earned", "P1", "M1", at, 10 + i, points=5,
                                      amount_cents=500)])
    emails = [m for t, _, m in _messages(out) if t == "offers.email"]
    assert len(emails) == CATALOG.contact_policy.channels["email"].cap
    with store.tx() as conn:
        caps = conn.execute(text(
            "SELECT count(*) FROM decisions WHERE doc::text LIKE '%channel_cap%'"
        )).scalar_one()
    assert caps >= 1


def test_two_workers_on_one_member_never_both_pass_a_cap(store: Store) -> None:
    _put(store, "P1", _doc("M1", 960))
    outs = []
    threads = []
    for w in range(2):
        agent, out = _agent(store)
        outs.append(out)
        batch = [_event("points_earned", "P1", "M1", T0 + timedelta(minutes=i), 100 * w + i,
                        points=5, amount_cents=500) for i in range(4)]
        threads.append(threading.Thread(target=agent.process_loyalty, args=(batch,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emails = [m for o in outs for t, _, m in _messages(o) if t == "offers.email"]
    assert len(emails) == CATALOG.contact_policy.channels["email"].cap


def test_guest_purchase_gets_the_enrollment_offer_members_skipped(store: Store) -> None:
    _put(store, "G1", _doc(None, 0, enrolled=False))
    _put(store, "P1", _doc("M1", 100))
    with store.tx() as conn:
        conn.execute(text(
            "INSERT INTO records (record_id, profile_id, occurred_at, type, payload) VALUES"
            " ('web.orders:O1', 'G1', :t, 'cdp.purchase.completed', '\\x7b7d'),"
            " ('pos.transactions:T9', 'P1', :t, 'cdp.purchase.completed', '\\x7b7d')"
        ), {"t": T0})
    agent, out = _agent(store)

    def purchase(rid: str) -> bytes:
        return orjson.dumps({"type": "cdp.purchase.completed", "data": {
            "record_id": rid, "occurred_at": format_time(T0), "amount_cents": 4250,
            "identifiers": [{"type": "customer_id", "value": "W1"}]}})

    agent.process_canonical([purchase("web.orders:O1"), purchase("pos.transactions:T9"),
                             purchase("web.orders:UNKNOWN"), b'{"type":"cdp.identity.linked"}'])
    msgs = _messages(out)
    assert msgs and all(k == "G1" for _, k, _ in msgs)
    email = next(m for t, _, m in msgs if t == "offers.email")
    assert email["data"]["member_id"] is None
    assert email["data"]["offers"][0]["kind"] == "enrollment"
    assert email["data"]["member"]["points_if_enrolled"] == 42
    assert agent.counts.members_skipped == 1 and agent.counts.unresolved == 1


def test_stale_moments_are_not_decided(store: Store) -> None:
    _put(store, "P1", _doc("M1", 960))
    agent, out = _agent(store)
    with store.tx() as conn:
        store.set_clock(conn, 0, T0 + timedelta(days=30))
    agent.process_loyalty([_event("milestone_approaching", "P1", "M1", T0, 1)])
    assert out.sent == [] and agent.counts.stale == 1


def test_a_moment_is_a_duplicate_only_for_the_profile_it_was_decided_for(store: Store) -> None:
    """Decisions are keyed by (moment, profile): the same moment id under another profile
    (a merge re-homes a profile's moments) is decided for that profile, once."""
    _put(store, "P1", _doc("M1", 960))
    _put(store, "P2", _doc("M2", 960))
    agent, out = _agent(store)
    agent.process_loyalty([_event("milestone_approaching", "P1", "M1", T0, 7)])
    assert {k for _, k, _ in _messages(out)} == {"M1"}
    agent.process_loyalty([_event("milestone_approaching", "P2", "M2", T0, 7)])
    assert {k for _, k, _ in _messages(out)} == {"M1", "M2"}
    assert agent.counts.duplicates == 0
    sent = len(out.sent)
    agent.process_loyalty([_event("milestone_approaching", "P2", "M2", T0, 7),
                           _event("milestone_approaching", "P1", "M1", T0, 7)])
    assert len(out.sent) == sent and agent.counts.duplicates == 2
