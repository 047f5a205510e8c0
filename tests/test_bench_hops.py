"""``bench pipeline``'s latency per hop (app/bench/hops.py) from message timestamps."""

from __future__ import annotations

from app.bench.hops import HOPS, hop_latencies
from app.bench.pipeline import _txn


def test_each_hop_is_timed_between_its_two_ends() -> None:
    commits = {"t1": 10.0, "t2": 10.0, "t3": 10.0}
    change = {"t1": 10.1, "t2": 10.2}  # t3 never reached the change topic
    canonical = {"t1": 10.15, "t2": 10.3}
    # the profile's notifications: one before t2's canonical event (an earlier record's),
    # then the one that carried it
    notes = {"P": [10.16, 10.5], "Q": [9.0]}
    earned = {"t1": (10.4, "P"), "t2": (10.9, "P")}
    hops = hop_latencies(commits, change, canonical, notes, earned)
    assert list(hops) == list(HOPS)
    assert hops["commit_to_change_topic"] == {"p50": 100.0, "p99": 200.0, "n": 2}
    assert hops["change_topic_to_canonical"]["n"] == 2
    assert round(hops["canonical_to_resolved"]["p50"]) == 10  # t1: 10.15 -> 10.16
    assert round(hops["canonical_to_resolved"]["p99"]) == 200  # t2: 10.3 -> 10.5
    assert round(hops["resolved_to_loyalty_event"]["p99"]) == 400  # t2: 10.5 -> 10.9


def test_rows_missing_an_end_are_left_out() -> None:
    hops = hop_latencies({"t": 1.0}, {}, {}, {}, {"t": (2.0, "P")})
    assert hops == {}


def test_txn_id_of_a_record_id() -> None:
    assert _txn("pos.transactions:LTab-0000001@purchase.completed") == "LTab-0000001"


def test_stage_batches_between_two_healthz_readings() -> None:
    from app.bench.pipeline import stage_batches

    before = {
        "identity": {"in": 100, "batches": 10, "busy_ms": 50},
        "profiles": {"notes": 80, "batches": 4, "busy_ms": 40},
    }
    after = {
        "identity": {"in": 400, "batches": 30, "busy_ms": 250},
        "profiles": {"notes": 80, "batches": 4, "busy_ms": 40},  # no batch in between
    }
    assert stage_batches(before, after) == {
        "identity": {"batches": 20, "messages_per_batch": 15.0, "busy_ms_per_batch": 10.0}
    }
    assert stage_batches({}, {}) == {}
    gc_before, gc_after = {"worker_gc": {"gc_ms": 5, "gc_full": 1}}, {
        "worker_gc": {"gc_ms": 45, "gc_full": 2}
    }
    assert stage_batches(gc_before, gc_after) == {"worker_gc": {"gc_ms": 40, "gc_full": 1}}
