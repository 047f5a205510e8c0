"""GDPR erasure (``streams/erasure.py``) on a real PostgreSQL, without a broker.

The identity and profile stages run for real over the store (fed with hand-made
``cdp.events`` messages, their producer faked), so the rows erased are the rows the pipeline
writes: the erasure removes exactly one person and audits it without PII, the identity
stage forgets the erased identifiers (a new record with the same email starts a fresh guest),
and the refold notification retires the profile in the profile stage with a tombstone.
The real-stack version (Kafka tombstone, API 404, the CLI) is
``tests/integration/test_erasure.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from streams.erasure import (
    ErasureError,
    UnknownIdentifier,
    _contents,
    _possible_ids,
    access_request,
    erase,
    profile_ref,
)
from streams.identity import encode_note
from streams.store import Store
from streams.topics import PROFILES, RESOLVED
from tests.domain.builders import at, buy, consent, enroll, link
from tests.stage_harness import PARTS, PROGRAM, Pipeline, clean_store, cloudevent, count
from tests.test_cli_errors import closed_port, one_line_error, run_cli

__all__ = ["closed_port"]  # a fixture, used by name

pytest_plugins = ["tests.pg_support"]

ANN = [
    link("W1", at(0), customer_id="W1", email="ann@example.com"),
    consent("W1", at(0), email_opt_in=True),
    enroll("M1", at(1), customer_id="W1"),
    buy("T1", 12_000, at(2), member_no="M1"),
    buy("T2", 8_000, at(3), customer_id="W1"),
]
BOB = [
    link("W2", at(0), customer_id="W2", email="bob@example.com"),
    enroll("M2", at(1), customer_id="W2"),
    buy("T3", 5_000, at(2), member_no="M2"),
]

@pytest.fixture()
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    with clean_store(source_dsns["cdp"]) as s:
        yield s


# -- pure helpers ------------------------------------------------------------------------


def test_profile_ref_is_opaque_and_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = profile_ref("member:M100")
    assert ref == profile_ref("member:M100") and len(ref) == 32
    assert "M100" not in ref and ref != profile_ref("member:M101")
    monkeypatch.setenv("LOYALTY_CDP_IDENTIFIER_PEPPER", "secret")
    assert profile_ref("member:M100") != ref  # keyed like the identifier index


def test_contents_reads_member_numbers_and_purchases() -> None:
    rows = [(r.record_id, cloudevent(r)) for r in ANN]
    record_ids, member_nos, purchases = _contents(rows)
    assert record_ids == [r.record_id for r in ANN]
    assert member_nos == {"M1"}
    assert purchases == {"pos:T1", "pos:T2"}


def test_possible_ids_cover_every_id_the_cluster_had() -> None:
    from app.domain.identity import IdentityGraph

    g = IdentityGraph(PROGRAM)
    seen = {g.add(r).cluster_id for r in ANN}  # guest first, then renamed to member:M1
    assert len(seen) > 1
    assert seen <= _possible_ids("member:M1", [r.record_id for r in ANN], {"M1"})


# -- on the store ------------------------------------------------------------------------


def test_erase_removes_one_person_and_audits_without_pii(store: Store) -> None:
    p = Pipeline(store)
    p.feed(ANN + BOB)
    assert access_request(store, "email", "ann@example.com")["member_id"] == "M1"
    ann_outbox = count(store, "SELECT count(*) FROM loyalty_outbox WHERE profile_id = 'member:M1'")
    assert ann_outbox > 0
    pending_of_ann = (
        "SELECT count(*) FROM loyalty_outbox_pending WHERE seq IN"
        " (SELECT seq FROM loyalty_outbox WHERE profile_id = 'member:M1')"
    )
    assert count(store, pending_of_ann) > 0  # published, marked with the next batch
    orphans = (
        "SELECT count(*) FROM loyalty_outbox_pending p"
        " WHERE NOT EXISTS (SELECT 1 FROM loyalty_outbox o WHERE o.seq = p.seq)"
    )
    pending_of_bob = pending_of_ann.replace("member:M1", "member:M2")
    bobs = count(store, pending_of_bob)
    assert bobs > 0

    done = erase(store, "email", "ann@example.com", PARTS, "tester")
    assert count(store, orphans) == 0  # her pending marks went with her outbox rows
    assert count(store, pending_of_bob) == bobs  # and nobody else's

    assert done.profile_ids == ("member:M1",)
    assert done.counts["records"] == len(ANN)
    assert done.counts["profiles"] == 1 and done.counts["loyalty_outbox"] == ann_outbox
    assert done.counts["profile_identifiers"] >= 3  # email, customer_id, member_no
    assert "M1" not in done.summary() and "ann" not in done.summary()
    for table in ("records", "profiles", "profile_identifiers", "loyalty_outbox"):
        assert count(store, f"SELECT count(*) FROM {table} WHERE profile_id = 'member:M1'") == 0
    # Bob is untouched
    assert access_request(store, "member_no", "M2")["purchase_count"] == 1
    assert count(store, "SELECT count(*) FROM records WHERE profile_id = 'member:M2'") == len(BOB)
    with pytest.raises(UnknownIdentifier):
        access_request(store, "email", "ann@example.com")
    # the audit row: counts, opaque reference, keyed hash; nothing readable about Ann
    with store.tx() as conn:
        row = conn.execute(text("SELECT * FROM erasure_audit")).mappings().one()
    assert row["audit_id"] == done.audit_id and row["status"] == "requested"
    assert row["counts"] == done.counts and row["actor"] == "tester"
    assert row["identifier_type"] == "email" and row["profile_ids"] == [done.ref]
    flat = orjson.dumps({k: str(v) for k, v in row.items()}).decode().lower()
    assert "ann" not in flat and "m1" not in flat and "example" not in flat


def test_after_erasure_the_same_email_starts_a_fresh_profile(store: Store) -> None:
    p = Pipeline(store)
    p.feed(ANN + BOB)
    done = erase(store, "member_no", "M1", PARTS, "tester")
    # what `announce` sends: the worker refolds the profile, finds nothing, retires it
    p.out.sent.append((RESOLVED, encode_note("member:M1", True), b"member:M1", 0))
    p.drain()
    assert "member:M1" not in p.profiles.states
    assert (PROFILES, None, b"member:M1", None) in p.out.sent  # the stage's own tombstone
    assert count(store, "SELECT count(*) FROM profiles WHERE profile_id = 'member:M1'") == 0
    # the same email again, later: a new guest, none of the old history or points
    p.feed([link("W9", at(10), customer_id="W9", email="ann@example.com")])
    doc = access_request(store, "email", "ann@example.com")
    assert doc["member_id"] is None and doc["member_nos"] == []
    assert doc["points_balance"] == 0 and doc["purchase_count"] == 0
    assert doc["identifiers"] == ["customer_id:W9", "email:ann@example.com"]
    with store.tx() as conn:
        pids = [r[0] for r in conn.execute(text("SELECT profile_id FROM profiles ORDER BY 1"))]
    assert pids[0].startswith("guest:") and pids[1:] == ["member:M2"]
    assert p.identity.erasure == done.audit_id


def test_erase_refuses_unknown_and_shared_identifiers(store: Store) -> None:
    p = Pipeline(store)
    p.feed(
        [
            link("W1", at(0), customer_id="W1", phone="5550100"),
            link("W2", at(0), customer_id="W2", phone="5550100"),  # a household phone
        ]
    )
    with pytest.raises(UnknownIdentifier, match="no profile holds this email"):
        erase(store, "email", "nobody@example.com", PARTS, "tester")
    with pytest.raises(ErasureError, match="2 profiles hold this phone"):
        erase(store, "phone", "5550100", PARTS, "tester")
    with pytest.raises(ErasureError, match="2 profiles hold this phone"):
        access_request(store, "phone", "5550100")
    assert count(store, "SELECT count(*) FROM records") == 2
    assert count(store, "SELECT count(*) FROM erasure_audit") == 0


# -- the CLI (a subprocess: exactly what a user sees) ------------------------------------


@pytest.mark.parametrize(
    ("ref", "why"),
    [("passport:X", "unknown identifier type"), ("email:  ", "empty email"), (":x", "type")],
)
def test_cli_erase_bad_identifier(ref: str, why: str, tmp_path: Path) -> None:
    res = run_cli("erase", ref, "--yes", "--state-dir", str(tmp_path), stdin=subprocess.DEVNULL)
    assert why in one_line_error(res) and res.returncode == 2


def test_cli_erase_needs_yes_without_a_terminal(tmp_path: Path) -> None:
    res = run_cli("erase", "email:ann@example.com", "--state-dir", str(tmp_path),
                  stdin=subprocess.DEVNULL)
    line = one_line_error(res)
    assert "--yes" in line and "terminal" in line and "ann" not in line


def test_cli_erase_help_says_what_is_not_erased() -> None:
    res = run_cli("erase", "--help")
    assert res.returncode == 0
    text_ = " ".join(res.stdout.split())
    for words in ("NOT erased", "loyalty.events", "offers.*", "retention", "source databases"):
        assert words in text_, words


def test_cli_unknown_identifier(store: Store) -> None:
    dsn = str(store.engine.url.render_as_string(hide_password=False)).replace("+psycopg", "")
    for args in (
        ("erase", "email:Nobody@Example.com", "--yes"),
        ("profiles", "export", "--identifier", "email:Nobody@Example.com"),
    ):
        res = run_cli(*args, "--dsn", dsn, stdin=subprocess.DEVNULL)
        line = one_line_error(res)
        assert res.returncode == 1 and "no profile holds this email" in line
        assert "nobody" not in line.lower() and res.stdout == ""


def test_cli_export_one_profile_and_refuse_erasure_without_broker(
    store: Store, closed_port: int
) -> None:
    Pipeline(store).feed(ANN + BOB)
    dsn = str(store.engine.url.render_as_string(hide_password=False)).replace("+psycopg", "")
    res = run_cli("profiles", "export", "--identifier", "M1", "--dsn", dsn)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0]) == access_request(store, "member_no", "M1")
    # the broker is checked before anything is deleted
    res = run_cli(
        "erase", "M1", "--yes", "--dsn", dsn, "--bootstrap", f"127.0.0.1:{closed_port}",
        stdin=subprocess.DEVNULL,
    )
    assert "unreachable" in one_line_error(res) and res.returncode == 1
    assert count(store, "SELECT count(*) FROM records WHERE profile_id = 'member:M1'") == len(ANN)
    assert count(store, "SELECT count(*) FROM erasure_audit") == 0
