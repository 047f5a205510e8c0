"""GDPR erasure (SPEC 10): remove one person from the profile store and ``cdp.profiles``.

``loyalty-cdp erase <identifier>`` (``app/cli.py``) calls :func:`erase`, then
:func:`announce`, then :func:`complete`.

**Who.** The identifier is parsed like ``GET /v1/members/{id}`` (:func:`streams.api.
parse_member_ref`: a member number or ``type:value``, normalised) and looked up by its keyed
hash in the ``profile_identifiers`` index. Exactly one profile must hold it: a phone number
does not merge profiles, so a household phone may name several people and is refused (erase
by an identifier of that one person). The store's ``records`` are the truth of what belongs
to the profile; a profile the index names but that holds no records is one the pipeline is
still moving (a merge or rename not yet folded): refused, retry after ``wait --caught-up``.

**What, in one transaction** holding the identity lock (no identity batch can place, merge
or replay records meanwhile), the profile-stage lock of every partition involved (the owner
cannot write a snapshot of the person meanwhile) and the decisioning lock of the profile:

* ``records`` of the profile (merges moved every record of the person's former profiles
  to it), ``rejected_records`` of those records, and ``parked_records`` whose purchase is
  one of the person's purchases (a POS return waiting for its sale);
* ``profiles`` and ``profile_identifiers`` of every id the person's cluster can ever have
  had: the current one, ``member:<n>`` for each of their member numbers and the guest id of
  each of their records (a guest id is a hash of one of the cluster's records, see
  :mod:`app.domain.identity`), so a retired profile the stage has not yet deleted goes too;
* ``loyalty_outbox``, ``offer_outbox`` (and their rows' entries in ``<outbox>_pending``),
  ``decisions`` and ``contact_history`` of those ids;
* and an ``erasure_audit`` row: the identifier's type and keyed hash, opaque profile
  references (:func:`profile_ref`), the counts per table, the actor; no raw identifier,
  member number or profile id.

**After commit** (:func:`announce`): a tombstone for each erased profile id on
``cdp.profiles`` (compacted: the snapshots go at the next compaction; same key and default
partitioner as the profile stage, so the tombstone lands on the snapshots' partition) and a
refold notification on ``cdp.resolved``. The owning worker refolds the profile, finds no
records, drops its cached ``MemberState`` and publishes its own tombstone (the "gone" path of
:mod:`streams.profiles`). Then :func:`complete` marks the audit row ``completed``; a row left
``requested`` means the broker never acknowledged the tombstones.

**The identity stage** holds every record in its in-memory graph; it compares
``max(audit_id)`` (:func:`last_erasure`) under its lock with the value it saw last and
rebuilds the graph from the remaining records when it changed, so a later record with the
same email starts a fresh profile instead of rejoining the erased cluster.

**Not erased here** (README, "Privacy / erasure"): messages on topics that are not
compacted (the change topics ``pos|web|app.public.*``, ``cdp.events``,
``cdp.guest_purchases``, ``loyalty.events``, ``offers.*``) stay until their retention; the
source databases are the retailer's systems of record and must be erased there (Debezium
then captures the deletes, which map to nothing). A ``replay`` or a re-snapshot while the
sources or change topics still hold the person re-creates the profile.

Known window: a profile-stage batch that was already waiting for the partition lock with
a clock tick may re-snapshot the cached state once before the refold notification retires
it again (the notification always follows the erasure on the same partition).

Every statement is parameterised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, text

from streams.store import Store, identifier_hash
from streams.topics import PROFILES, RESOLVED, partition_of

__all__ = [
    "Erasure",
    "ErasureError",
    "UnknownIdentifier",
    "access_request",
    "announce",
    "complete",
    "erase",
    "holder",
    "last_erasure",
    "profile_ref",
    "resolved_partitions",
]

#: Tables erased, in the order the rows are deleted (counts are reported in this order).
TABLES = (
    "parked_records",
    "rejected_records",
    "records",
    "profile_identifiers",
    "profiles",
    "loyalty_outbox",
    "offer_outbox",
    "decisions",
    "contact_history",
)

#: The outbox tables among them: each has a ``<table>_pending`` of unpublished rows.
OUTBOXES = ("loyalty_outbox", "offer_outbox")


class ErasureError(Exception):
    """The request cannot be carried out (one line, no PII)."""


class UnknownIdentifier(ErasureError):
    """No profile holds the identifier."""


@dataclass(frozen=True)
class Erasure:
    audit_id: int
    ref: str  # opaque reference of the profile (what the audit and the CLI show)
    profile_ids: tuple[str, ...]  # ids tombstoned and refolded (never printed or logged)
    counts: dict[str, int]

    def summary(self) -> str:
        counts = ", ".join(f"{t} {self.counts[t]}" for t in TABLES)
        return f"erased profile {self.ref} (audit {self.audit_id}): {counts}"


def profile_ref(profile_id: str) -> str:
    """Opaque, stable reference of a profile: the keyed hash used by the identifier index
    (``member:M100`` carries a member number, so the audit never stores the id itself)."""
    return identifier_hash("profile_id", profile_id)[:32]


def last_erasure(conn: Connection) -> int | None:
    """The latest erasure's audit id (None: none yet); the identity stage's rebuild trigger."""
    latest: int | None = conn.execute(text("SELECT max(audit_id) FROM erasure_audit")).scalar()
    return latest


def resolved_partitions(bootstrap: str, timeout: float = 10.0) -> int:
    """The partition count of ``cdp.resolved`` (the profile stage's partitioning)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        md = admin.list_topics(RESOLVED, timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0]
        why = err.str() if hasattr(err, "str") else str(err)
        raise ErasureError(f"broker {bootstrap} unreachable: {why}") from None
    meta = md.topics.get(RESOLVED)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ErasureError(f"topic {RESOLVED} missing on {bootstrap}: run `loyalty-cdp up`")
    return len(meta.partitions)


def _contents(rows: Sequence[Any]) -> tuple[list[str], set[str], set[str]]:
    """(record ids, member numbers, purchase ids) of a profile's canonical records."""
    record_ids: list[str] = []
    member_nos: set[str] = set()
    purchases: set[str] = set()
    for record_id, payload in rows:
        record_ids.append(record_id)
        data = orjson.loads(bytes(payload)).get("data") or {}
        member_nos.update(
            i["value"] for i in data.get("identifiers") or () if i.get("type") == "member_no"
        )
        if data.get("purchase_id"):
            purchases.add(data["purchase_id"])
    return record_ids, member_nos, purchases


def _possible_ids(pid: str, record_ids: Iterable[str], member_nos: Iterable[str]) -> set[str]:
    """Every id the person's cluster can have had: the cluster id rule of the domain core
    applied to each member number and to each record as the cluster's earliest."""
    from app.domain.identity import _Cluster  # the one definition of profile ids
    from app.domain.records import Identifier

    epoch = datetime.min.replace(tzinfo=UTC)
    ids = {pid} | {_Cluster((epoch, rid)).cluster_id() for rid in record_ids}
    return ids | {
        _Cluster((epoch, ""), {Identifier("member_no", m)}).cluster_id() for m in member_nos
    }


def holder(conn: Connection, type_: str, value: str) -> str:
    """The one profile holding ``type_:value`` (normalised), by the identifier index."""
    holders = [
        r[0]
        for r in conn.execute(
            text(
                "SELECT DISTINCT profile_id FROM profile_identifiers"
                " WHERE type = :t AND value_hash = :h ORDER BY 1"
            ),
            {"t": type_, "h": identifier_hash(type_, value)},
        )
    ]
    if not holders:
        raise UnknownIdentifier(f"no profile holds this {type_}")
    if len(holders) > 1:
        raise ErasureError(
            f"{len(holders)} profiles hold this {type_}: name one person by an identifier"
            " only they have (member number, card, email ...), or retry after"
            " `loyalty-cdp wait --caught-up`"
        )
    pid: str = holders[0]
    return pid


def access_request(store: Store, type_: str, value: str) -> dict[str, Any]:
    """The export document (SPEC 5) of the one person holding the identifier (SPEC 10's
    access request). Like :func:`erase`, an identifier several profiles hold is refused: the
    API's member-first pick is fine for a decision, not for handing personal data over."""
    with store.tx() as conn:
        pid = holder(conn, type_, value)
        doc = conn.execute(
            text("SELECT doc FROM profiles WHERE profile_id = :p"), {"p": pid}
        ).scalar_one()
    return dict(doc)


def erase(store: Store, type_: str, value: str, partitions: int, actor: str) -> Erasure:
    """Delete the person holding ``type_:value`` (normalised) and audit it, in one transaction."""
    from streams.decisioning import DECIDE_LOCK_NS

    value_hash = identifier_hash(type_, value)
    with store.tx() as conn:
        store.identity_lock(conn)
        pid = holder(conn, type_, value)
        rows = conn.execute(
            text("SELECT record_id, payload FROM records WHERE profile_id = :p"), {"p": pid}
        ).all()
        if not rows:
            raise ErasureError(
                "the profile is still being updated by the pipeline:"
                " retry after `loyalty-cdp wait --caught-up`"
            )
        record_ids, member_nos, purchases = _contents(rows)
        ids = sorted(_possible_ids(pid, record_ids, member_nos))
        store.partition_locks(conn, {partition_of(i, partitions) for i in ids})
        lock = text("SELECT pg_advisory_xact_lock(:ns, hashtext(:p))")
        conn.execute(lock, {"ns": DECIDE_LOCK_NS, "p": pid})
        counts: dict[str, int] = {}
        by_ids = {"ids": ids}

        def delete(table: str, where: str, params: dict[str, Any]) -> None:
            sql = text(f"DELETE FROM {table} WHERE {where}")  # constants; values bound
            counts[table] = conn.execute(sql, params).rowcount

        delete("parked_records", "purchase_id = ANY(:p)", {"p": sorted(purchases)})
        delete("rejected_records", "record_id = ANY(:r)", {"r": record_ids})
        delete("records", "profile_id = :p", {"p": pid})
        delete("profile_identifiers", "profile_id = ANY(:ids)", by_ids)
        erased = {
            r[0]
            for r in conn.execute(
                text("DELETE FROM profiles WHERE profile_id = ANY(:ids) RETURNING profile_id"),
                by_ids,
            )
        }
        counts["profiles"] = len(erased)
        for table in TABLES[5:]:
            if table in OUTBOXES:  # its in-flight marks first (no foreign key: cdp_0009)
                conn.execute(
                    text(
                        f"DELETE FROM {table}_pending WHERE seq IN"
                        f" (SELECT seq FROM {table} WHERE profile_id = ANY(:ids))"
                    ),
                    by_ids,
                )
            delete(table, "profile_id = ANY(:ids)", by_ids)
        ref = profile_ref(pid)
        audit_id = conn.execute(
            text(
                "INSERT INTO erasure_audit (identifier_type, identifier_hash, profile_ids,"
                " status, actor, counts) VALUES (:t, :h, :refs, 'requested', :actor,"
                " CAST(:counts AS jsonb)) RETURNING audit_id"
            ),
            {
                "t": type_,
                "h": value_hash,
                "refs": [ref, *sorted({profile_ref(i) for i in erased} - {ref})],
                "actor": actor,
                "counts": orjson.dumps(counts).decode(),
            },
        ).scalar_one()
    return Erasure(audit_id, ref, tuple(sorted(erased | {pid})), counts)


def announce(erasure: Erasure, bootstrap: str, partitions: int, timeout: float = 30.0) -> None:
    """Tombstones on ``cdp.profiles`` and refold notifications on ``cdp.resolved``."""
    from streams.identity import encode_note
    from streams.producer import BatchProducer

    out = BatchProducer(bootstrap)
    for pid in erasure.profile_ids:
        out.send(PROFILES, None, pid.encode())
        out.send(
            RESOLVED, encode_note(pid, True), pid.encode(), partition=partition_of(pid, partitions)
        )
    try:
        out.flush_sync(timeout)
    except RuntimeError as exc:
        raise ErasureError(
            f"erased in the store (audit {erasure.audit_id}, status requested) but {exc}"
        ) from None


def complete(store: Store, erasure: Erasure) -> None:
    """Mark the audit row completed (the store and the compacted topic are erased)."""
    with store.tx() as conn:
        conn.execute(
            text(
                "UPDATE erasure_audit SET status = 'completed', completed_at = now()"
                " WHERE audit_id = :a"
            ),
            {"a": erasure.audit_id},
        )
