"""web: the CDC heartbeat table (schema loyalty_cdp, see app/db/heartbeat.py).

Revision ID: web_0002
Revises: web_0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

from app.db import heartbeat

revision: str = "web_0002"
down_revision: str | None = "web_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    heartbeat.create(op, "web")


def downgrade() -> None:
    heartbeat.drop(op)
