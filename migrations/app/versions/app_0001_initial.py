"""app: users, purchases, redemptions and app events (SPEC section 3).

Ids are text; no foreign keys on purpose (see pos_0001). ``app_events.kind`` is restricted to
the SPEC's list; redemptions are of a positive number of points.

Revision ID: app_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "app_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.TIMESTAMP(timezone=True)
MONEY = sa.Numeric(12, 2)
TABLES = ("users", "purchases", "redemptions", "app_events")
EVENT_KINDS = ("view", "add_to_cart", "referral_sent", "referral_converted")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("member_no", sa.Text, nullable=True),
        sa.Column("push_token", sa.Text, nullable=True),
        sa.Column("push_opt_in", sa.Boolean),
        sa.Column("updated_at", TSTZ, nullable=False),
    )
    op.create_index("users_member_no_idx", "users", ["member_no"])
    op.create_table(
        "purchases",
        sa.Column("purchase_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("total", MONEY),
        sa.Column("currency", sa.CHAR(3)),
        sa.Column("occurred_at", TSTZ),
    )
    op.create_index("purchases_user_id_idx", "purchases", ["user_id"])
    op.create_table(
        "redemptions",
        sa.Column("redemption_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("reward_code", sa.Text),
        sa.Column("occurred_at", TSTZ),
        sa.CheckConstraint("points > 0", name="redemptions_points_positive"),
    )
    op.create_index("redemptions_user_id_idx", "redemptions", ["user_id"])
    kinds = ", ".join(f"'{k}'" for k in EVENT_KINDS)
    op.create_table(
        "app_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text),
        sa.Column("sku", sa.Text, nullable=True),
        sa.Column("occurred_at", TSTZ),
        sa.CheckConstraint(f"kind IN ({kinds})", name="app_events_kind_check"),
    )
    op.create_index("app_events_user_id_idx", "app_events", ["user_id"])
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
