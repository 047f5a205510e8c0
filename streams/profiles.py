"""Profile stage: ``cdp.resolved`` notifications -> member state, loyalty events, profiles.

Each ``cdp.resolved`` partition is owned by one worker (Kafka's group assignment, and a
per-partition advisory lock in the store as a guard against the overlap a rebalance can
leave). The owner keeps the :class:`MemberState` of its profiles in memory as a cache of the
store: a notification only says "profile P changed"; the stage reads P's records with a
higher ``seq`` than it has folded (or all of them, for a merge or a stale cache) and applies
them with the domain core, which handles late records exactly. A cached state is trusted only
while the profile's ``version`` in the store is the one this worker wrote last, so a state
changed by another worker (before a rebalance) is reloaded, never overwritten.

Per chunk of at most ``LOYALTY_CDP_PROFILE_CHUNK`` of a batch's profiles, in one transaction:
the new snapshots (``profiles`` + identifier index), retired profiles (absorbed by a merge or
renamed), refused records, and the loyalty events and guest purchase moments into the outbox
(deduplicated by id). After its commit: snapshots to ``cdp.profiles`` (compacted; tombstones
for retired profiles), the new events to ``loyalty.events`` and the new guest purchase
moments to ``cdp.guest_purchases``. The batch's input is acknowledged after its last chunk.

Guest purchases (a purchase by a profile not enrolled at the purchase's time) are the
decisioning agent's purchase moments for non-members. Every fold of a profile, incremental or
a refold, offers all of its guest purchases to the outbox, which keeps those whose canonical
event id it has not seen: like the loyalty events, a moment is written once, in the
transaction of the profile it was derived with, however often it is recomputed (a refold
after a restart, a merge or a crash before the commit derives it again), and an unpublished
one is re-published when a worker takes the partition over.

Clock: with the wall clock every batch and a once-a-second timer advance the states to now;
with the manual clock the states move only with their records and with ``clock tick``
messages, which every partition applies in order with its notifications.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.domain.events import LoyaltyEvent
from app.domain.program import CompiledProgram
from app.domain.records import (
    InvalidRecord,
    PurchaseCompleted,
    Record,
    UnknownPurchase,
    parse_time,
    record_from_cloudevent,
)
from app.domain.state import MemberState
from app.settings import worker_tuning
from streams.outbox import GUEST_PURCHASE, NewRow, Outbox, OutboxRow
from streams.parsed_records import ParsedRecords
from streams.producer import BatchProducer
from streams.store import Store
from streams.topics import DLQ, PROFILES, partition_of

__all__ = ["COUNTS", "ProfileStage", "encode_tick"]

#: the stage's counters (``/healthz``, ``/metrics``)
COUNTS = (
    "notes", "batches", "profiles_written", "events", "guest_purchases", "rejected", "busy_ms",
    "records_read", "reloads", "states_dropped",
)


#: The wall clock runs this far behind now. A state advanced to time T treats a record with
#: an earlier event time as late (exact, but a refold of the member's history); records
#: usually reach the profile stage well within a few seconds of their event time, so keeping
#: the states this far behind keeps them on the cheap in-order path. Time-driven effects
#: (expiry, downgrades, lapse risk) still fire at their exact effective times, just up to
#: this long after the wall clock passed them.
WALL_SLACK = timedelta(seconds=5)




def encode_tick(at: datetime) -> bytes:
    return orjson.dumps({"tick": at.astimezone(UTC).isoformat()})


def _wall_now() -> datetime:
    return datetime.now(UTC)


class ProfileStage:
    def __init__(
        self,
        program: CompiledProgram,
        store: Store,
        out: BatchProducer,
        outbox: Outbox,
        partitions: int,
        clock: str = "wall",
        now: Callable[[], datetime] = _wall_now,
        parsed: ParsedRecords | None = None,
        hot_limit: int | None = None,
        chunk: int | None = None,
        cold_limit: int | None = None,
    ) -> None:
        """``hot_limit``: states kept hot (history and live fold as objects); the least
        recently used beyond it are compacted to their stored form (~1.5 KB,
        ``MemberState.compact``) and restored on their next use; ``next_due``/``as_of`` stay
        readable while cold, so the wall-clock timer finds due members without restoring the
        rest. ``cold_limit``: compacted states kept; the least recently used beyond it are
        dropped altogether and read from the store again on their next use (the store's
        ``next_due`` index still finds their due effects), so the stage's memory is bounded
        whatever the number of members. ``chunk``: profiles per transaction; a batch's
        touched profiles are folded, written and published in chunks of at most this many,
        so the batch's working set (records read, loyalty events and their outbox payloads,
        the statements' array parameters, snapshots) is one chunk's (see :meth:`_run`). Defaults:
        ``LOYALTY_CDP_HOT_STATES``, ``LOYALTY_CDP_COLD_STATES`` and
        ``LOYALTY_CDP_PROFILE_CHUNK``."""
        tuning = worker_tuning()
        self.program = program
        self.chunk = tuning.profile_chunk if chunk is None else chunk
        self.parsed = parsed
        self.hot_limit = tuning.hot_states if hot_limit is None else hot_limit
        self.cold_limit = tuning.cold_states if cold_limit is None else cold_limit
        #: hot states, least recently used first (see ``hot_limit``)
        self._hot: dict[str, None] = {}
        #: compacted states, least recently compacted first (see ``cold_limit``)
        self._cold: dict[str, None] = {}
        self.store = store
        self.out = out
        self.outbox = outbox
        # rows are marked published in the next batch's first transaction, or by the timer
        # (streams/outbox.py, "Marks can be deferred"): not in a commit of their own. The
        # stage owns this outbox: it is the one that calls mark_published and flush_marks.
        outbox.defer_marks = True
        self.partitions = partitions
        self.manual = clock == "manual"
        self.now = now
        self.states: dict[str, MemberState] = {}
        self.seqs: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        self.pending: dict[str, dict[str, Record]] = {}  # refunds waiting for their purchase
        self.owned: set[int] = set()  # partitions whose takeover this worker completed
        self.assigned: set[int] = set()  # partitions the group assigned to this worker
        self.counts = dict.fromkeys(COUNTS, 0)

    def _part(self, pid: str) -> int:
        return partition_of(pid, self.partitions)

    def assign(self, partitions: Sequence[int]) -> None:
        """Partitions the group gave this worker: the wall-clock timer covers them from now
        on, even before a notification arrives (their profiles load lazily)."""
        self.assigned.update(partitions)

    def revoke(self, partitions: Sequence[int]) -> None:
        """Forget the cached states of partitions this worker no longer owns."""
        self.outbox.flush_marks()  # while the rows are still this worker's to mark
        gone = set(partitions)
        for pid in [p for p in self.states if self._part(p) in gone]:
            self._forget(pid)
        self.owned -= gone
        self.assigned -= gone

    def _forget(self, pid: str) -> None:
        self._hot.pop(pid, None)
        self._cold.pop(pid, None)
        self.states.pop(pid, None)
        self.seqs.pop(pid, None)
        self.versions.pop(pid, None)
        self.pending.pop(pid, None)

    # -- entry points (blocking; the worker runs them on one executor thread) -----------

    def process(self, notes: Sequence[tuple[int, bytes]]) -> None:
        started = time.perf_counter()
        try:
            self._process(notes)
        finally:
            self.counts["busy_ms"] += int((time.perf_counter() - started) * 1000)

    def _process(self, notes: Sequence[tuple[int, bytes]]) -> None:
        touched: dict[str, bool] = {}
        ticks: dict[int, datetime] = {}
        for partition, value in notes:
            msg = orjson.loads(value)
            if "tick" in msg:
                at = parse_time(msg["tick"], None, "tick")
                ticks[partition] = max(at, ticks.get(partition, at))
            else:
                touched[msg["p"]] = touched.get(msg["p"], False) or bool(msg.get("refold"))
        self.counts["notes"] += len(notes)
        self.counts["batches"] += 1
        parts = sorted({self._part(p) for p in touched} | set(ticks))
        self._run(parts, touched, ticks, advance_all=bool(ticks))

    def advance_wall_clock(self) -> None:
        """The once-a-second timer: time-driven effects of every owned profile up to now
        (wall clock), and the marks of rows published by the last batch if none followed."""
        if not self.manual and (self.owned or self.assigned):
            # (its first transaction marks the last batch's rows too)
            self._run(sorted(self.owned | self.assigned), {}, {}, advance_all=True)
        else:
            self.outbox.flush_marks()

    # -- the transaction ----------------------------------------------------------------

    def _run(
        self,
        parts: list[int],
        touched: dict[str, bool],
        ticks: dict[int, datetime],
        advance_all: bool,
    ) -> None:
        """Apply ``touched`` profiles (and ``ticks``, the timer's due effects) in chunks of at
        most ``self.chunk`` profiles, each chunk its own transaction and publication.

        Profiles are independent (a notification only says "read P again"; a merge's two
        sides are two notifications), so a chunk commits and publishes like a batch of its
        own and the working set of a batch is one chunk's. The first transaction locks every
        partition of the batch and collects what a tick or the timer adds to ``touched``; a
        tick's clock row is written in the *last* transaction, so ``clock tick`` sees the
        partition done only when all of its profiles are. A crash between chunks leaves
        committed chunks that a redelivery finds current (versions match) and the rest
        undone: input offsets are acknowledged only when the whole batch returns.
        """
        fresh = [p for p in parts if p not in self.owned]
        if fresh:
            self.outbox.reconcile(fresh)
        with self.store.tx() as conn:
            self.store.partition_locks(conn, parts)
            marked = self.outbox.mark_published(conn)  # the previous batch's rows
            target = self._collect(conn, parts, touched, ticks, advance_all)
            # by partition: a chunk locks few partitions
            order = sorted(touched, key=lambda pid: (self._part(pid), pid))
            n = max(1, self.chunk)
            chunks = [order[i : i + n] for i in range(0, len(order), n)] or [[]]
            done = self._chunk(
                conn, chunks[0], touched, ticks, advance_all, target, last=len(chunks) == 1
            )
        self.outbox.marks_committed(marked)
        self._committed(*done)
        for i, chunk in enumerate(chunks[1:], 2):
            last = i == len(chunks)
            with self.store.tx() as conn:
                locks = {self._part(pid) for pid in chunk} | (set(ticks) if last else set())
                self.store.partition_locks(conn, locks)
                done = self._chunk(conn, chunk, touched, ticks, advance_all, target, last=last)
            self._committed(*done)
        self.owned.update(fresh)

    def _collect(
        self,
        conn: Any,
        parts: list[int],
        touched: dict[str, bool],
        ticks: dict[int, datetime],
        advance_all: bool,
    ) -> datetime | None:
        """Add what ``ticks`` and due effects reach to ``touched``; returns the time to
        advance the states to (None: the manual clock has never ticked)."""
        if ticks:
            # A tick must reach every profile of its partitions, including any another
            # worker created while it owned the partition (the store, not this worker's
            # cache, says which profiles exist).
            for pid in self.store.profile_ids(conn):
                if self._part(pid) in ticks:
                    touched.setdefault(pid, False)
        if self.manual:
            # the clock as it will be once this batch's ticks are written (last chunk)
            clock = self.store.clock(conn)
            target = max([*ticks.values(), *([clock] if clock is not None else [])], default=None)
        else:
            target = self.now() - WALL_SLACK
        if advance_all and target is not None:
            # Profiles load lazily (a partition taken over loads nothing up front): the
            # store's next_due index says which ones have an effect due.
            for pid in self.store.due_profiles(conn, target):
                if self._part(pid) in parts:
                    touched.setdefault(pid, False)
        # Cached states a tick or a due effect will write go through the same version
        # check as notified ones: a profile erased or changed elsewhere meanwhile is
        # reloaded (or retired), never re-saved from a stale cache. Only partitions this
        # batch holds the lock of are written.
        # (A plain notification batch has neither: no scan of every cached state.)
        if ticks or advance_all:
            locked = set(parts)
            for pid, st in self.states.items():
                part = self._part(pid)
                if part in ticks or (
                    advance_all and target is not None and part in locked and st.next_due <= target
                ):
                    touched.setdefault(pid, False)
        return target

    def _chunk(
        self,
        conn: Any,
        pids: list[str],
        touched: dict[str, bool],
        ticks: dict[int, datetime],
        advance_all: bool,
        target: datetime | None,
        last: bool,
    ) -> tuple[
        dict[str, dict[str, Any]],
        dict[str, int],
        list[str],
        set[str],
        list[tuple[Record, str]],
        list[OutboxRow],
        list[OutboxRow],
    ]:
        """One chunk's transaction: fold, advance, write; returns what to do after commit."""
        events: list[LoyaltyEvent] = []
        guests: list[NewRow] = []
        rejected: list[tuple[Record, str]] = []
        mine = {pid: touched[pid] for pid in pids}
        changed, gone, db_versions = self._refresh(conn, mine, events, guests, rejected)
        # A tick re-snapshots every profile of its partitions (their as_of moves to the
        # tick; _collect put every cached one in ``touched``); the wall-clock timer writes
        # only profiles that an effect changed.
        if ticks:
            changed |= {pid for pid in mine if pid in self.states and self._part(pid) in ticks}
        candidates: set[str] = set()
        if target is not None:
            # every state due in a locked partition was put in ``touched`` by _collect
            candidates = (
                {pid for pid in mine if pid in self.states} | changed if advance_all else changed
            )
            for pid in candidates:
                st = self.states[pid]
                if st.as_of is None or target > st.as_of:
                    new = st.advance_to(target)
                    if new:
                        events.extend(new)
                        changed.add(pid)
        docs = {pid: self.states[pid].snapshot() for pid in sorted(changed)}
        versions = {pid: db_versions.get(pid, 0) + 1 for pid in docs}
        due = {pid: self.states[pid].next_due for pid in docs}
        self.store.upsert_profiles(conn, docs, versions, due)
        self.store.set_due(
            conn,
            {
                pid: st.next_due
                for pid in (mine.keys() | candidates) - changed
                if (st := self.states.get(pid)) is not None and pid in db_versions
            },
        )
        self.store.delete_profiles(conn, gone)
        self.store.reject(conn, [(r.record_id, why) for r, why in rejected])
        parts_of = {e.profile_id: self._part(e.profile_id) for e in events}
        new_events = self.outbox.add(conn, events, parts_of)
        new_guests = self.outbox.insert(conn, guests)
        if last:
            for p, at in ticks.items():
                self.store.set_clock(conn, p, at)
        return docs, versions, gone, mine.keys() | changed, rejected, new_events, new_guests

    def _committed(
        self,
        docs: dict[str, dict[str, Any]],
        versions: dict[str, int],
        gone: list[str],
        used: set[str],
        rejected: list[tuple[Record, str]],
        new_events: list[OutboxRow],
        new_guests: list[OutboxRow],
    ) -> None:
        """After a chunk's commit: the cache follows the store, then publication."""
        self.versions.update(versions)
        for pid in gone:
            self._forget(pid)
        self._keep_hot(used)
        self._publish(docs, gone, rejected)
        # one wait for the broker: the outbox's flush (before it marks its rows) also covers
        # the snapshots queued just above when, as in the worker, both share a producer
        self.outbox.publish([*new_events, *new_guests])
        self.out.flush_sync()  # (nothing left to wait for in that case)
        self.counts["profiles_written"] += len(docs)
        self.counts["events"] += len(new_events)
        self.counts["guest_purchases"] += len(new_guests)
        self.counts["rejected"] += len(rejected)

    def _keep_hot(self, used: Iterable[str]) -> None:
        """Mark ``used`` states as recently used; compact the least recent beyond the hot
        limit, and drop the least recently compacted beyond the cold limit (a dropped state
        is read from the store again, as after a restart)."""
        hot, cold = self._hot, self._cold
        for pid in used:
            st = self.states.get(pid)
            if st is not None and not st.is_cold:
                cold.pop(pid, None)
                hot.pop(pid, None)
                hot[pid] = None
        while len(hot) > self.hot_limit:
            pid = next(iter(hot))
            del hot[pid]
            st = self.states.get(pid)
            if st is not None:
                st.compact()
                cold[pid] = None
        while len(cold) > self.cold_limit:
            pid = next(iter(cold))
            st = self.states.get(pid)
            if st is None or st.is_cold:
                self._forget(pid)
                self.counts["states_dropped"] += 1
            else:  # thawed by a read since (not through ``used``): hot again
                del cold[pid]
                hot[pid] = None

    def _refresh(
        self,
        conn: Any,
        touched: dict[str, bool],
        events: list[LoyaltyEvent],
        guests: list[NewRow],
        rejected: list[tuple[Record, str]],
    ) -> tuple[set[str], list[str], dict[str, int]]:
        """Fold what changed in the store into the cached states; the guest purchases among
        the folded records go to ``guests`` (outbox rows, see the module doc)."""
        db_versions = self.store.versions(conn, touched)
        after: dict[str, int] = {}
        for pid, refold in touched.items():
            cached = pid in self.states and db_versions.get(pid, 0) == self.versions.get(pid)
            if refold or not cached:
                self.counts["reloads"] += pid in self.states or refold  # not a first load
                self._forget(pid)
                after[pid] = 0
            else:
                after[pid] = self.seqs[pid]
        changed: set[str] = set()
        gone: list[str] = []
        for pid, rows in self.store.records_of(conn, after).items():
            self.counts["records_read"] += len(rows)
            if not rows:
                if after[pid] == 0:
                    gone.append(pid)  # no records left: absorbed by a merge, or renamed
                continue
            st = self.states.get(pid)
            if st is None:
                st = self.states[pid] = MemberState(self.program, pid)
            pending = self.pending.pop(pid, None) or {}
            parsed = [(self._record(rid, p), p) for _, rid, p in rows]
            parsed.sort(key=lambda rp: rp[0].sort_key())
            for r, _ in parsed:
                self._apply(st, r, pending, events, rejected)
            self._retry(st, pending, events, rejected)
            if pending:  # kept only while a refund waits (an empty dict is 64 bytes a profile)
                self.pending[pid] = pending
            enrolled = st.fold.enrolled_at
            guests.extend(
                self._guest_purchase(pid, p)
                for r, p in parsed
                if isinstance(r, PurchaseCompleted)
                and (enrolled is None or r.occurred_at < enrolled)
            )
            self.seqs[pid] = rows[-1][0]
            changed.add(pid)
        return changed, gone, db_versions

    def _guest_purchase(self, pid: str, payload: bytes) -> NewRow:
        """The outbox row of a guest purchase moment: the canonical purchase CloudEvent as
        stored, under its own id (what reconciliation finds on the topic), keyed by profile."""
        return NewRow(
            orjson.loads(payload)["id"], self._part(pid), pid, GUEST_PURCHASE, pid, payload
        )

    def _record(self, record_id: str, payload: bytes) -> Record:
        """The record as the identity stage of this worker parsed it, else parsed here."""
        r = self.parsed.take(record_id) if self.parsed is not None else None
        if r is None:
            r = record_from_cloudevent(orjson.loads(payload), currencies=self.program.currencies)
        return r

    @staticmethod
    def _apply(
        st: MemberState,
        r: Record,
        pending: dict[str, Record],
        events: list[LoyaltyEvent],
        rejected: list[tuple[Record, str]],
    ) -> bool:
        try:
            events.extend(st.add(r))
            return True
        except UnknownPurchase:
            pending[r.record_id] = r  # its purchase has not arrived yet
        except InvalidRecord as exc:
            rejected.append((r, exc.reason))
        return False

    def _retry(
        self,
        st: MemberState,
        pending: dict[str, Record],
        events: list[LoyaltyEvent],
        rejected: list[tuple[Record, str]],
    ) -> None:
        progress = True
        while pending and progress:
            progress = False
            for rid, r in sorted(pending.items(), key=lambda kv: kv[1].sort_key()):
                del pending[rid]
                if self._apply(st, r, pending, events, rejected):
                    progress = True

    def _publish(
        self, docs: dict[str, dict[str, Any]], gone: list[str], rejected: list[tuple[Record, str]]
    ) -> None:
        """Queue the snapshots, tombstones and dead letters (the caller waits for them)."""
        for pid, doc in docs.items():
            self.out.send(PROFILES, orjson.dumps({"profile_id": pid, **doc}), pid.encode())
        for pid in gone:
            self.out.send(PROFILES, None, pid.encode())
        for r, why in rejected:
            self.out.send(
                DLQ,
                orjson.dumps({"record_id": r.record_id, "type": r.TYPE}),
                r.record_id.encode(),
                [
                    ("dlq.reason", why.encode()),
                    ("dlq.code", b"rejected_record"),
                    ("dlq.topic", b"cdp.events"),
                ],
            )
