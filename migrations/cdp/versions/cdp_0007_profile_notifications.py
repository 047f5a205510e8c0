"""cdp: notify ``cdp_profiles`` listeners of every committed profile and identifier change.

The decision API keeps the profiles it has read in memory (``streams/api_server.py``,
``ProfileCache``) so that a checkout's decision needs no store round trip. It may do so only
while it learns of every change, whichever code path makes it (the profile stage, erasure, a
manual fix in psql): statement-level triggers send, at commit (``NOTIFY`` is transactional),
the ids of the profiles whose document changed (``p<profile_id>``) and the identifier keys
whose owner changed (``k<type>:<value_hash>``; hashes, never a raw identifier), newline
separated, at most 100 per notification (a payload must stay under 8,000 bytes). Updates that
leave ``version`` alone (``next_due`` bookkeeping) notify nothing.

Revision ID: cdp_0007
Revises: cdp_0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "cdp_0007"
down_revision: str | None = "cdp_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "cdp_profiles"

_SEND = f"""
  FOR msg IN
    SELECT string_agg(k, E'\\n') FROM (
      SELECT k, (row_number() OVER (ORDER BY k) - 1) / 100 AS g FROM (SELECT DISTINCT {{key}}
      AS k FROM {{rows}}) d
    ) c GROUP BY g
  LOOP
    PERFORM pg_notify('{CHANNEL}', msg);
  END LOOP;
"""

_PROFILES_FN = f"""
CREATE FUNCTION cdp_notify_profiles() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE msg text;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    {_SEND.format(key="'p' || n.profile_id",
                  rows="changed n JOIN old_rows o USING (profile_id)"
                       " WHERE n.version IS DISTINCT FROM o.version")}
  ELSE
    {_SEND.format(key="'p' || profile_id", rows="changed")}
  END IF;
  RETURN NULL;
END $$
"""

_IDENTIFIERS_FN = f"""
CREATE FUNCTION cdp_notify_identifiers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE msg text;
BEGIN
  {_SEND.format(key="'k' || type || ':' || value_hash", rows="changed")}
  RETURN NULL;
END $$
"""


def _triggers(table: str, fn: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_notify_ins AFTER INSERT ON {table}"
        f" REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {table}_notify_upd AFTER UPDATE ON {table}"
        f" REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {table}_notify_del AFTER DELETE ON {table}"
        f" REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    ]


def upgrade() -> None:
    op.execute(_PROFILES_FN)
    op.execute(_IDENTIFIERS_FN)
    for sql in _triggers("profiles", "cdp_notify_profiles") + _triggers(
        "profile_identifiers", "cdp_notify_identifiers"
    ):
        op.execute(sql)


def downgrade() -> None:
    for table in ("profiles", "profile_identifiers"):
        for op_ in ("ins", "upd", "del"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_{op_} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS cdp_notify_profiles()")
    op.execute("DROP FUNCTION IF EXISTS cdp_notify_identifiers()")
