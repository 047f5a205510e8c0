"""What the store's migrations set up for the hot statements, on real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from streams.decisioning import PUSH_TOKEN_SQL

pytest_plugins = ["tests.pg_support"]


@pytest.fixture
def cdp(source_dsns: dict[str, str]) -> psycopg.Connection:  # type: ignore[type-arg]
    with psycopg.connect(source_dsns["cdp"], autocommit=True) as conn:
        yield conn


def test_large_decisioning_columns_are_compressed_with_lz4(cdp: psycopg.Connection) -> None:  # type: ignore[type-arg]
    """pglz cost ~40% more PostgreSQL CPU per ~4 KB decision document (cdp_0008)."""
    rows = dict(
        cdp.execute(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression"
            " FROM pg_attribute WHERE (attrelid, attname) IN"
            " (('decisions'::regclass, 'doc'), ('offer_outbox'::regclass, 'payload'))"
        ).fetchall()
    )
    assert rows == {"decisions.doc": "l", "offer_outbox.payload": "l"}


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
