"""Guest purchase moments are durable: the profile stage writes them into its outbox in the
transaction of the profile, a restart publishes what a crash left unpublished, and the
decisioning agent decides each moment once however often it is delivered.

Real PostgreSQL store, the real identity and profile stages and decisioning agent; the
producers are fakes whose ``sent`` lists stand for the topics (no broker, no Faust).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import orjson
import pytest
from sqlalchemy import text

from app.decisioning import load_catalog
from app.domain.records import Record
from streams.decisioning import DecisionAgent, offers_file
from streams.outbox import GUEST_PURCHASE
from streams.store import Store
from streams.topics import GUEST_PURCHASES, RESOLVED, partition_of
from tests.domain.builders import at, buy, consent, enroll, link
from tests.stage_harness import (
    PARTS,
    PROGRAM,
    FakeProducer,
    Msg,
    Pipeline,
    clean_store,
    cloudevent,
    count,
)

pytest_plugins = ["tests.pg_support"]

CATALOG = load_catalog(offers_file())
GUEST = [
    link("W1", at(0), customer_id="W1", email="gina@example.com"),
    consent("W1", at(0), email_opt_in=True),
]
PURCHASE = buy("T1", 4_250, at(1), customer_id="W1")
MEMBER = [enroll("M1", at(0), customer_id="W2"), buy("T5", 1_000, at(1), member_no="M1")]


class CrashingProducer(FakeProducer):
    """The worker dies after the commit: nothing it produces is ever acknowledged."""

    def flush_sync(self, timeout: float = 60.0) -> None:
        raise RuntimeError("worker killed")


@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    with clean_store(source_dsns["cdp"]) as s:
        yield s


def restarted(store: Store, before: Pipeline | None = None) -> Pipeline:
    """A fresh worker: empty caches; outbox reconciliation reads the fake topics (what this
    worker sent, and what the dead worker ``before`` had sent: the topics outlive it)."""
    p = Pipeline(store)

    def ids_on_topic(since_ms: int, topic: str) -> set[str]:
        sent = [*p.out.sent, *(before.out.sent if before is not None else [])]
        return {orjson.loads(v)["id"] for t, v, _, _ in sent if t == topic and v}

    p.profiles.outbox._ids_on_topic = ids_on_topic  # type: ignore[method-assign]
    return p


def resolve(p: Pipeline, records: Sequence[Record]) -> list[tuple[int, bytes]]:
    """Run the identity stage; return the profile stage's input (not yet processed)."""
    p.identity.process([Msg(cloudevent(r)) for r in records])
    notes = [(part or 0, v) for t, v, _, part in p.out.sent if t == RESOLVED and v]
    p.out.sent = [m for m in p.out.sent if m[0] != RESOLVED]
    return notes


def guest_rows(store: Store) -> list[tuple[str, int, str, str, bytes, bool]]:
    with store.tx() as conn:
        rows = conn.execute(
            text(
                "SELECT event_id, partition, profile_id, key, payload,"
                " seq NOT IN (SELECT seq FROM loyalty_outbox_pending)"
                " FROM loyalty_outbox WHERE type = :t ORDER BY seq"
            ),
            {"t": GUEST_PURCHASE},
        ).all()
    return [(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]


def on_topic(p: Pipeline) -> list[tuple[bytes, bytes]]:
    return [(k or b"", v) for t, v, k, _ in p.out.sent if t == GUEST_PURCHASES and v]


def guest_profile(store: Store) -> str:
    with store.tx() as conn:
        return str(
            conn.execute(
                text("SELECT profile_id FROM records WHERE record_id = :r"),
                {"r": PURCHASE.record_id},
            ).scalar_one()
        )


def test_a_committed_unpublished_moment_is_published_on_restart_and_decided_once(
    store: Store,
) -> None:
    """The worker dies after the profile stage's commit, before anything is acknowledged."""
    p = Pipeline(store)
    p.feed(GUEST)
    notes = resolve(p, [PURCHASE, *MEMBER])
    crash = CrashingProducer()
    p.profiles.out = p.profiles.outbox.out = crash  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="worker killed"):
        p.profiles.process(notes)  # committed; the publish never acknowledged

    pid = guest_profile(store)
    payload = cloudevent(PURCHASE)
    # in the outbox with the profile, unpublished: the member's purchase is no guest moment
    assert guest_rows(store) == [
        (orjson.loads(payload)["id"], partition_of(pid, PARTS), pid, pid, payload, False)
    ]
    assert count(store, "SELECT count(*) FROM profiles WHERE profile_id = :p", p=pid) == 1

    # the restarted worker gets the uncommitted notifications again
    q = restarted(store)
    q.profiles.process(notes)
    assert on_topic(q) == [(pid.encode(), payload)]  # re-published once (the refold: deduped)
    assert q.profiles.counts["guest_purchases"] == 0
    assert [r[5] for r in guest_rows(store)] == [True]

    # the decisioning agent: the moment gets the enrollment offer, once
    values = [v for _, v in on_topic(q)]
    first = FakeProducer()
    agent = DecisionAgent(PROGRAM, CATALOG, store, first, "unused:9092",  # type: ignore[arg-type]
                          clock="manual", resolve_timeout=0.5)
    agent.process_canonical(values)
    offers = [orjson.loads(v) for t, v, _, _ in first.sent if t.startswith("offers.") and v]
    assert offers and {o["subject"] for o in offers} == {pid}
    assert all(o["data"]["offers"][0]["kind"] == "enrollment" for o in offers)
    assert {o["data"]["moment"]["id"] for o in offers} == {PURCHASE.record_id}
    decided = "SELECT count(*) FROM decisions WHERE moment_id = :m"
    assert count(store, decided, m=PURCHASE.record_id) == 1

    # a second delivery (another restart before the agent's offsets were committed)
    again = FakeProducer()
    agent = DecisionAgent(PROGRAM, CATALOG, store, again, "unused:9092",  # type: ignore[arg-type]
                          clock="manual", resolve_timeout=0.5)
    agent.process_canonical(values + values)
    assert again.sent == [] and agent.counts.duplicates == 2
    assert count(store, decided, m=PURCHASE.record_id) == 1
    assert count(store, "SELECT count(*) FROM offer_outbox") == len(offers)


def test_a_crash_before_the_profile_commit_loses_no_moment_of_a_known_guest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restarted stage refolds the (already stored) profile from the store: the moment
    of the purchase whose batch died is derived there, the earlier one is not repeated."""
    p = Pipeline(store)
    p.feed([*GUEST, PURCHASE])
    later = buy("T2", 1_500, at(2), customer_id="W1")
    notes = resolve(p, [later])

    def killed(*_: object) -> None:
        raise RuntimeError("worker killed")

    monkeypatch.setattr(p.profiles.outbox, "add", killed)
    with pytest.raises(RuntimeError, match="worker killed"):
        p.profiles.process(notes)  # rolled back
    assert [r[4] for r in guest_rows(store)] == [cloudevent(PURCHASE)]

    q = restarted(store, before=p)
    q.profiles.process(notes)
    pid = guest_profile(store)
    assert on_topic(p) == [(pid.encode(), cloudevent(PURCHASE))]
    assert on_topic(q) == [(pid.encode(), cloudevent(later))]
    q.profiles.advance_wall_clock()  # the timer marks the last batch's rows
    published = [(r[4], r[5]) for r in guest_rows(store)]
    assert published == [(cloudevent(PURCHASE), True), (cloudevent(later), True)]
