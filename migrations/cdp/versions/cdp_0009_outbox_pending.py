"""cdp: an outbox row's "not yet published" is a row of a small pending table, not a column.

Marking a row published used to be ``UPDATE ... SET published_at = now()``. That column is in
the predicate of the partial "unpublished" index, so no update was HOT: each mark wrote a new
version of the whole row (payload included) and a new entry in every index of the table (4
on ``loyalty_outbox``). Measured on the embedded stack, a burst of 20,000 canonical events
wrote 270 MB of WAL in 870,519 WAL records; the marks of the two outboxes were 51,648 heap
updates (each a copy of the row with its payload) and their ~150,000 index entries, about a
quarter of the records. With this change the same burst wrote 194 MB in 739,761 records.
The store's WAL is also what every logical-decoding WAL sender of the source databases reads
when they share a server, as in the embedded stack.

Now a row is inserted into ``<outbox>_pending (partition, seq)`` in the same statement as the
outbox row, and publishing deletes it there: per message a ~40-byte insert and a delete on a
table that holds only what is in flight. Reconciliation reads the pending rows of its
partitions. ``published_at`` and the partial indexes go; rows unpublished at the upgrade
become pending rows. No foreign key: its check would lock (and log) the outbox row of every
insert; an erasure deletes the pending rows of the outbox rows it deletes
(streams/erasure.py).

Revision ID: cdp_0009
Revises: cdp_0008
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "cdp_0009"
down_revision: str | None = "cdp_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("loyalty_outbox", "offer_outbox")


def upgrade() -> None:
    for t in TABLES:
        op.execute(
            f"CREATE TABLE {t}_pending (partition integer NOT NULL,"
            " seq bigint NOT NULL,"
            " PRIMARY KEY (partition, seq))"
        )
        op.execute(
            f"INSERT INTO {t}_pending (partition, seq)"
            f" SELECT partition, seq FROM {t} WHERE published_at IS NULL"
        )
        op.execute(f"DROP INDEX IF EXISTS {t}_unpublished_idx")
        op.execute(f"ALTER TABLE {t} DROP COLUMN published_at")


def downgrade() -> None:
    for t in TABLES:
        op.execute(f"ALTER TABLE {t} ADD COLUMN published_at timestamptz")
        op.execute(
            f"UPDATE {t} o SET published_at = o.created_at WHERE NOT EXISTS"
            f" (SELECT 1 FROM {t}_pending p WHERE p.seq = o.seq)"
        )
        op.execute(
            f"CREATE INDEX {t}_unpublished_idx ON {t} (partition, seq)"
            " WHERE published_at IS NULL"
        )
        op.execute(f"DROP TABLE {t}_pending")
