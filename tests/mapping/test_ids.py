from __future__ import annotations

import orjson

from app.mapping import Mapper
from tests.mapping.conftest import cdc

ORDER = {
    "order_id": "O1",
    "customer_id": "C1",
    "total": "50.00",
    "currency": "USD",
    "status": "placed",
    "refunded_amount": "0.00",
    "updated_at": "2026-03-01T10:00:00Z",
}


def test_redelivery_gives_identical_bytes(mapper: Mapper) -> None:
    paid = {**ORDER, "status": "paid", "updated_at": "2026-03-01T10:01:00Z"}
    first = [e.to_json() for e in mapper.map("web.public.orders", cdc("u", paid, ORDER))]
    # the same change redelivered after a connector restart: other lsn/txId/ts_ms, same row
    doc = orjson.loads(cdc("u", paid, ORDER))
    doc["source"].update(lsn=99999999, txId=9, ts_ms=1_900_000_000_000)
    doc["ts_ms"] = 1_900_000_000_001
    again = [e.to_json() for e in mapper.map("web.public.orders", orjson.dumps(doc))]
    assert first == again and len(first) == 1


def test_timestamp_spelling_does_not_change_ids(mapper: Mapper) -> None:
    cust = {
        "customer_id": "C1",
        "email": "a@b.c",
        "phone": None,
        "member_no": None,
        "email_opt_in": True,
        "sms_consent": True,
        "admt_opt_out": False,
        "updated_at": "2026-03-01T10:00:00Z",
    }
    a = mapper.map("web.public.customers", cdc("r", cust))
    b = mapper.map(
        "web.public.customers", cdc("c", {**cust, "updated_at": "2026-03-01T10:00:00.000000+00:00"})
    )
    assert [e.id for e in a] == [e.id for e in b]


def test_ids_are_unique_across_types_versions_and_sources(mapper: Mapper) -> None:
    ids = set()
    for i in range(50):
        row = {**ORDER, "status": "paid", "refunded_amount": f"{i}.00", "order_id": f"O{i % 5}"}
        for e in mapper.map("web.public.orders", cdc("r", row)):
            ids.add((e.id, e.data["record_id"], e.type))
    assert len({i for i, _, _ in ids}) == len(ids)
    app = {
        "purchase_id": "O1",
        "user_id": "U",
        "total": "1.00",
        "currency": "USD",
        "occurred_at": "2026-03-01T10:00:00Z",
    }
    [a] = mapper.map("app.public.purchases", cdc("c", app))
    [w] = mapper.map("web.public.orders", cdc("r", {**ORDER, "status": "paid"}))
    assert a.id != w.id and a.data["purchase_id"] != w.data["purchase_id"]


def test_bench_runs_quickly() -> None:
    from app.mapping.bench import run

    result = run(n=600, rounds=1)
    assert result["change_events"] == 600
    assert result["canonical_events"] > 0 and result["change_events_per_s"] > 0
