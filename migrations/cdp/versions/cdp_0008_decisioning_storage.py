"""cdp: cheaper storage for decisioning's large rows; an index for its push-token lookup.

* ``decisions.doc`` (the decision's explanation, ~4 KB of JSON) and ``offer_outbox.payload``
  (the offer message, ~4 KB) are compressed with LZ4 instead of PostgreSQL's default pglz.
  Both are above the TOAST threshold, so every decision paid a pglz compression: inserting
  4,000 decision documents took 565 ms as ``jsonb`` with pglz and 333 ms with LZ4 (measured
  on the embedded PostgreSQL 15). Only new values are affected; old ones stay readable. A
  server built without LZ4 support keeps pglz (the change is skipped, with a notice).
* ``records_consent_idx``: decisioning reads, per batch, the latest consent record of each
  profile that mentions a push token. Without an index on the consent records alone that is
  a scan of every record of the batch's profiles (or of the whole table); the partial index
  holds only consent changes.

Revision ID: cdp_0008
Revises: cdp_0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "cdp_0008"
down_revision: str | None = "cdp_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("decisions", "doc"), ("offer_outbox", "payload"))


def _compression(method: str) -> None:
    for table, column in COLUMNS:
        op.execute(
            f"""
DO $$ BEGIN
  ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method};
EXCEPTION WHEN feature_not_supported THEN
  RAISE NOTICE 'compression {method} not supported by this server; {table}.{column} unchanged';
END $$
"""
        )


def upgrade() -> None:
    _compression("lz4")
    # built without blocking the identity stage's inserts into a large ``records`` table
    # (CONCURRENTLY cannot run in a transaction: alembic commits around this block)
    with op.get_context().autocommit_block():
        # a build that failed half-way (cancelled, deadlock) leaves an INVALID index that
        # IF NOT EXISTS would keep for ever: drop it, so a re-run builds it again
        op.execute(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c"
            " ON c.oid = i.indexrelid WHERE c.relname = 'records_consent_idx'"
            " AND NOT i.indisvalid) THEN DROP INDEX records_consent_idx; END IF; END $$"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS records_consent_idx"
            " ON records (profile_id, occurred_at DESC, seq DESC)"
            " WHERE type = 'cdp.consent.changed'"
        )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS records_consent_idx")
    _compression("DEFAULT")  # the server's default_toast_compression, as before
