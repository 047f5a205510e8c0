"""The CDC heartbeat table each source database gets (schema ``loyalty_cdp``).

Two jobs, both about knowing how far capture has come without touching the retailer's own
tables (``public`` stays exactly the captured schema):

* ``loyalty-cdp wait --caught-up`` writes a fresh token into it; the token's change event
  reaches the CDC runner strictly after every change committed before it, so when the
  runner has flushed the token, everything older is in the broker.
* Debezium's ``heartbeat.action.query`` updates it, so a replication slot on an idle
  database keeps advancing and PostgreSQL does not retain WAL forever (the WAL is shared by
  every database of the cluster).
"""

from __future__ import annotations

from typing import Any

SCHEMA = "loyalty_cdp"
TABLE = "cdc_heartbeat"
QUALIFIED = f"{SCHEMA}.{TABLE}"


def create(op: Any, source: str) -> None:
    """Migration body shared by the pos, web and app version trees."""
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.execute(
        f"CREATE TABLE {QUALIFIED} (source text PRIMARY KEY, token text NOT NULL,"
        " at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(f"INSERT INTO {QUALIFIED} (source, token) VALUES ('{source}', 'init')")


def drop(op: Any) -> None:
    op.execute(f"DROP TABLE IF EXISTS {QUALIFIED}")
