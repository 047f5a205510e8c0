"""Issue 3 end to end on the real embedded stack: PostgreSQL, Tansu, the Debezium connector
(embedded engine) and the Faust worker. Rows written to every table of every source become
the exact canonical events; redeliveries create no new ids; a malformed record goes to the
DLQ while the pipeline keeps flowing; ``down``/``up`` loses and duplicates nothing."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer

from app.stack import embedded, postgres
from app.stack.state import StackPaths
from tests.integration.kafka_util import cloudevents, read_topic

pytestmark = pytest.mark.integration


def _id(source: str, table: str, pk: str, version: str, type_: str) -> str:
    """Independent restatement of the documented id rule (docs/canonical-events.md)."""
    return hashlib.sha256(f"{source}|{table}|{pk}|{version}|{type_}".encode()).hexdigest()[:32]


def _digest(*values: Any) -> str:
    """Version of a row-content digest rule (``version: {digest: [...]}`` in the mapping)."""
    return hashlib.sha256(orjson.dumps(list(values))).hexdigest()[:16]


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    # Not under pytest's basetemp: a concurrent pytest session resets its permissions, which
    # would lock the PostgreSQL server (an unprivileged user) out of its data directory.
    state_dir = Path(tempfile.mkdtemp(prefix="loyalty-cdp-cdc-"))
    mp = pytest.MonkeyPatch()
    # Long offset flush interval: a SIGKILLed connector must redeliver what it already sent.
    mp.setenv("LOYALTY_CDP_OFFSET_FLUSH_INTERVAL_MS", "600000")
    try:
        st = embedded.up(state_dir)
        st["state_dir_path"] = state_dir
        yield st
    finally:
        try:
            embedded.down(state_dir, drain_timeout=10)
        finally:
            mp.undo()
            shutil.rmtree(state_dir, ignore_errors=True)


def _exec(dsn: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=False) as conn:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()


def write_every_table(st: dict[str, Any]) -> None:
    pos, web, app = st["sources"]["pos"], st["sources"]["web"], st["sources"]["app"]
    _exec(
        pos,
        (
            "INSERT INTO loyalty_cards VALUES"
            " ('C1','M100','+1 (555) 010-0100','2026-01-05T09:00:00Z')",
            (),
        ),
        (
            "INSERT INTO transactions VALUES ('T1','S1','C1',120.50,'USD','2026-02-01T10:00:00Z')",
            (),
        ),
        ("INSERT INTO transactions VALUES ('T2','S1',NULL,9.99,'EUR','2026-02-01T11:00:00Z')", ()),
        ("INSERT INTO transaction_lines VALUES ('T1',1,'SKU-1',2,10.25)", ()),
        ("INSERT INTO returns VALUES ('R1','T1',20.00,'2026-02-03T12:00:00Z')", ()),
    )
    _exec(
        web,
        (
            "INSERT INTO customers VALUES"
            " ('W1',' Ann@Example.COM ','555-0101',NULL,true,false,false,"
            "'2026-01-10T08:00:00Z')",
            (),
        ),
        ("INSERT INTO loyalty_enrollments VALUES ('M200','W1','2026-01-11T08:00:00Z')", ()),
        ("INSERT INTO orders VALUES ('O1','W1',80.00,'USD','placed',0,'2026-02-10T08:00:00Z')", ()),
        ("INSERT INTO order_items VALUES ('O1',1,'SKU-2',1,80.00)", ()),
    )
    _exec(
        web,
        (
            "UPDATE orders SET status='paid', updated_at='2026-02-10T08:05:00Z'"
            " WHERE order_id='O1'",
            (),
        ),
    )
    _exec(
        web,
        (
            "UPDATE orders SET status='partially_refunded', refunded_amount=30.00,"
            " updated_at='2026-02-12T09:00:00Z' WHERE order_id='O1'",
            (),
        ),
    )
    _exec(
        web,
        (
            "UPDATE customers SET email_opt_in=false, updated_at='2026-02-13T09:00:00Z'"
            " WHERE customer_id='W1'",
            (),
        ),
    )
    _exec(
        app,
        (
            "INSERT INTO users VALUES ('U1','ann@example.com',NULL,NULL,'tok-secret',true,"
            "'2026-01-20T07:00:00Z')",
            (),
        ),
        ("INSERT INTO purchases VALUES ('P1','U1',15.00,'USD','2026-02-15T07:00:00Z')", ()),
        ("INSERT INTO redemptions VALUES ('D1','U1',100,'RWD-5','2026-02-16T07:00:00Z')", ()),
        ("INSERT INTO app_events VALUES ('E1','U1','view','SKU-1','2026-02-16T07:30:00Z')", ()),
    )
    _exec(
        app,
        (
            "UPDATE users SET member_no='M300', updated_at='2026-01-21T07:00:00Z'"
            " WHERE user_id='U1'",
            (),
        ),
    )


# (type, subject, time, data subset, id version)
EXPECTED: list[tuple[str, str, str, dict[str, Any], str]] = [
    (
        "cdp.member.enrolled",
        "pos.loyalty_cards:C1",
        "2026-01-05T09:00:00.000000Z",
        {
            "member_no": "M100",
            "identifiers": [
                {"type": "card_no", "value": "C1"},
                {"type": "member_no", "value": "M100"},
                {"type": "phone", "value": "15550100100"},
            ],
        },
        "",
    ),
    (
        "cdp.purchase.completed",
        "pos.transactions:T1",
        "2026-02-01T10:00:00.000000Z",
        {
            "purchase_id": "pos:T1",
            "amount_cents": 12050,
            "currency": "USD",
            "identifiers": [{"type": "card_no", "value": "C1"}],
        },
        "",
    ),
    (
        "cdp.purchase.completed",
        "pos.transactions:T2",
        "2026-02-01T11:00:00.000000Z",
        {"purchase_id": "pos:T2", "amount_cents": 999, "currency": "EUR", "identifiers": []},
        "",
    ),
    (
        "cdp.purchase.line",
        "pos.transaction_lines:T1/1",
        None,
        {"purchase_id": "pos:T1", "line_no": 1, "sku": "SKU-1", "qty": 2, "unit_price_cents": 1025},
        "",
    ),
    (
        "cdp.purchase.refunded",
        "pos.returns:R1",
        "2026-02-03T12:00:00.000000Z",
        {"refund_id": "pos:R1", "purchase_id": "pos:T1", "amount_cents": 2000},
        "",
    ),
    (
        "cdp.identity.linked",
        "web.customers:W1",
        "2026-01-10T08:00:00.000000Z",
        {
            "identifiers": [
                {"type": "customer_id", "value": "W1"},
                {"type": "email", "value": "ann@example.com"},
                {"type": "phone", "value": "5550101"},
            ]
        },
        _digest("2026-01-10T08:00:00.000000Z", " Ann@Example.COM ", "555-0101", None),
    ),
    (
        "cdp.consent.changed",
        "web.customers:W1",
        "2026-01-10T08:00:00.000000Z",
        {"consent": {"email_opt_in": True, "sms_consent": False, "admt_opt_out": False}},
        _digest("2026-01-10T08:00:00.000000Z", True, False, False),
    ),
    (
        "cdp.consent.changed",
        "web.customers:W1",
        "2026-02-13T09:00:00.000000Z",
        {"consent": {"email_opt_in": False, "sms_consent": False, "admt_opt_out": False}},
        _digest("2026-02-13T09:00:00.000000Z", False, False, False),
    ),
    (
        "cdp.member.enrolled",
        "web.loyalty_enrollments:M200",
        "2026-01-11T08:00:00.000000Z",
        {"member_no": "M200"},
        "",
    ),
    (
        "cdp.purchase.completed",
        "web.orders:O1",
        "2026-02-10T08:05:00.000000Z",
        {"purchase_id": "web:O1", "amount_cents": 8000, "currency": "USD"},
        "paid",
    ),
    (
        "cdp.purchase.refunded",
        "web.orders:O1",
        "2026-02-12T09:00:00.000000Z",
        {"refund_id": "web:O1#3000", "purchase_id": "web:O1", "amount_cents": 3000},
        "3000",
    ),
    (
        "cdp.purchase.line",
        "web.order_items:O1/1",
        None,
        {"purchase_id": "web:O1", "sku": "SKU-2", "qty": 1, "unit_price_cents": 8000},
        "",
    ),
    (
        "cdp.identity.linked",
        "app.users:U1",
        "2026-01-20T07:00:00.000000Z",
        {
            "identifiers": [
                {"type": "user_id", "value": "U1"},
                {"type": "email", "value": "ann@example.com"},
            ]
        },
        _digest("2026-01-20T07:00:00.000000Z", "ann@example.com", None, None),
    ),
    (
        "cdp.consent.changed",
        "app.users:U1",
        "2026-01-20T07:00:00.000000Z",
        {"consent": {"push_opt_in": True, "push_token": True}},
        _digest("2026-01-20T07:00:00.000000Z", True, "tok-secret"),
    ),
    (
        "cdp.identity.linked",
        "app.users:U1",
        "2026-01-21T07:00:00.000000Z",
        {
            "identifiers": [
                {"type": "user_id", "value": "U1"},
                {"type": "email", "value": "ann@example.com"},
                {"type": "member_no", "value": "M300"},
            ]
        },
        _digest("2026-01-21T07:00:00.000000Z", "ann@example.com", None, "M300"),
    ),
    (
        "cdp.member.enrolled",
        "app.users:U1",
        "2026-01-21T07:00:00.000000Z",
        {"member_no": "M300"},
        "M300",
    ),
    (
        "cdp.purchase.completed",
        "app.purchases:P1",
        "2026-02-15T07:00:00.000000Z",
        {"purchase_id": "app:P1", "amount_cents": 1500},
        "",
    ),
    (
        "cdp.points.redeemed",
        "app.redemptions:D1",
        "2026-02-16T07:00:00.000000Z",
        {"redemption_id": "app:D1", "points": 100, "reward_code": "RWD-5"},
        "",
    ),
    (
        "cdp.engagement.recorded",
        "app.app_events:E1",
        "2026-02-16T07:30:00.000000Z",
        {"kind": "view", "sku": "SKU-1"},
        "",
    ),
]


def _expected_id(type_: str, subject: str, version: str) -> str:
    source_table, pk = subject.split(":", 1)
    source, table = source_table.split(".", 1)
    return _id(source, table, pk, version, type_)


EXPECTED_IDS = {_expected_id(t, s, v) for t, s, _, _, v in EXPECTED}


def _events(st: dict[str, Any], want: set[str], timeout: float = 90) -> list[dict[str, Any]]:
    msgs = read_topic(
        st["broker"],
        "cdp.events",
        until=lambda ms: want <= {orjson.loads(m.value())["id"] for m in ms},
        timeout=timeout,
    )
    return cloudevents(msgs)


def _match(events: list[dict[str, Any]], type_: str, subject: str, version: str) -> dict[str, Any]:
    want = _expected_id(type_, subject, version)
    found = [e for e in events if e["id"] == want]
    assert found, f"no {type_} for {subject} (version {version!r}); got " + repr(
        sorted((e["type"], e["subject"]) for e in events)
    )
    return found[0]


def test_every_table_of_every_source_becomes_exact_canonical_events(stack: dict[str, Any]) -> None:
    write_every_table(stack)
    events = _events(stack, EXPECTED_IDS)
    assert {e["id"] for e in events} == EXPECTED_IDS, "unexpected extra or missing events"
    assert len(events) == len(EXPECTED), "an event was published twice"
    for type_, subject, time, data, version in EXPECTED:
        ev = _match(events, type_, subject, version)
        assert ev["specversion"] == "1.0" and ev["datacontenttype"] == "application/json"
        assert ev["source"] == "loyalty-cdp/" + subject.split(".")[0]
        if time is not None:
            assert ev["time"] == time and ev["data"]["occurred_at"] == time
        for k, v in data.items():
            got = ev["data"][k]
            if k == "identifiers":
                assert sorted(got, key=orjson.dumps) == sorted(v, key=orjson.dumps), subject
            else:
                assert got == v, (subject, k)
    # no PII in keys or anywhere a token could leak
    raw = b"".join(orjson.dumps(e) for e in events)
    assert b"tok-secret" not in raw


def test_connector_restart_redelivers_without_new_ids(stack: dict[str, Any]) -> None:
    paths = StackPaths(Path(stack["state_dir_path"]))
    before = read_topic(stack["broker"], "cdp.events", until=lambda ms: len(ms) >= len(EXPECTED))
    cdc = paths.process("cdc")
    cdc.kill()  # SIGKILL: offsets (flushed only every 10 min here) were never committed
    assert not _wait(lambda: cdc.is_running() is False, 10) or not cdc.is_running()
    embedded.up(Path(stack["state_dir_path"]))  # restarts just the connectors
    after = _events(stack, EXPECTED_IDS)
    # wait for the redelivery to show up: more messages than before, the same ids
    msgs = read_topic(
        stack["broker"], "cdp.events", until=lambda ms: len(ms) >= 2 * len(EXPECTED), timeout=60
    )
    ids = {orjson.loads(m.value())["id"] for m in msgs}
    assert len(msgs) > len(before), "the connector restart redelivered nothing"
    assert ids == EXPECTED_IDS == {e["id"] for e in after}


def _wait(cond: Any, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_malformed_records_go_to_the_dlq_and_the_pipeline_flows(stack: dict[str, Any]) -> None:
    p = Producer({"bootstrap.servers": stack["broker"]})
    p.produce("pos.public.transactions", key=b'{"txn_id":"BAD"}', value=b"{not json")
    bad_ingest = {
        "specversion": "1.0",
        "id": "x",
        "source": "crm",
        "type": "cdp.purchase.completed",
        "subject": "crm.sales:1",
        "time": "2026-02-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {"amount_cents": -1},
    }
    p.produce("cdp.ingest", key=b"crm.sales:1", value=orjson.dumps(bad_ingest))
    assert p.flush(10) == 0
    _exec(
        stack["sources"]["pos"],
        ("INSERT INTO transactions VALUES ('T9','S1','C1',1.00,'USD','2026-02-20T10:00:00Z')", ()),
    )
    dlq = read_topic(stack["broker"], "cdp.dlq", until=lambda ms: len(ms) >= 2)
    by_topic = {dict(m.headers())["dlq.topic"].decode(): m for m in dlq}
    assert by_topic["pos.public.transactions"].value() == b"{not json"
    assert by_topic["pos.public.transactions"].key() == b'{"txn_id":"BAD"}'
    assert dict(by_topic["pos.public.transactions"].headers())["dlq.code"] == b"bad_json"
    assert dict(by_topic["cdp.ingest"].headers())["dlq.reason"]
    t9 = _expected_id("cdp.purchase.completed", "pos.transactions:T9", "")
    assert t9 in {e["id"] for e in _events(stack, EXPECTED_IDS | {t9})}


def test_down_then_up_loses_nothing_and_duplicates_nothing(stack: dict[str, Any]) -> None:
    state_dir = Path(stack["state_dir_path"])
    embedded.down(state_dir)
    st = embedded.status(state_dir)
    assert set(st["components"].values()) == {"down"}
    # While the stack is down, the source keeps changing (only PostgreSQL runs).
    paths = StackPaths(state_dir)
    postgres.start(paths.postgres_dir, paths.load().pg_port)  # type: ignore[union-attr]
    _exec(
        stack["sources"]["pos"],
        (
            "INSERT INTO transactions VALUES ('T10','S1','C1',42.00,'USD','2026-03-01T10:00:00Z')",
            (),
        ),
    )
    _exec(
        stack["sources"]["web"],
        (
            "UPDATE orders SET status='refunded', refunded_amount=80.00,"
            " updated_at='2026-03-02T10:00:00Z' WHERE order_id='O1'",
            (),
        ),
    )
    st = embedded.up(state_dir)
    assert set(st["components"].values()) == {"up"}
    want = {
        _expected_id("cdp.purchase.completed", "pos.transactions:T10", ""),
        _expected_id("cdp.purchase.refunded", "web.orders:O1", "8000"),
    }
    events = _events(st, want, timeout=90)
    assert {e["id"] for e in events} == want, "old events were re-sent or new ones lost"
    assert len(events) == 2
    refund = next(e for e in events if e["type"] == "cdp.purchase.refunded")
    assert refund["data"]["amount_cents"] == 5000  # the increment 30.00 -> 80.00
