"""pos: loyalty cards, transactions and lines, returns (SPEC section 3).

Ids are text (the POS owns their format). No foreign keys on purpose: the source systems are
upstream-owned and CDC must tolerate orphans (a return for a transaction of another store,
rows captured out of order), which the pipeline routes to cdp.dlq instead of the database
refusing them. Reference columns are indexed instead.

Revision ID: pos_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pos_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.TIMESTAMP(timezone=True)
MONEY = sa.Numeric(12, 2)
TABLES = ("loyalty_cards", "transactions", "transaction_lines", "returns")


def upgrade() -> None:
    op.create_table(
        "loyalty_cards",
        sa.Column("card_no", sa.Text, primary_key=True),
        sa.Column("member_no", sa.Text, nullable=False),
        sa.Column("phone", sa.Text),
        sa.Column("issued_at", TSTZ, nullable=False),
    )
    op.create_index("loyalty_cards_member_no_idx", "loyalty_cards", ["member_no"])
    op.create_table(
        "transactions",
        sa.Column("txn_id", sa.Text, primary_key=True),
        sa.Column("store_id", sa.Text),
        sa.Column("card_no", sa.Text, nullable=True),
        sa.Column("total", MONEY, nullable=False),
        sa.Column("currency", sa.CHAR(3), server_default="USD"),
        sa.Column("occurred_at", TSTZ, nullable=False),
    )
    op.create_index("transactions_card_no_idx", "transactions", ["card_no"])
    op.create_table(
        "transaction_lines",
        sa.Column("txn_id", sa.Text, primary_key=True),
        sa.Column("line_no", sa.Integer, primary_key=True),
        sa.Column("sku", sa.Text),
        sa.Column("qty", sa.Integer),
        sa.Column("unit_price", MONEY),
    )
    op.create_table(
        "returns",
        sa.Column("return_id", sa.Text, primary_key=True),
        sa.Column("txn_id", sa.Text, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("occurred_at", TSTZ),
        sa.CheckConstraint("amount > 0", name="returns_amount_positive"),
    )
    op.create_index("returns_txn_id_idx", "returns", ["txn_id"])
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
