"""cdp: the profile store -- profiles, identifier lookup, erasure audit.

``profiles`` holds the latest snapshot of each profile from the compacted ``cdp.profiles``
topic: the export fields of SPEC section 5 as columns (for SQL access and indexes) plus the
full snapshot in ``doc``. ``tier`` is free text: tier names come from the program YAML.
``version`` is the snapshot's monotonic version: the sink upserts only when the incoming
version is higher, so replays and redeliveries are idempotent.

``profile_identifiers`` resolves an identifier to its profile without storing the raw value:
``value_hash`` is the hex SHA-256 (computed by the writer, optionally keyed) of the
normalized identifier (SPEC section 4: email trimmed and lower-cased, phone digits only).

``erasure_audit`` records GDPR erasure requests without PII (identifier hash only).

Later issues extend the store with new revisions on top of this one.

Revision ID: cdp_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "cdp_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.TIMESTAMP(timezone=True)
EMPTY_TEXT_ARRAY = sa.text("'{}'::text[]")


def _text_array(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, pg.ARRAY(sa.Text), nullable=False, server_default=EMPTY_TEXT_ARRAY)
ERASURE_STATUSES = ("requested", "completed", "failed")


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("profile_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=True),
        _text_array("member_nos"),
        _text_array("identifiers"),
        sa.Column("enrolled_at", TSTZ),
        sa.Column("tier", sa.Text),
        sa.Column("points_balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("qualifying_spend_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lifetime_spend_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("purchase_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_purchase_at", TSTZ),
        sa.Column("lapse_risk", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("email_opt_in", sa.Boolean),
        sa.Column("sms_consent", sa.Boolean),
        sa.Column("admt_opt_out", sa.Boolean),
        sa.Column("push_opt_in", sa.Boolean),
        sa.Column("as_of", TSTZ),
        sa.Column("doc", pg.JSONB, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", TSTZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "profiles_member_id_key", "profiles", ["member_id"], unique=True,
        postgresql_where=sa.text("member_id IS NOT NULL"),
    )
    op.create_table(
        "profile_identifiers",
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("value_hash", sa.Text, primary_key=True),
        sa.Column(
            "profile_id", sa.Text,
            sa.ForeignKey("profiles.profile_id", ondelete="CASCADE"), nullable=False,
        ),
    )
    op.create_index("profile_identifiers_profile_id_idx", "profile_identifiers", ["profile_id"])
    statuses = ", ".join(f"'{s}'" for s in ERASURE_STATUSES)
    op.create_table(
        "erasure_audit",
        sa.Column("audit_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("requested_at", TSTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("completed_at", TSTZ),
        sa.Column("identifier_type", sa.Text, nullable=False),
        sa.Column("identifier_hash", sa.Text, nullable=False),
        _text_array("profile_ids"),
        sa.Column("member_id", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="requested"),
        sa.Column("actor", sa.Text),
        sa.Column("details", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.CheckConstraint(f"status IN ({statuses})", name="erasure_audit_status_check"),
    )
    op.create_index("erasure_audit_identifier_idx", "erasure_audit", ["identifier_hash"])


def downgrade() -> None:
    op.drop_table("erasure_audit")
    op.drop_table("profile_identifiers")
    op.drop_table("profiles")
