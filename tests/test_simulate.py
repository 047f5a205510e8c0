"""The traffic simulator: determinism, coverage of every kind of traffic, real writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from app.simulate import (
    SOURCES,
    TABLES,
    SimulationError,
    Traffic,
    generate,
    simulate,
    write_ops,
)
from app.simulate_cli import app as simulate_app

pytest_plugins = ["tests.pg_support"]

START = datetime(2025, 3, 1, tzinfo=UTC)


def digest(traffic: Traffic) -> str:
    text = repr([(o.source, o.table, o.action, o.at, sorted(o.row.items())) for o in traffic.ops])
    return hashlib.sha256(text.encode()).hexdigest()


def norm_email(value: str | None) -> str | None:
    return value.strip().lower() if value else None


def digits(value: str | None) -> str | None:
    return "".join(c for c in value if c.isdigit()) if value else None


def test_same_seed_same_rows_even_across_processes() -> None:
    first = generate(30, 20, seed=5, start=START)
    assert digest(first) == digest(generate(30, 20, seed=5, start=START))
    assert digest(first) != digest(generate(30, 20, seed=6, start=START))
    code = (
        "from datetime import datetime, UTC; from app.simulate import generate; "
        "from tests.test_simulate import digest; "
        "print(digest(generate(30, 20, seed=5, start=datetime(2025, 3, 1, tzinfo=UTC))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.strip()
    assert out == digest(first)


def test_every_kind_of_traffic_appears_even_for_five_members() -> None:
    traffic = generate(5, 30, seed=1, start=START)
    for source, ops in traffic.by_source().items():
        assert ops, source
        assert [op.at for op in ops] == sorted(op.at for op in ops), "event-time order"
        assert all(op.source == source for op in ops)
        assert all(START <= op.at < datetime(2025, 3, 31, tzinfo=UTC) for op in ops)
    tags = traffic.tag_counts()
    for kind in ("enroll_pos", "enroll_web", "enroll_app", "shared_email", "shared_phone_only",
                 "duplicate_membership", "purchase_pos", "purchase_web", "purchase_app",
                 "order_cancelled", "refund_partial", "refund_full", "pos_return", "redemption",
                 "overdraft", "consent_web", "consent_app", "app_event", "guest_purchase"):
        assert tags[kind] > 0, kind

    rows = traffic.final_rows()
    customers = rows[("web", "customers")].values()
    users = rows[("app", "users")].values()
    # the same person on two channels, emails typed differently but equal once normalized
    web_emails = {norm_email(c["email"]) for c in customers}
    assert web_emails & {norm_email(u["email"]) for u in users}
    # sharing only a phone: same digits, different normalized emails
    by_phone: dict[str | None, set[str | None]] = {}
    for rec in (*customers, *users):
        if rec["phone"]:
            by_phone.setdefault(digits(rec["phone"]), set()).add(norm_email(rec["email"]))
    assert any(len(emails) > 1 for emails in by_phone.values())
    # web orders: partial refunds, full refunds, cancellations, guest purchases
    orders = list(rows[("web", "orders")].values())
    versions = [op.row for op in traffic.ops if op.table == "orders"]
    assert any(o["status"] == "partially_refunded" and 0 < o["refunded_amount"] < o["total"]
               for o in versions)
    assert any(o["status"] == "refunded" and o["refunded_amount"] == o["total"] for o in orders)
    assert any(o["status"] == "cancelled" for o in orders)
    guest_ids = {c["customer_id"] for c in customers if c["member_no"] is None}
    assert any(o["customer_id"] in guest_ids and o["status"] == "paid" for o in orders)
    order_history = [op.row["status"] for op in traffic.ops if op.table == "orders"
                     and op.row["order_id"] == orders[0]["order_id"]]
    assert order_history[0] == "placed"
    # anonymous POS purchases and returns within the transaction total
    txns = rows[("pos", "transactions")]
    assert any(t["card_no"] is None for t in txns.values())
    for ret in rows[("pos", "returns")].values():
        assert 0 < ret["amount"] <= txns[(ret["txn_id"],)]["total"]
    # totals are the sum of their lines, in currency units with 2 decimals
    for (txn_id,), txn in txns.items():
        lines = [ln for (t, _), ln in rows[("pos", "transaction_lines")].items() if t == txn_id]
        assert txn["total"] == sum(ln["qty"] * ln["unit_price"] for ln in lines)
        assert txn["total"].as_tuple().exponent == -2
    # an overdraft redeems more than the redeemer could have earned
    overdrafts = [op for op in traffic.ops if "overdraft" in op.tags]
    assert all(op.row["points"] > 0 for op in overdrafts)


def _table_rows(conn: psycopg.Connection[Any], source: str, table: str, seed: int
                ) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    cols, key = TABLES[(source, table)]
    cur = conn.execute(
        f"SELECT {', '.join(cols)} FROM {table} WHERE {key[0]} LIKE %s",
        (f"_{seed}-%",),
    )
    out = {}
    for values in cur:
        row = dict(zip(cols, values, strict=True))
        out[tuple(row[k] for k in key)] = row
    return out


def test_simulate_writes_exactly_the_generated_rows(source_dsns: dict[str, str]) -> None:
    seed = 3
    progress: list[tuple[int, int]] = []
    summary = simulate(source_dsns, 20, 30, None, seed, START,
                       lambda done, total: progress.append((done, total)))
    expected = generate(20, 30, seed, START)
    assert summary.rows == len(expected.ops)
    assert progress[-1] == (summary.rows, summary.rows)
    assert summary.tags["overdraft"] > 0
    final = expected.final_rows()
    for source in SOURCES:
        with psycopg.connect(source_dsns[source]) as conn:
            for (src, table), want in final.items():
                if src == source:
                    got = _table_rows(conn, source, table, seed)
                    assert got == want, f"{source}.{table}"
    with psycopg.connect(source_dsns["web"]) as conn:
        total = conn.execute("SELECT sum(total) FROM orders WHERE order_id LIKE 'O3-%'").fetchone()
    assert total is not None and isinstance(total[0], Decimal)

    with pytest.raises(SimulationError, match="already holds rows"):
        simulate(source_dsns, 20, 30, None, seed, START)


def test_one_writer_per_source_with_rate_limit(source_dsns: dict[str, str]) -> None:
    traffic = generate(2, 5, seed=4, start=START)
    ops = traffic.by_source()["app"][:40]
    began = time.monotonic()
    assert write_ops(source_dsns["app"], ops, rate=200.0) == len(ops)
    assert time.monotonic() - began >= len(ops) / 200.0 * 0.9


def test_cli_writes_and_reports_json(source_dsns: dict[str, str]) -> None:
    result = CliRunner().invoke(simulate_app, [
        "--members", "3", "--days", "7", "--seed", "8", "--start", "2025-03-01",
        "--dsn-pos", source_dsns["pos"], "--dsn-web", source_dsns["web"],
        "--dsn-app", source_dsns["app"], "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == len(generate(3, 7, 8, START).ops)
    assert summary["start"] == "2025-03-01T00:00:00+00:00"
