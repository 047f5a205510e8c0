"""cdp: ``records.purchase_id``, so the identity stage can find a purchase's records.

The identity stage's in-memory graph holds a node per purchase so that a later record of the
same purchase (a POS return, which carries no identifier) lands in the purchase's cluster.
Those nodes were ~90% of the graph: a member with 50 purchases cost ~7.5 KB of the
worker's memory, ~0.7-0.9 KB without them (``bench domain``), and the graph holds every
member the store has. The stage now keeps only the most recent purchase nodes
(``LOYALTY_CDP_PURCHASE_NODES``) and, for a record naming a purchase the graph no longer
knows, reads that purchase's stored records by this column and re-adds them to the graph
first (``streams/identity.py``).

The column is set by the insert (the stage has the parsed record); the upgrade fills it for
the records already stored from their canonical payload. The index is partial: only
purchases and refunds have a purchase id.

Revision ID: cdp_0010
Revises: cdp_0009
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "cdp_0010"
down_revision: str | None = "cdp_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``records.type`` holds the canonical CloudEvent type (``Record.TYPE``)
PURCHASE_TYPES = "('cdp.purchase.completed', 'cdp.purchase.refunded', 'cdp.purchase.line')"

#: fills the column from the stored payloads (cdp_0012 runs it again, for a store upgraded
#: by the first version of this migration, whose filter named the types without ``cdp.``)
BACKFILL = (
    "UPDATE records SET purchase_id = convert_from(payload, 'UTF8')::jsonb"
    " #>> '{data,purchase_id}'"
    f" WHERE purchase_id IS NULL AND type IN {PURCHASE_TYPES}"
)


def upgrade() -> None:
    op.execute("ALTER TABLE records ADD COLUMN purchase_id text")
    op.execute(BACKFILL)
    # built without blocking the identity stage's inserts into a large ``records`` table (as
    # cdp_0008); a build that failed half-way leaves an INVALID index: dropped, built again
    with op.get_context().autocommit_block():
        op.execute(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c"
            " ON c.oid = i.indexrelid WHERE c.relname = 'records_purchase_idx'"
            " AND NOT i.indisvalid) THEN DROP INDEX records_purchase_idx; END IF; END $$"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS records_purchase_idx ON records"
            " (purchase_id) WHERE purchase_id IS NOT NULL"
        )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS records_purchase_idx")
    op.execute("ALTER TABLE records DROP COLUMN purchase_id")
