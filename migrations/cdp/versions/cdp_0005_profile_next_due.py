"""cdp: ``profiles.next_due``, when each profile next has a time-driven effect.

The profile stage used to load every profile of a partition it took over (a refold of each
member's history: minutes for a million members on a worker start or a rebalance), only so
that its once-a-second timer could find the members whose points expire, hold ends or lapse
risk falls due. With this column the timer asks the store (``next_due <= now``, an index
range scan) and a worker loads a profile only when a record or a due effect needs it.

``NULL`` (rows written before this revision) reads as "due now": the first timer run loads
such a profile once and writes its value. ``'infinity'`` would be "nothing pending"; the
stage writes the domain's far-future bound instead.

Revision ID: cdp_0005
Revises: cdp_0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cdp_0005"
down_revision: str | None = "cdp_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("profiles", sa.Column("next_due", sa.DateTime(timezone=True)))
    op.create_index("profiles_next_due_idx", "profiles", ["next_due"])


def downgrade() -> None:
    op.drop_index("profiles_next_due_idx", table_name="profiles")
    op.drop_column("profiles", "next_due")
