"""cdp: ``resolved_pending``, the refold notifications not yet known to be on the broker.

The identity stage commits a batch (records, merges) and only then sends its notifications
to ``cdp.resolved``. A crash between the two loses them. For a plain notification ("profile P
has new records") that is harmless: the batch is redelivered, its records are placed again
and P notified again. Not for a merge or a rename: the store already holds the merge, so the
replayed graph resolves the redelivered record without one, and nobody would tell the
profile stage to retire the absorbed profile or to refold the survivor (found by an
integration test that SIGKILLs the worker mid-stream: a guest profile stayed in the store
next to the member it had become).

So the stage writes its refold notifications here in the batch's transaction and deletes
them once the broker has acknowledged them. Every identity batch (any worker: they hold
the identity lock in turn) first sends whatever it finds here, so a dead worker's
notifications go out with the next batch. Notifications are idempotent, so sending one twice
costs a re-read, never a wrong result. Merges and renames are rare: the table is nearly
always empty, and reading it costs each batch one scan of that (tiny) table.

Revision ID: cdp_0011
Revises: cdp_0010
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cdp_0011"
down_revision: str | None = "cdp_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resolved_pending",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("profile_id", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("resolved_pending")
