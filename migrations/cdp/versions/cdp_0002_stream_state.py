"""cdp: durable state of the stream topology (issue 5).

* ``records``: every canonical record of every profile (the history the domain core folds),
  with the profile (cluster) it currently belongs to. ``seq`` is assigned under the identity
  lock, so it is the commit order of identity resolution: workers catch their in-memory
  identity graph up with ``seq > last seen``.
* ``parked_records``: records that cannot be placed yet (a POS return whose purchase has not
  arrived); they are retried whenever identity moves on.
* ``rejected_records``: records the domain refused (sent to ``cdp.dlq`` once, then skipped).
* ``loyalty_outbox``: every loyalty event ever emitted, keyed by its deterministic id, so a
  refold after a crash, restart or replay never emits an event twice; ``published_at`` is set
  once the broker acknowledged it.
* ``clock``: the manual clock per ``cdp.resolved`` partition (``clock tick`` acknowledgements).
* ``profile_identifiers`` gets ``profile_id`` in its key: a non-merging identifier (phone) may
  belong to several profiles.

Revision ID: cdp_0002
Revises: cdp_0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cdp_0002"
down_revision: str | None = "cdp_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False, unique=True),
        sa.Column("record_id", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("occurred_at", TSTZ, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("records_profile_seq_idx", "records", ["profile_id", "seq"])
    op.create_table(
        "parked_records",
        sa.Column("record_id", sa.Text, primary_key=True),
        sa.Column("purchase_id", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("parked_at", TSTZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "rejected_records",
        sa.Column("record_id", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rejected_at", TSTZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "loyalty_outbox",
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
    op.create_index("loyalty_outbox_profile_idx", "loyalty_outbox", ["profile_id"])
    op.create_index(
        "loyalty_outbox_unpublished_idx", "loyalty_outbox", ["partition", "seq"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "clock",
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("at", TSTZ, nullable=False),
    )
    op.drop_constraint("profile_identifiers_pkey", "profile_identifiers")
    op.create_primary_key(
        "profile_identifiers_pkey", "profile_identifiers", ["type", "value_hash", "profile_id"]
    )


def downgrade() -> None:
    op.drop_constraint("profile_identifiers_pkey", "profile_identifiers")
    op.create_primary_key("profile_identifiers_pkey", "profile_identifiers", ["type", "value_hash"])
    for table in ("clock", "loyalty_outbox", "rejected_records", "parked_records", "records"):
        op.drop_table(table)
