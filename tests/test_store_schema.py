"""What the store's migrations set up for the hot statements, and what an upgrade keeps, on
real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from alembic import command

from app.db.migrate import alembic_config, database_dsn, ensure_database, upgrade
from app.domain.records import MemberEnrolled, PurchaseCompleted, PurchaseRefunded
from streams.decisioning import PUSH_TOKEN_SQL
from streams.store import _UPSERT_PROFILES

pytest_plugins = ["tests.pg_support"]


@pytest.fixture
def cdp(source_dsns: dict[str, str]) -> psycopg.Connection:  # type: ignore[type-arg]
    with psycopg.connect(source_dsns["cdp"], autocommit=True) as conn:
        yield conn


def _lz4_supported(conn: psycopg.Connection) -> bool:  # type: ignore[type-arg]
    try:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE lz4_probe (x text COMPRESSION lz4)")
            conn.execute("DROP TABLE lz4_probe")
    except psycopg.errors.FeatureNotSupported:
        return False
    return True


def test_large_decisioning_columns_are_compressed_with_lz4(cdp: psycopg.Connection) -> None:  # type: ignore[type-arg]
    """pglz cost ~40% more PostgreSQL CPU per ~4 KB decision document (cdp_0008); a server
    built without LZ4 keeps its default (the migration does not fail there)."""
    want = "l" if _lz4_supported(cdp) else ""
    rows = dict(
        cdp.execute(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression"
            " FROM pg_attribute WHERE (attrelid, attname) IN"
            " (('decisions'::regclass, 'doc'), ('offer_outbox'::regclass, 'payload'))"
        ).fetchall()
    )
    assert rows == {"decisions.doc": want, "offer_outbox.payload": want}


def test_the_push_token_lookup_reads_the_consent_index(cdp: psycopg.Connection) -> None:  # type: ignore[type-arg]
    """The lookup of each profile's push-token consent goes through the partial index of
    consent records, not every record of its profiles (seq scans off: the table is small)."""
    with cdp.transaction():
        cdp.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in cdp.execute(
                "EXPLAIN " + PUSH_TOKEN_SQL.replace(":p", "%(p)s"), {"p": ["P1", "P2"]}
            )
        )
    assert "records_consent_idx" in plan


def test_the_upgrade_keeps_what_was_unpublished_and_the_downgrade_restores_it(
    pg_admin_dsn: str,
) -> None:
    """cdp_0009: rows unpublished before the upgrade are pending after it, and back; and
    cdp_0008's downgrade leaves the columns' compression and the indexes as they were."""
    with psycopg.connect(database_dsn(pg_admin_dsn, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS cdp_upgrade_test")
        ensure_database(admin, "cdp_upgrade_test")
    dsn = database_dsn(pg_admin_dsn, "cdp_upgrade_test")
    upgrade("cdp", dsn, "cdp_0008")
    insert = (
        "INSERT INTO {t} (event_id, partition, profile_id, type, key, payload, published_at)"
        " VALUES ('e1', 3, 'P', 'x', 'k', '\\x00', now()), ('e2', 5, 'P', 'x', 'k', '\\x00',"
        " NULL) RETURNING seq"
    )
    tables = ("loyalty_outbox", "offer_outbox")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seqs = {t: [r[0] for r in conn.execute(insert.format(t=t))] for t in tables}
    upgrade("cdp", dsn, "head")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            assert conn.execute(f"SELECT partition, seq FROM {t}_pending").fetchall() == [
                (5, seqs[t][1])
            ]
    command.downgrade(alembic_config("cdp", dsn), "cdp_0008")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            rows = conn.execute(
                f"SELECT event_id, published_at IS NOT NULL FROM {t} ORDER BY seq"
            ).fetchall()
            assert rows == [("e1", True), ("e2", False)]
            index = conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s",
                                 (f"{t}_unpublished_idx",)).fetchone()
            assert index is not None
    command.downgrade(alembic_config("cdp", dsn), "cdp_0007")  # cdp_0008 undone as well
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'decisions'::regclass AND attname = 'doc'"
        ).fetchone() == ("",)  # the server's default again
        assert conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = 'records_consent_idx'"
        ).fetchone() is None
    with psycopg.connect(database_dsn(pg_admin_dsn, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE cdp_upgrade_test")


def test_the_profile_upsert_parses_each_document_once(cdp: psycopg.Connection) -> None:  # type: ignore[type-arg]
    """The lateral subquery that parses the document stays a node of its own: flattened,
    every ``d`` of the statement became ``u.doc::jsonb``, a parse per derived column (~20
    per row, 3.4x the statement's time)."""
    params = {"pids": ["P"], "docs": ["{}"], "versions": [1], "due": [None]}
    with cdp.transaction():
        plan = [r[0].strip() for r in cdp.execute("EXPLAIN " + _UPSERT_PROFILES, params)]
    below_insert = next(line for line in plan if line.startswith("->"))
    assert below_insert.startswith("->  Nested Loop"), plan
    assert any(line.startswith("->  Result") for line in plan[plan.index(below_insert):]), plan


def test_the_upgrade_fills_the_purchase_id_of_stored_records(pg_admin_dsn: str) -> None:
    """cdp_0010: records stored before it get their purchase id from their payload, and the
    identity stage's lookup by purchase reads the new index; the downgrade drops both."""
    with psycopg.connect(database_dsn(pg_admin_dsn, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS cdp_purchase_test")
        ensure_database(admin, "cdp_purchase_test")
    dsn = database_dsn(pg_admin_dsn, "cdp_purchase_test")
    upgrade("cdp", dsn, "cdp_0009")
    # the types as the identity stage stores them (Record.TYPE)
    rows = [("r1", PurchaseCompleted.TYPE, b'{"data": {"purchase_id": "pos:A", "x": 5}}'),
            ("r2", PurchaseRefunded.TYPE, b'{"data": {"purchase_id": "pos:A"}}'),
            ("r3", MemberEnrolled.TYPE, b'{"data": {"member_no": "1"}}')]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for rid, type_, payload in rows:
            conn.execute("INSERT INTO records (record_id, profile_id, occurred_at, type, payload)"
                         " VALUES (%s, 'P', now(), %s, %s)", (rid, type_, payload))
    upgrade("cdp", dsn, "head")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT record_id, purchase_id FROM records ORDER BY record_id"
        ).fetchall() == [("r1", "pos:A"), ("r2", "pos:A"), ("r3", None)]
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT payload FROM records WHERE purchase_id = ANY(%s::text[])",
            (["pos:A"],)))
        assert "records_purchase_idx" in plan
        # a store upgraded by cdp_0010's first version (it filled nothing): cdp_0012 fills it
        conn.execute("UPDATE records SET purchase_id = NULL")
    command.downgrade(alembic_config("cdp", dsn), "cdp_0011")
    upgrade("cdp", dsn, "head")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM records WHERE purchase_id = 'pos:A'"
        ).fetchone() == (2,)
    command.downgrade(alembic_config("cdp", dsn), "cdp_0009")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'records' AND column_name = 'purchase_id'"
        ).fetchone() is None
    with psycopg.connect(database_dsn(pg_admin_dsn, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE cdp_purchase_test")


def test_an_invalid_consent_index_is_built_again(pg_admin_dsn: str) -> None:
    """cdp_0008 builds its index CONCURRENTLY; a build that failed half-way leaves an INVALID
    index, which a re-run of the upgrade replaces instead of keeping (IF NOT EXISTS)."""
    with psycopg.connect(database_dsn(pg_admin_dsn, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS cdp_invalid_test")
        ensure_database(admin, "cdp_invalid_test")
    dsn = database_dsn(pg_admin_dsn, "cdp_invalid_test")
    upgrade("cdp", dsn, "cdp_0007")
    valid = ("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
             " WHERE c.relname = 'records_consent_idx'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX records_consent_idx ON records (profile_id)")
        conn.execute("UPDATE pg_index SET indisvalid = false"
                     " WHERE indexrelid = 'records_consent_idx'::regclass")  # a failed build
        assert conn.execute(valid).fetchone() == (False,)
    upgrade("cdp", dsn, "cdp_0008")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(valid).fetchone() == (True,)
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'records_consent_idx'"
        ).fetchone()
        assert definition is not None and "consent.changed" in definition[0]
    with psycopg.connect(database_dsn(pg_admin_dsn, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE cdp_invalid_test")
