"""cdp: fill ``records.purchase_id`` where the first version of cdp_0010 left it empty.

That version's backfill named the record types without their ``cdp.`` prefix, so it filled
no row: on a store upgraded by it, every purchase stored before the upgrade had no purchase
id, and the identity stage could not read a forgotten one back (a later return would stay
parked). Found by review in the session that wrote it; a no-op on any other store. (The
statement is cdp_0010's, written out: a migration does not import another.)

Revision ID: cdp_0012
Revises: cdp_0011
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "cdp_0012"
down_revision: str | None = "cdp_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE records SET purchase_id = convert_from(payload, 'UTF8')::jsonb"
        " #>> '{data,purchase_id}' WHERE purchase_id IS NULL AND type IN"
        " ('cdp.purchase.completed', 'cdp.purchase.refunded', 'cdp.purchase.line')"
    )


def downgrade() -> None:
    pass  # the values are right under every revision that has the column
