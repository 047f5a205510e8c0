"""ParsedRecords: the identity stage's parsed records handed to the profile stage."""

from __future__ import annotations

from app.domain.records import record_from_data
from streams.parsed_records import ParsedRecords


def _purchase(i: int):  # type: ignore[no-untyped-def]
    return record_from_data(
        "cdp.purchase.completed",
        {
            "record_id": f"pos.transactions:T{i}@purchase.completed",
            "source": "pos",
            "table": "transactions",
            "pk": f"T{i}",
            "occurred_at": "2026-01-01T00:00:00Z",
            "purchase_id": f"T{i}",
            "amount_cents": 100,
            "currency": "USD",
            "identifiers": [{"type": "card_no", "value": "C1"}],
        },
    )


def test_take_returns_the_record_once() -> None:
    cache = ParsedRecords()
    r = _purchase(1)
    cache.put_many([r])
    assert cache.take(r.record_id) is r
    assert cache.take(r.record_id) is None
    assert cache.hits == 1 and len(cache) == 0


def test_bounded_oldest_first() -> None:
    cache = ParsedRecords(limit=3)
    records = [_purchase(i) for i in range(5)]
    cache.put_many(records)
    assert len(cache) == 3
    assert cache.take(records[0].record_id) is None  # evicted
    assert cache.take(records[1].record_id) is None
    assert cache.take(records[4].record_id) is records[4]
