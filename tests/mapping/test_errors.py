from __future__ import annotations

import orjson
import pytest

from app.mapping import Mapper, MappingError
from tests.mapping.conftest import cdc

TXN = {
    "txn_id": "T1",
    "store_id": "S1",
    "card_no": None,
    "total": "10.00",
    "currency": "USD",
    "occurred_at": "2026-03-01T10:15:00Z",
}
T = "pos.public.transactions"


def _err(mapper: Mapper, topic: str, value: bytes) -> MappingError:
    with pytest.raises(MappingError) as err:
        mapper.map(topic, value)
    assert err.value.topic == topic
    assert err.value.reason
    return err.value


@pytest.mark.parametrize("value", [None, b""])
def test_tombstone_is_ignored(mapper: Mapper, value: bytes | None) -> None:
    assert mapper.map(T, value) == []
    assert mapper.map("unknown.public.topic", value) == []


def test_json_null_truncate_and_message_are_ignored(mapper: Mapper) -> None:
    assert mapper.map(T, b"null") == []
    assert mapper.map(T, cdc("t")) == []
    assert mapper.map(T, cdc("m")) == []


def test_bad_json(mapper: Mapper) -> None:
    assert _err(mapper, T, b'{"op": "c", "after": {').code == "bad_json"


def test_not_a_change_event(mapper: Mapper) -> None:
    assert _err(mapper, T, b"[1, 2]").code == "bad_envelope"
    assert _err(mapper, T, b'{"hello": "world"}').code == "bad_envelope"
    assert _err(mapper, T, orjson.dumps({"op": "c", "after": None})).code == "bad_envelope"


def test_unknown_topic_and_table(mapper: Mapper) -> None:
    assert _err(mapper, "pos.public.gift_cards", cdc("c", TXN)).code == "unknown_topic"
    assert _err(mapper, "crm.public.contacts", cdc("c", TXN)).code == "unknown_topic"


def test_negative_amount(mapper: Mapper) -> None:
    e = _err(mapper, T, cdc("c", {**TXN, "total": "-5.00"}))
    assert e.code == "negative_amount"
    assert "total" in e.reason


def test_sub_cent_and_garbage_amounts(mapper: Mapper) -> None:
    assert _err(mapper, T, cdc("c", {**TXN, "total": "1.005"})).code == "bad_amount"
    assert _err(mapper, T, cdc("c", {**TXN, "total": "BNI="})).code == "bad_amount"
    # more fraction digits than the column scale, but exact: fine
    [ev] = mapper.map(T, cdc("c", {**TXN, "total": "1.500"}))
    assert ev.data["amount_cents"] == 150


def test_type_drift(mapper: Mapper) -> None:
    # a float amount: the connector is not in decimal.handling.mode=string
    assert _err(mapper, T, cdc("c", {**TXN, "total": 10.0})).code == "type_drift"
    # a timestamp as epoch micros (a timestamp without time zone, or a changed converter)
    assert (
        _err(mapper, T, cdc("c", {**TXN, "occurred_at": 1_772_360_100_000_000})).code
        == "type_drift"
    )
    line = {"txn_id": "T1", "line_no": 1, "sku": "S", "qty": "2", "unit_price": "1.00"}
    assert _err(mapper, "pos.public.transaction_lines", cdc("c", line)).code == "type_drift"


def test_missing_column_and_required_null(mapper: Mapper) -> None:
    row = {k: v for k, v in TXN.items() if k != "total"}
    e = _err(mapper, T, cdc("c", row))
    assert (e.code, "total" in e.reason) == ("missing_column", True)
    assert _err(mapper, T, cdc("c", {**TXN, "total": None})).code == "missing_column"
    assert _err(mapper, T, cdc("c", {**TXN, "occurred_at": None})).code == "missing_column"


def test_bad_currency_and_timestamp(mapper: Mapper) -> None:
    assert _err(mapper, T, cdc("c", {**TXN, "currency": "US"})).code == "bad_currency"
    assert _err(mapper, T, cdc("c", {**TXN, "occurred_at": "yesterday"})).code == "bad_timestamp"


def test_update_without_before_image(mapper: Mapper) -> None:
    order = {
        "order_id": "O1",
        "customer_id": "C1",
        "total": "1.00",
        "currency": "USD",
        "status": "paid",
        "refunded_amount": "0.00",
        "updated_at": "2026-03-01T10:15:00Z",
    }
    e = _err(mapper, "web.public.orders", cdc("u", order, None))
    assert "REPLICA IDENTITY FULL" in e.reason


def test_schemas_enabled_envelope_is_unwrapped(mapper: Mapper) -> None:
    payload = orjson.loads(cdc("c", TXN))
    [ev] = mapper.map(T, orjson.dumps({"schema": {"type": "struct"}, "payload": payload}))
    assert ev.data["amount_cents"] == 1000


def test_dlq_headers(mapper: Mapper) -> None:
    e = _err(mapper, T, b"{")
    headers = dict(e.dlq_headers())
    assert headers["dlq.code"] == b"bad_json" and headers["dlq.topic"] == T.encode()


def test_error_does_not_poison_the_mapper(mapper: Mapper) -> None:
    with pytest.raises(MappingError):
        mapper.map(T, b"{")
    assert len(mapper.map(T, cdc("c", TXN))) == 1


def test_unhashable_and_absurd_values_are_dead_lettered(mapper: Mapper) -> None:
    order = {
        "order_id": "O1",
        "customer_id": "C1",
        "total": "1.00",
        "currency": "USD",
        "status": {"v": "paid"},
        "refunded_amount": "0.00",
        "updated_at": "2026-03-01T10:15:00Z",
    }
    assert _err(mapper, "web.public.orders", cdc("r", order)).code == "type_drift"
    assert _err(mapper, T, cdc("c", {**TXN, "total": "1E+999999999"})).code == "bad_amount"
    assert _err(mapper, T, cdc("c", {**TXN, "txn_id": ["T1"]})).code == "type_drift"
