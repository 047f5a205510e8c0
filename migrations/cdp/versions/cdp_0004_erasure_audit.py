"""cdp: the GDPR erasure audit as ``loyalty-cdp erase`` writes it (issue: erasure).

``erasure_audit`` exists since cdp_0001 (audit id, requested/completed times, identifier type
and hash, ``profile_ids``, status, actor, details). What erasure needs on top:

* ``counts``: the rows deleted per table (``{"records": 12, "profiles": 1, ...}``), written
  in the erasing transaction itself, so the audit row and the deletes commit together.
* ``member_id`` is dropped: a raw member number kept after the erasure would be exactly the
  personal data the erasure removes. ``profile_ids`` holds opaque references instead
  (``streams.erasure.profile_ref``: the keyed SHA-256 of the profile id, like the identifier
  index), and ``identifier_hash`` the keyed hash of the identifier the request named.

The identity stage reads ``max(audit_id)`` under its lock to notice an erasure and rebuild its
in-memory graph without the erased records (``streams/identity.py``); ``audit_id`` is the
primary key, so that read is one index probe.

Revision ID: cdp_0004
Revises: cdp_0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "cdp_0004"
down_revision: str | None = "cdp_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "erasure_audit",
        sa.Column("counts", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.drop_column("erasure_audit", "member_id")


def downgrade() -> None:
    op.add_column("erasure_audit", sa.Column("member_id", sa.Text))
    op.drop_column("erasure_audit", "counts")
