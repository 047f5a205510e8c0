"""cdp: decisioning state (issue 6): decided moments, contact history, offer outbox.

* ``decisions``: one row per decided moment and profile (``moment_id``, ``profile_id``),
  with the full explanation (chosen offers, ranked candidates, every rejection). The agent
  decides a moment only if its row is new, so a replay never re-decides a moment (a
  re-decision could pick another channel, i.e. another message id, once caps moved).
* ``contact_history``: one row per message sent (unique on the deterministic decision id),
  written in the transaction that decided it; caps and the repeat rule read it.
* ``offer_outbox``: the messages for ``offers.<channel>`` (``type`` = channel), published
  after commit and marked, like ``loyalty_outbox`` (``streams/outbox.py``).

Revision ID: cdp_0003
Revises: cdp_0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "cdp_0003"
down_revision: str | None = "cdp_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("moment_id", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, primary_key=True),
        sa.Column("moment_type", sa.Text, nullable=False),
        sa.Column("member_id", sa.Text),
        sa.Column("decided_at", TSTZ, nullable=False),
        sa.Column("channels", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("doc", pg.JSONB, nullable=False),
    )
    op.create_table(
        "contact_history",
        sa.Column("decision_id", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("member_id", sa.Text),
        sa.Column("moment_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("offer_ids", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("sent_at", TSTZ, nullable=False),
    )
    op.create_index("contact_history_profile_idx", "contact_history", ["profile_id", "sent_at"])
    op.create_index("contact_history_member_idx", "contact_history", ["member_id", "sent_at"])
    op.create_table(
        "offer_outbox",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TSTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", TSTZ),
    )
    op.create_index(
        "offer_outbox_unpublished_idx", "offer_outbox", ["partition", "seq"],
        postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    for table in ("offer_outbox", "contact_history", "decisions"):
        op.drop_table(table)
