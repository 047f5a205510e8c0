"""The profile store (PostgreSQL ``cdp`` database) as the stream stages use it.

SQLAlchemy 2 Core over psycopg 3; every statement is parameterised. One transaction per
batch (the profile stage: per chunk of a batch's profiles): a stage does all of its reads and
writes inside it, so a crash leaves either all of it or nothing. Why the store, not Faust
changelog tables, holds the durable state is in the README ("Architecture").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

__all__ = ["IDENTITY_LOCK", "Store", "identifier_hash", "run"]

IDENTITY_LOCK = 0x1D_E471  # pg_advisory_xact_lock key serialising identity resolution
PARTITION_LOCK_BASE = 0x9A_0000  # + partition: one profile-stage owner per partition


def run(conn: Connection, sql: str, params: dict[str, Any]) -> CursorResult[Any]:
    """Execute driver-level SQL (psycopg ``%(name)b`` placeholders) on a SQLAlchemy connection.

    The batch statements pass whole columns as arrays. psycopg's text format escapes every
    array element with a regular expression (measured: 1.35 s for 5,000 2 KB payloads);
    ``%(name)b`` sends them in the binary format instead (0.26 s). Values are still bound
    parameters, never formatted into the SQL.
    """
    return conn.exec_driver_sql(sql, params)  # type: ignore[arg-type]


#: The profile upsert: columns derived from the export document in PostgreSQL. The
#: ``OFFSET 0`` keeps the planner from flattening the lateral subquery, which had replaced
#: every ``d`` below by ``u.doc::jsonb``: the document was parsed ~20 times per row
#: (300 profiles: 48 ms, 14 ms with one parse each).
_UPSERT_PROFILES = (
    "INSERT INTO profiles (profile_id, member_id, member_nos, identifiers, enrolled_at,"
    " tier, points_balance, qualifying_spend_cents, lifetime_spend_cents, purchase_count,"
    " last_purchase_at, lapse_risk, email_opt_in, sms_consent, admt_opt_out, push_opt_in,"
    " as_of, doc, version, next_due, updated_at)"
    " SELECT u.pid, d->>'member_id',"
    " ARRAY(SELECT jsonb_array_elements_text(d->'member_nos')),"
    " ARRAY(SELECT jsonb_array_elements_text(d->'identifiers')),"
    " (d->>'enrolled_at')::timestamptz, d->>'tier', (d->>'points_balance')::bigint,"
    " (d->>'qualifying_spend_cents')::bigint, (d->>'lifetime_spend_cents')::bigint,"
    " (d->>'purchase_count')::int, (d->>'last_purchase_at')::timestamptz,"
    " (d->>'lapse_risk')::boolean, (d->'consent'->>'email_opt_in')::boolean,"
    " (d->'consent'->>'sms_consent')::boolean, (d->'consent'->>'admt_opt_out')::boolean,"
    " (d->'consent'->>'push_opt_in')::boolean, (d->>'as_of')::timestamptz, d, u.version,"
    " u.due, now()"
    " FROM unnest(%(pids)b::text[], %(docs)b::text[], %(versions)b::bigint[],"
    " %(due)b::timestamptz[]) AS u(pid, doc, version, due)"
    " CROSS JOIN LATERAL (SELECT u.doc::jsonb AS d OFFSET 0) j"
    " ON CONFLICT (profile_id) DO UPDATE SET member_id = EXCLUDED.member_id,"
    " member_nos = EXCLUDED.member_nos, identifiers = EXCLUDED.identifiers,"
    " enrolled_at = EXCLUDED.enrolled_at, tier = EXCLUDED.tier,"
    " points_balance = EXCLUDED.points_balance,"
    " qualifying_spend_cents = EXCLUDED.qualifying_spend_cents,"
    " lifetime_spend_cents = EXCLUDED.lifetime_spend_cents,"
    " purchase_count = EXCLUDED.purchase_count,"
    " last_purchase_at = EXCLUDED.last_purchase_at, lapse_risk = EXCLUDED.lapse_risk,"
    " email_opt_in = EXCLUDED.email_opt_in, sms_consent = EXCLUDED.sms_consent,"
    " admt_opt_out = EXCLUDED.admt_opt_out, push_opt_in = EXCLUDED.push_opt_in,"
    " as_of = EXCLUDED.as_of, doc = EXCLUDED.doc, version = EXCLUDED.version,"
    " next_due = EXCLUDED.next_due, updated_at = now()"
)


def identifier_hash(type_: str, value: str) -> str:
    """Hex SHA-256 of ``type:value`` (normalised), keyed by ``$LOYALTY_CDP_IDENTIFIER_PEPPER``.

    The lookup table never holds a raw email or phone: GET /v1/members/email:x hashes the
    same way to find the profile.
    """
    pepper = os.environ.get("LOYALTY_CDP_IDENTIFIER_PEPPER", "")
    return hashlib.sha256(f"{pepper}{type_}:{value}".encode()).hexdigest()


_LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


#: A pooled connection unused for longer than this is pinged before it is handed out.
PING_IDLE_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it sat idle for :data:`PING_IDLE_S`.

    Why not ``pool_pre_ping``: it pings at *every* checkout, a round trip per transaction.
    The stages run a transaction every few ms, each on a connection used moments before;
    py-spy at 1,000 rows/s found the identity stage's thread in that ping for ~40% of its
    busy time (each round trip waits for a server process on a busy host). A connection that
    was idle, e.g. across a PostgreSQL restart, is still pinged, and a dead one is replaced
    before use (``DisconnectionError`` from a checkout listener: the pool discards the
    connection and checks out another, as ``pool_pre_ping`` does)."""

    @event.listens_for(engine, "checkin")
    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["lcdp_checkin"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("lcdp_checkin")
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # a new connection, or one in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _renice_backend(nice: int, dbapi_conn: Any, _record: Any) -> None:
    """Run the server process of a new connection ``nice`` steps down (best effort)."""
    with dbapi_conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    dbapi_conn.rollback()
    with contextlib.suppress(OSError):  # another user's process, and we are not root
        os.setpriority(os.PRIO_PROCESS, pid, nice)


class Store:
    def __init__(
        self, dsn: str, *, backend_nice: int | None = None, application_name: str | None = None
    ) -> None:
        """``application_name``: who this is in ``pg_stat_activity`` (and server logs).
        ``backend_nice``: when the server is on this host, run the PostgreSQL process of
        each of this store's connections at this niceness (needs root or the server's user;
        otherwise nothing changes).

        Why: a connection's SQL runs in its own server process, at the server's priority,
        not at its client's. The decisioning process runs below the stream stages so that
        on a saturated host the loyalty events come first, but its ~0.6 ms of PostgreSQL CPU
        per moment ran at the server's priority, above the stages' own Python: its backends
        take its niceness too (streams/decision_process.py).
        """
        url = make_url(dsn).set(drivername="postgresql+psycopg")
        self.engine: Engine = create_engine(
            url,
            pool_size=4,
            max_overflow=4,
            connect_args={"application_name": application_name} if application_name else {},
        )
        _ping_when_idle(self.engine)
        if backend_nice is not None and url.host in _LOCAL_HOSTS:
            event.listen(self.engine, "connect", functools.partial(_renice_backend, backend_nice))

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    # -- identity stage ---------------------------------------------------------------

    @staticmethod
    def identity_lock(conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": IDENTITY_LOCK})

    @staticmethod
    def records_after(conn: Connection, seq: int) -> list[tuple[int, bytes]]:
        rows = conn.execute(
            text("SELECT seq, payload FROM records WHERE seq > :s ORDER BY seq"), {"s": seq}
        )
        return [(r[0], bytes(r[1])) for r in rows]

    @staticmethod
    def insert_records(conn: Connection, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Insert new records (duplicates ignored); returns the seq of each inserted id."""
        if not rows:
            return {}
        result = run(
            conn,
            "INSERT INTO records (record_id, profile_id, occurred_at, type, payload, purchase_id)"
            " SELECT * FROM unnest(%(ids)b::text[], %(pids)b::text[], %(times)b::timestamptz[],"
            " %(types)b::text[], %(payloads)b::bytea[], %(purchases)b::text[])"
            " ON CONFLICT (record_id) DO NOTHING RETURNING record_id, seq",
            {
                "ids": [r["record_id"] for r in rows],
                "pids": [r["profile_id"] for r in rows],
                "times": [r["occurred_at"] for r in rows],
                "types": [r["type"] for r in rows],
                "payloads": [r["payload"] for r in rows],
                "purchases": [r.get("purchase_id") for r in rows],
            },
        )
        return {r[0]: r[1] for r in result}

    @staticmethod
    def pending_notes(conn: Connection) -> list[tuple[int, str]]:
        """Refold notifications written by identity batches and not yet cleared (cdp_0011)."""
        return [(r[0], r[1]) for r in conn.execute(
            text("SELECT seq, profile_id FROM resolved_pending ORDER BY seq")
        )]

    @staticmethod
    def add_pending_notes(conn: Connection, profile_ids: Sequence[str]) -> list[int]:
        """Keep refold notifications until the broker has them; returns their seqs."""
        if not profile_ids:
            return []
        rows = run(
            conn,
            "INSERT INTO resolved_pending (profile_id) SELECT * FROM unnest(%(p)b::text[])"
            " RETURNING seq",
            {"p": list(profile_ids)},
        )
        return [r[0] for r in rows]

    def clear_pending_notes(self, seqs: Sequence[int]) -> None:
        """The broker acknowledged these notifications (their own short transaction)."""
        if seqs:
            with self.tx() as conn:
                run(conn, "DELETE FROM resolved_pending WHERE seq = ANY(%(s)b::bigint[])",
                    {"s": list(seqs)})

    @staticmethod
    def purchase_records(conn: Connection, purchase_ids: Sequence[str]) -> list[bytes]:
        """The stored payloads of these purchases' records (purchases, refunds): what the
        identity stage re-adds to its graph for a purchase it has forgotten (cdp_0010)."""
        if not purchase_ids:
            return []
        rows = run(
            conn,
            "SELECT payload FROM records WHERE purchase_id = ANY(%(p)b::text[])",
            {"p": list(purchase_ids)},
        )
        return [bytes(r[0]) for r in rows]

    @staticmethod
    def reassign(conn: Connection, old: str, new: str) -> None:
        conn.execute(
            text("UPDATE records SET profile_id = :new WHERE profile_id = :old"),
            {"old": old, "new": new},
        )

    @staticmethod
    def add_anonymous(conn: Connection, purchase_ids: Sequence[str]) -> None:
        """Remember anonymous sales: their returns carry no identifier either."""
        if purchase_ids:
            run(
                conn,
                "INSERT INTO anonymous_purchases (purchase_id)"
                " SELECT * FROM unnest(%(p)b::text[]) ON CONFLICT DO NOTHING",
                {"p": list(purchase_ids)},
            )

    @staticmethod
    def anonymous_among(conn: Connection, purchase_ids: set[str]) -> set[str]:
        if not purchase_ids:
            return set()
        rows = run(
            conn,
            "SELECT purchase_id FROM anonymous_purchases"
            " WHERE purchase_id = ANY(%(p)b::text[])",
            {"p": sorted(purchase_ids)},
        )
        return {r[0] for r in rows}

    @staticmethod
    def parked(conn: Connection) -> list[bytes]:
        return [bytes(r[0]) for r in conn.execute(text("SELECT payload FROM parked_records"))]

    @staticmethod
    def park(conn: Connection, rows: Sequence[tuple[str, str, bytes]]) -> None:
        if rows:
            conn.execute(
                text(
                    "INSERT INTO parked_records (record_id, purchase_id, payload)"
                    " VALUES (:r, :p, :b) ON CONFLICT DO NOTHING"
                ),
                [{"r": r, "p": p, "b": b} for r, p, b in rows],
            )

    @staticmethod
    def unpark(conn: Connection, record_ids: Sequence[str]) -> None:
        if record_ids:
            conn.execute(
                text("DELETE FROM parked_records WHERE record_id = ANY(:ids)"),
                {"ids": list(record_ids)},
            )

    # -- profile stage ----------------------------------------------------------------

    @staticmethod
    def partition_locks(conn: Connection, partitions: Iterable[int]) -> None:
        """Take the advisory locks of ``partitions`` in one round trip, in ascending order
        (every holder takes them in that order, so two batches cannot deadlock)."""
        keys = sorted({PARTITION_LOCK_BASE + p for p in partitions})
        if keys:
            conn.execute(
                text(
                    "SELECT count(pg_advisory_xact_lock(k))"
                    " FROM (SELECT unnest(CAST(:ks AS bigint[])) AS k ORDER BY 1) s"
                ),
                {"ks": keys},
            )

    @staticmethod
    def profile_ids(conn: Connection) -> list[str]:
        return [r[0] for r in conn.execute(text("SELECT DISTINCT profile_id FROM records"))]

    @staticmethod
    def versions(conn: Connection, profile_ids: Iterable[str]) -> dict[str, int]:
        rows = conn.execute(
            text("SELECT profile_id, version FROM profiles WHERE profile_id = ANY(:ids)"),
            {"ids": list(profile_ids)},
        )
        return {r[0]: r[1] for r in rows}

    @staticmethod
    def records_of(
        conn: Connection, after: dict[str, int]
    ) -> dict[str, list[tuple[int, str, bytes]]]:
        """New records per profile, ``(seq, record_id, payload)`` with ``seq > after[profile]``
        (0 = all), rejected ones left out."""
        out: dict[str, list[tuple[int, str, bytes]]] = {pid: [] for pid in after}
        if not after:
            return out
        rows = conn.execute(
            text(
                "SELECT r.profile_id, r.seq, r.record_id, r.payload FROM records r"
                " JOIN unnest(CAST(:pids AS text[]), CAST(:seqs AS bigint[])) AS a(pid, s)"
                " ON r.profile_id = a.pid AND r.seq > a.s"
                " WHERE NOT EXISTS"
                " (SELECT 1 FROM rejected_records x WHERE x.record_id = r.record_id)"
                " ORDER BY r.seq"
            ),
            {"pids": list(after), "seqs": list(after.values())},
        )
        for pid, seq, rid, payload in rows:
            out[pid].append((seq, rid, bytes(payload)))
        return out

    @staticmethod
    def reject(conn: Connection, rows: Sequence[tuple[str, str]]) -> None:
        if rows:
            conn.execute(
                text(
                    "INSERT INTO rejected_records (record_id, reason) VALUES (:r, :why)"
                    " ON CONFLICT DO NOTHING"
                ),
                [{"r": r, "why": why} for r, why in rows],
            )

    @staticmethod
    def upsert_profiles(
        conn: Connection,
        docs: dict[str, dict[str, Any]],
        versions: dict[str, int],
        due: dict[str, datetime] | None = None,
    ) -> None:
        """Write snapshots (the export document plus its columns) and the identifier index.

        One statement for the whole batch: the documents go as one binary text array and
        PostgreSQL derives the query columns from the jsonb, so the per-profile cost on this
        side is one ``orjson.dumps``.
        """
        if not docs:
            return
        before = {
            r[0]: r[1]
            for r in run(
                conn,
                "SELECT profile_id, identifiers FROM profiles"
                " WHERE profile_id = ANY(%(ids)b::text[])",
                {"ids": list(docs)},
            )
        }
        due = due or {}
        run(conn, _UPSERT_PROFILES, {
            "pids": list(docs),
            "docs": [orjson.dumps(d).decode() for d in docs.values()],
            "versions": [versions[pid] for pid in docs],
            "due": [due.get(pid) for pid in docs],
        })
        # The index changes only when a profile's identifiers do (rarely, after the first
        # snapshot): most batches rewrite none of it.
        moved = {pid: d for pid, d in docs.items() if before.get(pid) != d["identifiers"]}
        if not moved:
            return
        run(
            conn,
            "DELETE FROM profile_identifiers WHERE profile_id = ANY(%(ids)b::text[])",
            {"ids": list(moved)},
        )
        types, hashes, pids = [], [], []
        for pid, doc in moved.items():
            for ident in doc["identifiers"]:
                t, v = ident.split(":", 1)
                types.append(t)
                hashes.append(identifier_hash(t, v))
                pids.append(pid)
        if pids:
            run(
                conn,
                "INSERT INTO profile_identifiers (type, value_hash, profile_id)"
                " SELECT * FROM unnest(%(t)b::text[], %(h)b::text[], %(p)b::text[])"
                " ON CONFLICT DO NOTHING",
                {"t": types, "h": hashes, "p": pids},
            )

    @staticmethod
    def due_profiles(conn: Connection, at: datetime) -> list[str]:
        """Profiles with a time-driven effect due at ``at`` (or not known yet: NULL)."""
        rows = run(
            conn,
            "SELECT profile_id FROM profiles WHERE next_due <= %(at)s OR next_due IS NULL",
            {"at": at},
        )
        return [r[0] for r in rows]

    @staticmethod
    def set_due(conn: Connection, due: dict[str, datetime]) -> None:
        """Record when profiles that were advanced without a new snapshot are next due."""
        if due:
            run(
                conn,
                "UPDATE profiles p SET next_due = u.due FROM unnest(%(pids)b::text[],"
                " %(due)b::timestamptz[]) AS u(pid, due) WHERE p.profile_id = u.pid"
                " AND p.next_due IS DISTINCT FROM u.due",
                {"pids": list(due), "due": list(due.values())},
            )

    @staticmethod
    def delete_profiles(conn: Connection, profile_ids: Sequence[str]) -> None:
        if profile_ids:
            conn.execute(
                text("DELETE FROM profiles WHERE profile_id = ANY(:ids)"),
                {"ids": list(profile_ids)},
            )

    @staticmethod
    def clock(conn: Connection) -> datetime | None:
        """The manual clock: the latest tick every partition has applied (max over ticks)."""
        return conn.execute(text("SELECT max(at) FROM clock")).scalar_one_or_none()  # type: ignore[no-any-return]

    @staticmethod
    def set_clock(conn: Connection, partition: int, at: datetime) -> None:
        conn.execute(
            text(
                "INSERT INTO clock (partition, at) VALUES (:p, :at) ON CONFLICT (partition)"
                " DO UPDATE SET at = GREATEST(clock.at, EXCLUDED.at)"
            ),
            {"p": partition, "at": at},
        )

    @staticmethod
    def clock_acks(conn: Connection) -> dict[int, datetime]:
        return {r[0]: r[1] for r in conn.execute(text("SELECT partition, at FROM clock"))}

    # -- reads for the CLI and the API ------------------------------------------------

    def profile_doc(self, type_: str, value: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT p.doc FROM profile_identifiers i JOIN profiles p USING (profile_id)"
                    " WHERE i.type = :t AND i.value_hash = :h ORDER BY p.member_id NULLS LAST,"
                    " p.profile_id LIMIT 1"
                ),
                {"t": type_, "h": identifier_hash(type_, value)},
            ).first()
        return None if row is None else dict(row[0])

    def export(self) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(
                text("SELECT doc FROM profiles ORDER BY profile_id")
            )
            for row in result:
                yield dict(row[0])
