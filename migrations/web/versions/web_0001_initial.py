"""web: customers, loyalty enrollments, orders and order items (SPEC section 3).

Ids are text; no foreign keys on purpose (see pos_0001). ``orders.status`` is restricted to
the SPEC's list and ``refunded_amount`` may not be negative.

Revision ID: web_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "web_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.TIMESTAMP(timezone=True)
MONEY = sa.Numeric(12, 2)
TABLES = ("customers", "loyalty_enrollments", "orders", "order_items")
ORDER_STATUSES = ("placed", "paid", "cancelled", "refunded", "partially_refunded")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("member_no", sa.Text, nullable=True),
        sa.Column("email_opt_in", sa.Boolean),
        sa.Column("sms_consent", sa.Boolean),
        sa.Column("admt_opt_out", sa.Boolean, server_default=sa.false()),
        sa.Column("updated_at", TSTZ, nullable=False),
    )
    op.create_index("customers_member_no_idx", "customers", ["member_no"])
    op.create_table(
        "loyalty_enrollments",
        sa.Column("member_no", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("enrolled_at", TSTZ, nullable=False),
    )
    op.create_index("loyalty_enrollments_customer_id_idx", "loyalty_enrollments", ["customer_id"])
    statuses = ", ".join(f"'{s}'" for s in ORDER_STATUSES)
    op.create_table(
        "orders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("total", MONEY),
        sa.Column("currency", sa.CHAR(3)),
        sa.Column("status", sa.Text),
        sa.Column("refunded_amount", MONEY, server_default="0"),
        sa.Column("updated_at", TSTZ, nullable=False),
        sa.CheckConstraint(f"status IN ({statuses})", name="orders_status_check"),
        sa.CheckConstraint("refunded_amount >= 0", name="orders_refunded_amount_check"),
    )
    op.create_index("orders_customer_id_idx", "orders", ["customer_id"])
    op.create_table(
        "order_items",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("line_no", sa.Integer, primary_key=True),
        sa.Column("sku", sa.Text),
        sa.Column("qty", sa.Integer),
        sa.Column("unit_price", MONEY),
    )
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
