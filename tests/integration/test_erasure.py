"""GDPR erasure end to end on the real embedded stack (PostgreSQL, Tansu, Debezium, worker).

A member with an email, an enrollment and paid web orders is loaded through the sources;
once the pipeline caught up, the real ``loyalty-cdp erase email:... --yes`` command removes
them: the store rows are gone, the audit row is there (completed, no PII), ``cdp.profiles``
carries a tombstone for the profile id, ``GET /v1/members/email:...`` answers 404, ``profiles
export`` no longer has them, a clock tick does not bring the worker's cached state back, and
a later customer with the same email is a fresh guest with none of the old points.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psycopg
import pytest

from app.settings import REPO_ROOT
from app.stack.pipeline import tick, wait_caught_up
from streams.store import Store
from tests.integration.kafka_util import read_topic
from tests.integration.test_profiles_pipeline import Run, manual_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EMAIL = " Erin.Erase@Example.COM "  # normalised: erin.erase@example.com
PID = "member:M900"
WAIT_S = 180.0


def _exec(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn) as conn:
        for sql in statements:
            conn.execute(sql)
        conn.commit()


def _cli(r: Run, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_CDP_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--state-dir", str(r.state_dir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def _member(r: Run, ref: str) -> httpx.Response:
    return httpx.get(f"{r.status['api']}/v1/members/{quote(ref)}", timeout=10)


def _count(r: Run, sql: str, *params: Any) -> int:
    with psycopg.connect(r.store_dsn) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def _exported(r: Run) -> list[dict[str, Any]]:
    store = Store(r.store_dsn)
    try:
        return list(store.export())
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with manual_stack("loyalty-cdp-erase-") as r:
        web, pos = r.status["sources"]["web"], r.status["sources"]["pos"]
        _exec(
            web,
            "INSERT INTO customers VALUES"
            f" ('W900','{EMAIL}','555-0900',NULL,true,false,false,'2026-01-10T08:00:00Z')",
            "INSERT INTO loyalty_enrollments VALUES ('M900','W900','2026-01-11T08:00:00Z')",
            "INSERT INTO orders VALUES ('O900','W900',250.00,'USD','paid',0,"
            "'2026-02-01T10:00:00Z')",
            "INSERT INTO orders VALUES ('O901','W900',80.00,'USD','paid',0,"
            "'2026-02-03T10:00:00Z')",
        )
        _exec(  # someone else, who must stay
            pos,
            "INSERT INTO loyalty_cards VALUES ('C1','M100',NULL,'2026-01-05T09:00:00Z')",
            "INSERT INTO transactions VALUES ('T1','S1','C1',120.50,'USD','2026-02-01T10:00:00Z')",
        )
        wait_caught_up(r.state_dir, timeout=WAIT_S)
        yield r


def test_erase_by_email_removes_the_person_everywhere_we_own(run: Run) -> None:
    before = _member(run, "email:erin.erase@example.com")
    assert before.status_code == 200, before.text
    doc = before.json()
    assert doc["member_id"] == "M900" and doc["purchase_count"] == 2
    assert doc["points_balance"] > 0
    assert _count(run, "SELECT count(*) FROM records WHERE profile_id = %s", PID) >= 4
    assert _count(run, "SELECT count(*) FROM loyalty_outbox WHERE profile_id = %s", PID) > 0

    res = _cli(run, "erase", f"email:{EMAIL}", "--yes")
    assert res.returncode == 0, res.stderr
    summary = res.stdout.strip()
    assert summary.startswith("erased profile ") and "\n" not in summary
    assert "M900" not in summary and "erin" not in summary.lower()

    for table in ("records", "profiles", "profile_identifiers", "loyalty_outbox"):
        n = _count(run, f"SELECT count(*) FROM {table} WHERE profile_id = %s", PID)
        assert n == 0, table
    with psycopg.connect(run.store_dsn) as conn:
        audit = conn.execute(
            "SELECT status, completed_at, counts, profile_ids, identifier_type FROM erasure_audit"
        ).fetchall()
    assert len(audit) == 1
    status, completed_at, counts, refs, type_ = audit[0]
    assert status == "completed" and completed_at is not None and type_ == "email"
    assert counts["records"] >= 4 and counts["profiles"] == 1
    assert refs[0] in summary and "M900" not in str(audit)

    msgs = read_topic(
        run.broker,
        "cdp.profiles",
        until=lambda ms: any(m.key() == PID.encode() and m.value() is None for m in ms),
        timeout=60,
    )
    mine = [m for m in msgs if m.key() == PID.encode()]
    assert mine and mine[-1].value() is None, "no tombstone last for the erased profile"

    assert _member(run, "email:erin.erase@example.com").status_code == 404
    assert _member(run, "M900").status_code == 404
    exported = _exported(run)
    assert all(d["member_id"] != "M900" for d in exported)
    assert any(d["member_id"] == "M100" for d in exported), "the other member was erased too"
    res = _cli(run, "profiles", "export", "--identifier", "email:erin.erase@example.com")
    assert res.returncode == 1 and "no profile holds this email" in res.stderr


def test_the_worker_does_not_bring_the_erased_profile_back(run: Run) -> None:
    # a tick re-snapshots every cached state of its partitions: the erased one must be gone
    tick(run.state_dir, datetime(2026, 3, 1, tzinfo=UTC), timeout=WAIT_S)
    assert _count(run, "SELECT count(*) FROM profiles WHERE profile_id = %s", PID) == 0
    assert _count(run, "SELECT count(*) FROM loyalty_outbox WHERE profile_id = %s", PID) == 0


def test_the_same_email_later_is_a_fresh_profile(run: Run) -> None:
    _exec(
        run.status["sources"]["web"],
        "INSERT INTO customers VALUES"
        f" ('W901','{EMAIL}',NULL,NULL,false,false,false,'2026-03-02T08:00:00Z')",
    )
    wait_caught_up(run.state_dir, timeout=WAIT_S)
    r = _member(run, "email:erin.erase@example.com")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["member_id"] is None and doc["member_nos"] == []
    assert doc["points_balance"] == 0 and doc["purchase_count"] == 0
    assert doc["lifetime_spend_cents"] == 0
    assert doc["identifiers"] == ["customer_id:W901", "email:erin.erase@example.com"]
    with psycopg.connect(run.store_dsn) as conn:
        pids = [row[0] for row in conn.execute("SELECT profile_id FROM profiles ORDER BY 1")]
    assert PID not in pids and any(p.startswith("guest:") for p in pids)
    res = _cli(run, "profiles", "export", "--identifier", "email:erin.erase@example.com")
    assert res.returncode == 0, res.stderr
    assert orjson.loads(res.stdout) == doc
