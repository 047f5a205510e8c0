"""Identity stage: ``cdp.events`` -> profile history in the store + ``cdp.resolved``.

Exactness across partitions and workers: ``cdp.events`` has several partitions, possibly
consumed by several workers, and two records that link the same person can arrive on two of
them at the same moment. Every batch therefore resolves identity inside one PostgreSQL
transaction holding a global advisory lock (``pg_advisory_xact_lock``): identity decisions
are serialised, and each one sees all decisions committed before it. The union-find itself is
the domain's :class:`IdentityGraph`, kept in memory; under the lock the worker first replays
the records other workers committed since it last looked (``records.seq`` is assigned under
the same lock, so it is the commit order). The graph is a function of the *set* of records,
so replaying them in any order gives the same grouping and the same (content-derived)
profile ids. Resolution costs microseconds per record, so one lock holder at a time is not
the bottleneck; the expensive fold is partitioned by profile in the profile stage.

Memory: the graph keeps every member's identifiers but only the ``purchase_nodes``
(``LOYALTY_CDP_PURCHASE_NODES``) most recent purchase nodes (``IdentityGraph.forget_purchases``;
they were ~90% of it). Before a batch is placed, the purchases it names that the graph does
not know are looked up in ``records.purchase_id`` (migration ``cdp_0010``) and their stored
records re-added to the graph, which teaches it the purchase exactly as before (a record the
graph has seen changes nothing else). A brand-new purchase costs one index probe in that
batch's single lookup.

A merge or a rename is notified with ``refold``; those notifications are also written to
``resolved_pending`` in the batch's transaction and deleted once the broker has them, and
each batch first re-sends what it finds there: a crash between a batch's commit and its
flush would otherwise lose them for good, since the redelivered batch finds the merge
already in the store (migration ``cdp_0011``).

Each record is written to ``records`` with its profile; a merge moves the absorbed profiles'
records to the survivor in the same transaction. Then one small notification per touched
profile goes to ``cdp.resolved`` (key and partition = the profile): the profile stage reads
what changed from the store, so notifications can be duplicated or reordered freely.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.domain.events import LoyaltyEvent
from app.domain.identity import IdentityGraph
from app.domain.program import CompiledProgram
from app.domain.records import (
    AnonymousRecord,
    InvalidRecord,
    PurchaseCompleted,
    PurchaseLine,
    Record,
    UnknownPurchase,
    record_from_cloudevent,
)
from app.settings import worker_tuning
from streams.erasure import last_erasure
from streams.outbox import Outbox
from streams.parsed_records import ParsedRecords
from streams.producer import BatchProducer
from streams.store import Store
from streams.topics import CANONICAL, DLQ, RESOLVED, partition_of

__all__ = ["IdentityStage", "encode_note"]

#: records replayed per chunk when catching up (see ``_catch_up``)
CATCH_UP_CHUNK = 10_000


def encode_note(profile_id: str, refold: bool) -> bytes:
    return orjson.dumps({"p": profile_id, "refold": refold})


@dataclass
class _Batch:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # record_id -> row
    notes: dict[str, bool] = field(default_factory=dict)  # profile -> refold
    merges: list[tuple[str, str]] = field(default_factory=list)  # (old, new) in order
    events: list[LoyaltyEvent] = field(default_factory=list)
    parked: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # rid -> (purchase, payload)
    anonymous: list[str] = field(default_factory=list)  # purchase ids of anonymous sales
    unparked: list[str] = field(default_factory=list)


class IdentityStage:
    def __init__(
        self,
        program: CompiledProgram,
        store: Store,
        out: BatchProducer,
        outbox: Outbox,
        partitions: int,
        parsed: ParsedRecords | None = None,
        purchase_nodes: int | None = None,
    ) -> None:
        self.program = program
        #: purchase nodes the graph keeps (the most recent; see the module doc)
        self.purchase_nodes = (
            worker_tuning().purchase_nodes if purchase_nodes is None else purchase_nodes
        )
        self.parsed = parsed
        self.store = store
        self.out = out
        self.outbox = outbox
        self.partitions = partitions
        self.graph = IdentityGraph(program)
        self.seq = 0
        self.erasure: int | None = None  # the latest erasure_audit id this graph reflects
        self._parked_known: list[tuple[Record, bytes]] | None = None
        self.counts = dict.fromkeys(
            ("in", "batches", "records", "anonymous", "parked", "dlq", "merges", "busy_ms",
             "purchases_restored"),
            0,
        )

    # -- parsing ------------------------------------------------------------------------

    def parse(self, value: bytes) -> Record:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidRecord(None, f"not JSON: {exc}") from None
        return record_from_cloudevent(event, currencies=self.program.currencies)

    def _dead_letter(self, message: Any, reason: str) -> None:
        """A canonical event the domain refuses: its bytes are a ``cdp.events`` message, so
        ``dlq.topic`` says so; the stage gets it from the canonical agent, not from that
        topic, so there is no ``cdp.events`` offset to name: ``dlq.source.*`` names the
        change (or ingest) message it was mapped from."""
        self.out.send(
            DLQ,
            message.value,
            message.key,
            [
                ("dlq.reason", reason.encode()),
                ("dlq.code", b"invalid_record"),
                ("dlq.topic", CANONICAL.encode()),
                ("dlq.source.topic", message.topic.encode()),
                ("dlq.source.partition", str(message.partition).encode()),
                ("dlq.source.offset", str(message.offset).encode()),
            ],
        )
        self.counts["dlq"] += 1

    # -- the batch ----------------------------------------------------------------------

    def process(self, messages: Sequence[Any]) -> None:
        """Resolve one batch of ``cdp.events`` messages (blocking; run in an executor)."""
        started = time.perf_counter()
        try:
            self._process(messages)
        finally:
            self.counts["busy_ms"] += int((time.perf_counter() - started) * 1000)

    def _process(self, messages: Sequence[Any]) -> None:
        parsed: list[tuple[Record, bytes]] = []
        for m in messages:
            if not m.value:
                continue
            try:
                r = self.parse(m.value)
            except InvalidRecord as exc:
                self._dead_letter(m, str(exc))
                continue
            if isinstance(r, PurchaseLine):
                continue  # lines stay on cdp.events for consumers; no profile field uses them
            parsed.append((r, m.value))
        self.counts["in"] += len(messages)
        self.counts["batches"] += 1
        b = _Batch()
        with self.store.tx() as conn:
            self.store.identity_lock(conn)
            self._catch_up(conn)
            # refold notifications a batch committed but may never have sent (a crash
            # between its commit and its flush): sent again with this batch (cdp_0011)
            pending = self.store.pending_notes(conn)
            for _, pid in pending:
                b.notes[pid] = True
            already = {pid for _, pid in pending}
            self._restore_purchases(
                conn, [r for r, _ in parsed] + [r for r, _ in self._load_parked(conn)]
            )
            for r, payload in parsed:
                self._place(r, payload, b)
            self.store.add_anonymous(conn, b.anonymous)
            parked = self._load_parked(conn)
            self._retry_parked(conn, parked, b)
            inserted = self.store.insert_records(conn, list(b.rows.values()))
            for old, new in b.merges:
                self.store.reassign(conn, old, new)
            self.store.park(conn, [(rid, p, pl) for rid, (p, pl) in b.parked.items()])
            self.store.unpark(conn, b.unparked)
            if b.parked or b.unparked:
                self._parked_known = None
            self.seq = max(self.seq, *inserted.values()) if inserted else self.seq
            parts = {e.profile_id: partition_of(e.profile_id, self.partitions) for e in b.events}
            new_events = self.outbox.add(conn, b.events, parts)
            # (those already pending keep their row, deleted with this batch's after the flush)
            refolds = [pid for pid, refold in b.notes.items() if refold and pid not in already]
            kept = self.store.add_pending_notes(conn, refolds)
        if self.parsed is not None:
            self.parsed.put_many(b.rows[rid]["record"] for rid in inserted)
        self.counts["records"] += len(b.rows)
        self.counts["merges"] += len(b.merges)
        for pid, refold in b.notes.items():
            self.out.send(
                RESOLVED,
                encode_note(pid, refold),
                pid.encode(),
                partition=partition_of(pid, self.partitions),
            )
        self.out.flush_sync()
        self.store.clear_pending_notes([seq for seq, _ in pending] + kept)
        self.outbox.publish(new_events)
        self.graph.forget_purchases(self.purchase_nodes)

    def _restore_purchases(self, conn: Any, records: Iterable[Record]) -> None:
        """Teach the graph the purchases ``records`` name that it has forgotten: their
        stored records are re-added, those with identifiers first (a refund without any is
        placed through its purchase's node). Re-adding a record the graph has seen changes
        nothing but the purchase node; one it has not seen yet (a later record of the
        purchase, replayed early) is added in another order, which the graph does not
        depend on. (The purchases of parked records are looked up on every batch, as their
        anonymous-sale check already is: a return whose sale never came stays parked, so
        that cost grows with ``parked_records``, which only bad data fills.)"""
        graph = self.graph
        wanted = {
            p
            for r in records
            if (p := getattr(r, "purchase_id", None)) is not None and not graph.purchase_known(p)
        }
        if not wanted:
            return
        stored = [self.parse(p) for p in self.store.purchase_records(conn, sorted(wanted))]
        stored.sort(key=lambda r: not r.identifiers)
        for r in stored:
            with contextlib.suppress(AnonymousRecord, UnknownPurchase):
                graph.add(r)
        self.counts["purchases_restored"] += len(stored)

    def _catch_up(self, conn: Any) -> None:
        """Replay records other workers committed since this worker last held the lock.

        A GDPR erasure (``streams/erasure.py``, rare) deletes records under this lock; the
        graph would still hold their identifiers, and a later record with the same email
        would rejoin the erased cluster. So a new ``erasure_audit`` id rebuilds the graph
        from the records that are left (a full replay, as at a worker's start).
        """
        erasure = last_erasure(conn)
        if erasure != self.erasure:
            self.erasure, self.graph, self.seq = erasure, IdentityGraph(self.program), 0
            if self.parsed is not None:
                self.parsed.clear()  # no erased person's record stays in memory here
        replayed = self.store.records_after(conn, self.seq)
        # In chunks: the purchases a chunk names that the graph has forgotten (another
        # worker's return of one, or, in a worker's first replay of the whole store, any
        # return older than the newest purchase nodes) are taught back first, as for a
        # batch; purchase nodes are forgotten between chunks only.
        for start in range(0, len(replayed), CATCH_UP_CHUNK):
            chunk = [(seq, self.parse(p)) for seq, p in replayed[start : start + CATCH_UP_CHUNK]]
            self._restore_purchases(conn, (r for _, r in chunk))
            for seq, r in chunk:
                # AnonymousRecord: stored by an earlier version; UnknownPurchase: never for a
                # stored record once its purchase is taught back (kept out of the crash path)
                with contextlib.suppress(AnonymousRecord, UnknownPurchase):
                    self.graph.add(r)
                self.seq = seq
            self.graph.forget_purchases(self.purchase_nodes)
        if replayed or self.seq == 0:
            self._parked_known = None  # another worker may have parked or placed records

    def _load_parked(self, conn: Any) -> list[tuple[Record, bytes]]:
        """Parked records (cached: only this worker changes them between catch-ups)."""
        if self._parked_known is None:
            self._parked_known = [(self.parse(p), p) for p in self.store.parked(conn)]
        return self._parked_known

    def _place(self, r: Record, payload: bytes, b: _Batch) -> None:
        try:
            res = self.graph.add(r)
        except AnonymousRecord:
            # a sale without a card: no identity, on cdp.events only (its identifier-less
            # return is an unknown purchase to the graph: dropped in _retry_parked)
            assert isinstance(r, PurchaseCompleted)
            b.anonymous.append(r.purchase_id)
            self.counts["anonymous"] += 1
            return
        except UnknownPurchase:
            assert hasattr(r, "purchase_id")
            b.parked[r.record_id] = (r.purchase_id, payload)
            self.counts["parked"] += 1
            return
        pid = res.cluster_id
        b.rows[r.record_id] = {
            "record_id": r.record_id,
            "profile_id": pid,
            "occurred_at": r.occurred_at,
            "type": r.TYPE,
            "payload": payload,
            "purchase_id": getattr(r, "purchase_id", None),
            "record": r,  # not a column: handed to the profile stage after commit
        }
        b.notes.setdefault(pid, False)
        if res.previous_ids:
            for old in res.previous_ids:
                b.merges.append((old, pid))
                b.notes[old] = True  # re-read from scratch: found empty, it is retired
                for row in b.rows.values():
                    if row["profile_id"] == old:
                        row["profile_id"] = pid
            b.notes[pid] = True
            b.events.extend(res.events)

    def _retry_parked(self, conn: Any, parked: list[tuple[Record, bytes]], b: _Batch) -> None:
        """Place parked records whose purchase is now known (a POS return after its sale);
        drop those whose purchase was an anonymous sale (no identity, SPEC 2)."""
        pending = parked + [(self.parse(pl), pl) for rid, (_, pl) in list(b.parked.items())]
        anonymous = self.store.anonymous_among(
            conn,
            {
                p
                for r, _ in pending
                if (p := getattr(r, "purchase_id", None)) is not None
                and self.graph.cluster_of_purchase(p) is None
            },
        )
        progress = True
        while progress and pending:
            progress = False
            rest = []
            for r, payload in pending:
                purchase = getattr(r, "purchase_id", None)
                if purchase is not None and purchase in anonymous:
                    b.parked.pop(r.record_id, None)  # the return of an anonymous sale
                    b.unparked.append(r.record_id)
                    self.counts["anonymous"] += 1
                    progress = True
                elif purchase is not None and self.graph.cluster_of_purchase(purchase) is not None:
                    b.parked.pop(r.record_id, None)
                    self._place(r, payload, b)
                    b.unparked.append(r.record_id)
                    progress = True
                else:
                    rest.append((r, payload))
            pending = rest
