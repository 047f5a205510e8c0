"""The profile stage's state cache: cold (compacted) states and the parsed-record hand-over
from the identity stage give exactly the profiles of an all-hot, parse-everything run.

Real PostgreSQL store, the real identity and profile stages, a fake producer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from app.domain.records import Record
from streams.parsed_records import ParsedRecords
from streams.profiles import WALL_SLACK, ProfileStage
from streams.store import Store
from tests.domain.builders import at, buy, consent, enroll, link, redeem, refund
from tests.stage_harness import PARTS, PROGRAM, Msg, Pipeline, cloudevent, truncate

pytest_plugins = ["tests.pg_support"]


def history() -> list[list[Record]]:
    """Batches: six members enrolled, then purchases, a refund and a redemption over them."""
    first = [r for i in range(6) for r in (
        link(f"W{i}", at(0), customer_id=f"W{i}", email=f"p{i}@example.com"),
        consent(f"W{i}", at(0), email_opt_in=True),
        enroll(f"M{i}", at(1), customer_id=f"W{i}"),
    )]
    buys = [buy(f"T{i}-{k}", 9_000 + 500 * k, at(2 + k), member_no=f"M{i}")
            for k in range(4) for i in range(6)]
    late = [
        refund("R1", "T0-1", 4_000, at(9)),
        redeem("X2", 300, at(10), member_no="M2"),
        buy("T0-9", 30_000, at(11), customer_id="W0"),  # a cold member comes back
    ]
    return [first, buys[:12], buys[12:], late]


def run(
    store: Store, hot_limit: int, parsed: ParsedRecords | None, cold_limit: int = 10_000
) -> tuple[dict[str, Any], Any]:
    truncate(store)
    p = Pipeline(store)
    p.identity.parsed = p.profiles.parsed = parsed
    p.profiles.hot_limit = hot_limit
    p.profiles.cold_limit = cold_limit
    for batch in history():
        p.identity.process([Msg(cloudevent(r)) for r in batch])
        p.drain()
    with store.tx() as conn:
        docs = dict(conn.execute(text("SELECT profile_id, doc FROM profiles")).all())
    return docs, p


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    s = Store(source_dsns["cdp"])
    yield s
    s.dispose()


def test_cold_states_and_handed_records_give_the_same_profiles(store: Store) -> None:
    want, _ = run(store, hot_limit=10_000, parsed=None)
    parsed = ParsedRecords()
    got, p = run(store, hot_limit=2, parsed=parsed)
    assert got == want and len(want) == 6
    states = p.profiles.states
    assert sum(not st.is_cold for st in states.values()) <= 2
    assert any(st.is_cold for st in states.values())
    assert parsed.hits > 0 and len(parsed) == 0  # every inserted record was taken once


def test_dropped_states_are_read_back_from_the_store(store: Store) -> None:
    """Beyond LOYALTY_CDP_COLD_STATES compacted states are dropped from memory; the members
    they held come back (W0 buys again in the last batch) exactly as if kept."""
    want, kept = run(store, hot_limit=10_000, parsed=None)
    got, p = run(store, hot_limit=2, parsed=None, cold_limit=1)
    assert got == want
    assert p.profiles.counts["states_dropped"] > 0
    assert len(p.profiles.states) <= 3  # 2 hot + 1 cold
    # dropped members were read from the store again: their whole history, not just news
    read = p.profiles.counts["records_read"]
    assert read > kept.profiles.counts["records_read"]


@pytest.mark.parametrize("chunk", [10_000, 2])
def test_a_restarted_worker_loads_only_due_profiles_and_applies_their_effects(
    store: Store, chunk: int
) -> None:
    """Wall clock: after a restart the timer finds due members through the store's
    next_due index (nothing is loaded up front) and gives the same profiles as a worker
    that kept every state in memory (and wrote whole batches; the restarted one writes
    chunks of ``chunk`` profiles)."""
    clock = {"now": at(12)}

    def now() -> Any:
        return clock["now"] + WALL_SLACK

    def stage(p: Pipeline, chunk: int = 10_000) -> ProfileStage:
        prof = ProfileStage(PROGRAM, store, p.out, p.profiles.outbox, PARTS, clock="wall",
                            now=now, chunk=chunk)
        prof.assign(range(PARTS))
        return prof

    def profiles() -> dict[str, Any]:
        with store.tx() as conn:
            return dict(conn.execute(text("SELECT profile_id, doc FROM profiles")).all())

    # the same history twice: a worker that stays up, and one restarted before the effects
    results = []
    for restart in (False, True):
        clock["now"] = at(12)
        _, p = run(store, hot_limit=10_000, parsed=None)
        p.profiles = stage(p)
        p.profiles.advance_wall_clock()  # everything as of day 12
        if restart:
            p.profiles = stage(p, chunk)  # empty cache, nothing loaded
        clock["now"] = at(340)  # expiring notices (30 days before day 367+) are due
        p.profiles.advance_wall_clock()
        loaded = len(p.profiles.states)
        clock["now"] = at(400)  # lots expired
        p.profiles.advance_wall_clock()
        results.append((profiles(), loaded))
    (kept, _), (restarted, loaded) = results
    assert restarted == kept
    assert any(d["points_balance"] == 0 for d in kept.values())  # expiry really ran
    assert 0 < loaded <= len(kept)
