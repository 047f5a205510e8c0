"""The profile stage in chunks (``LOYALTY_CDP_PROFILE_CHUNK``) gives exactly the store and
the messages of one transaction per batch: profiles, versions, outbox rows, rejected records,
the manual clock. A crash between two chunks of a tick leaves the tick unacknowledged, and
the redelivered batch ends where an uninterrupted run does.

Real PostgreSQL store, the real identity and profile stages, a fake producer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from app.domain.records import PurchaseRefunded, Record
from streams.profiles import encode_tick
from streams.store import Store
from streams.topics import GUEST_PURCHASES, LOYALTY, PROFILES, RESOLVED
from tests.domain.builders import at, buy, consent, enroll, ids, link, redeem, refund
from tests.stage_harness import PARTS, FakeProducer, Msg, Pipeline, clean_store, cloudevent

pytest_plugins = ["tests.pg_support"]

TICK = at(400)  # past the points' expiry: every member's lots expire
LATE_PURCHASE = buy("T2-late", 5_000, at(400.5), customer_id="W2")
LATE_REFUND = PurchaseRefunded(
    "pos.returns:R3",
    "pos",
    "returns",
    "R3",
    at(400.7),
    ids(customer_id="W2"),
    "R3",
    "pos:T2-late",
    1_000,
)


def history() -> list[list[Record] | datetime]:
    """Batches of records (and one manual-clock tick): members, guests with guest purchases,
    a merge of two guests, a guest enrolling (a rename), a refund, a refused refund."""
    first = [
        r
        for i in range(6)
        for r in (
            link(f"W{i}", at(0), customer_id=f"W{i}", email=f"p{i}@example.com"),
            consent(f"W{i}", at(0), email_opt_in=True),
        )
    ] + [enroll(f"M{i}", at(1), customer_id=f"W{i}") for i in range(4)]
    buys = [
        buy(f"T{i}-{k}", 9_000 + 500 * k, at(2 + k), customer_id=f"W{i}")
        for k in range(3)
        for i in range(6)
    ]
    merge = [
        link("W4b", at(6), customer_id="W4", email="p5@example.com"),  # W4 + W5: one guest
        enroll("M9", at(7), customer_id="W4"),  # ... which enrolls
        refund("R1", "T0-1", 4_000, at(8)),
        refund("R2", "T1-2", 1_000, at(1)),  # before its purchase: refused
        redeem("X1", 300, at(9), member_no="M1"),
        buy("T3-9", 30_000, at(10), member_no="M3"),
        LATE_REFUND,  # its purchase comes after the tick: waits in the stage's pending
    ]
    after = [
        *(buy(f"U{i}", 2_000, at(401), customer_id=f"W{i}") for i in range(6)),
        LATE_PURCHASE,
    ]
    return [first, buys[:9], buys[9:], merge, TICK, after]


def notes(p: Pipeline) -> list[tuple[int, bytes]]:
    got = [(part or 0, v) for t, v, _, part in p.out.sent if t == RESOLVED and v]
    p.out.sent = [m for m in p.out.sent if m[0] != RESOLVED]
    return got


def ticks(t: datetime) -> list[tuple[int, bytes]]:
    return [(part, encode_tick(t)) for part in range(PARTS)]


def store_state(store: Store) -> dict[str, Any]:
    with store.tx() as conn:

        def rows(sql: str) -> list[Any]:
            return [tuple(r) for r in conn.execute(text(sql)).all()]

        return {
            "profiles": rows(
                "SELECT profile_id, doc, version, next_due FROM profiles ORDER BY profile_id"
            ),
            "identifiers": rows(
                "SELECT type, value_hash, profile_id FROM profile_identifiers ORDER BY 1, 2, 3"
            ),
            "outbox": [
                (*r[:5], bytes(r[5]), r[6])
                for r in rows(
                    "SELECT event_id, partition, profile_id, type, key, payload,"
                    " seq NOT IN (SELECT seq FROM loyalty_outbox_pending) FROM loyalty_outbox"
                    " ORDER BY event_id"
                )
            ],
            "rejected": rows("SELECT record_id, reason FROM rejected_records ORDER BY 1"),
            "clock": rows("SELECT partition, at FROM clock ORDER BY 1"),
        }


def unversioned(profiles: list[Any]) -> list[Any]:
    return [(pid, doc, due) for pid, doc, _, due in profiles]


def messages(out: FakeProducer) -> list[tuple[str, bytes, bytes]]:
    """What went to the topics (any order: chunks publish in their own order)."""
    return sorted((t, v or b"", k or b"") for t, v, k, _ in out.sent if t != RESOLVED)


def run(store: Store, chunk: int) -> tuple[dict[str, Any], list[Any], int]:
    """The whole history; returns the store, the messages and the profile transactions."""
    p = Pipeline(store)
    p.profiles.chunk = chunk
    commits = 0
    committed = p.profiles._committed

    def counting(*args: Any) -> None:
        nonlocal commits
        commits += 1
        committed(*args)

    p.profiles._committed = counting  # type: ignore[method-assign]
    waits = False  # the late refund's purchase has not come yet
    unmarked: set[str] = set()
    for batch in history():
        if isinstance(batch, datetime):
            p.profiles.process(ticks(batch))
        else:
            p.identity.process([Msg(cloudevent(r)) for r in batch])
            p.profiles.process(notes(p))
            waits = LATE_REFUND in batch or (waits and LATE_PURCHASE not in batch)
        assert p.profiles.pending == (
            {"member:M2": {"pos.returns:R3": LATE_REFUND}} if waits else {}
        )  # no empty entry kept per profile
        # marks are deferred: a batch's rows are marked in the next batch's transaction
        pending = [r for r in store_state(store)["outbox"] if not r[6]]
        now = {r[0] for r in pending}
        assert not now & unmarked
        # the identity stage's own rows (merges) are marked at once: it does not defer
        assert all(r[3] != "profiles_merged" for r in pending)
        unmarked = now
    # ... and the last batch's by the timer; only published rows were left unmarked
    assert unmarked and unmarked <= {orjson.loads(v)["id"] for t, v, _ in messages(p.out)
                                     if t in (LOYALTY, GUEST_PURCHASES) and v}
    p.profiles.advance_wall_clock()  # the worker's once-a-second timer
    return store_state(store), messages(p.out), commits


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    with clean_store(source_dsns["cdp"]) as s:
        yield s


@pytest.fixture()
def whole(store: Store) -> tuple[dict[str, Any], list[Any]]:
    """The reference: one transaction per batch."""
    state, msgs, commits = run(store, chunk=10_000)
    assert commits == len(history())
    with store.tx() as conn:
        conn.execute(
            text(
                "TRUNCATE profiles, profile_identifiers, records, rejected_records,"
                " loyalty_outbox, loyalty_outbox_pending, parked_records, anonymous_purchases,"
                " clock"
            )
        )
    return state, msgs


def test_chunks_give_the_store_and_messages_of_whole_batches(
    store: Store, whole: tuple[dict[str, Any], list[Any]]
) -> None:
    state, msgs, commits = run(store, chunk=2)
    assert commits > 2 * len(history())  # really in chunks
    assert state == whole[0]
    assert msgs == whole[1]
    # the history covers what chunking could break
    types = {r[3] for r in state["outbox"]}
    assert {"profiles_merged", "guest_purchase", "points_expired"} <= types, types
    reversed_for = {r[2] for r in state["outbox"] if r[3] == "points_reversed"}
    assert "member:M2" in reversed_for  # the late refund, applied once its purchase came
    assert state["rejected"] and len(state["clock"]) == PARTS
    assert any(t == PROFILES and not v for t, v, _ in msgs)  # a merged profile's tombstone
    assert all(r[6] for r in state["outbox"])  # every row published and marked


class FlakyProducer(FakeProducer):
    """Dies at its ``n``-th flush: the chunks committed before stay committed."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def flush_sync(self, timeout: float = 60.0) -> None:
        self.n -= 1
        if self.n == 0:
            raise RuntimeError("worker killed")


def test_a_crash_between_chunks_of_a_tick_acknowledges_nothing_and_redelivery_is_exact(
    store: Store, whole: tuple[dict[str, Any], list[Any]]
) -> None:
    p = Pipeline(store)
    p.profiles.chunk = 2
    *before, tick, after = history()
    for batch in before:
        assert not isinstance(batch, datetime)
        p.feed(batch)
    assert isinstance(tick, datetime) and not isinstance(after, datetime)
    untouched = store_state(store)["profiles"]
    flaky = FlakyProducer(3)  # the second chunk's publication
    p.profiles.out = p.profiles.outbox.out = flaky  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="worker killed"):
        p.profiles.process(ticks(tick))
    state = store_state(store)
    assert state["clock"] == []  # `clock tick` does not see the tick applied
    advanced = [a for a, b in zip(state["profiles"], untouched, strict=True) if a != b]
    assert 0 < len(advanced) < len(untouched)  # the first chunk only

    # a restarted worker: the input is redelivered (its offsets were never acknowledged);
    # outbox reconciliation finds on the topics what the dead worker's producer sent
    r = Pipeline(store)
    r.profiles.chunk = 2
    sent = [*p.out.sent, *flaky.sent]

    def ids_on_topic(since_ms: int, topic: str) -> set[str]:
        return {orjson.loads(v)["id"] for t, v, _, _ in sent if t == topic and v}

    r.profiles.outbox._ids_on_topic = ids_on_topic  # type: ignore[method-assign]
    r.profiles.process(ticks(tick))
    r.feed(after)
    r.profiles.advance_wall_clock()  # the timer marks the last batch's rows
    # the same, but the redelivered tick wrote the first chunk's profiles a second time
    # (a tick re-snapshots every profile, as after a crash past a whole batch's commit)
    got, want = store_state(store), whole[0]
    versions = {pid: v for pid, _, v, _ in want["profiles"]}
    assert [v - versions[pid] for pid, _, v, _ in got["profiles"]] == [
        int(a in {p[0] for p in advanced}) for a in sorted(versions)
    ]
    assert unversioned(got.pop("profiles")) == unversioned(want["profiles"])
    assert got == {k: v for k, v in want.items() if k != "profiles"}
