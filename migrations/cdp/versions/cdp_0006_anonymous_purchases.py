"""cdp: ``anonymous_purchases``, the sales that have no identity (SPEC 2: no card).

An anonymous sale forms no profile and is not stored in ``records``; its return carries no
identifier either, so the identity stage must recognise that return as anonymous instead of
parking it forever as "purchase not seen yet", also after a restart or on another worker.
The stage records the purchase ids here in the transaction of the batch and looks up only
the purchases of parked returns (the in-memory graph keeps nothing of anonymous sales,
which are most of a store's sales).

Revision ID: cdp_0006
Revises: cdp_0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cdp_0006"
down_revision: str | None = "cdp_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "anonymous_purchases",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("purchase_id", sa.Text, nullable=False, unique=True),
    )


def downgrade() -> None:
    op.drop_table("anonymous_purchases")
