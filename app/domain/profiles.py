"""Identity resolution and member states wired together, in one process.

This is the reference for what the stream topology does per record (and what the tests
and the benchmark drive): resolve the record's cluster, move the states of clusters that
merged or were renamed into the cluster's state (refold of the union), then add the record.
The topology splits the same steps across agents and tables; the domain stays the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from app.domain.events import LoyaltyEvent
from app.domain.identity import IdentityGraph
from app.domain.program import CompiledProgram
from app.domain.records import AnonymousRecord, Record
from app.domain.state import MemberState


class Profiles:
    """All clusters and their member states."""

    __slots__ = ("graph", "program", "states")

    def __init__(self, program: CompiledProgram) -> None:
        self.program = program
        self.graph = IdentityGraph(program)
        self.states: dict[str, MemberState] = {}

    def ingest(self, r: Record) -> list[LoyaltyEvent]:
        """Resolve and apply one record; raises ``InvalidRecord`` for the DLQ. An anonymous
        record (no identity) belongs to no profile: nothing happens."""
        try:
            res = self.graph.add(r)
        except AnonymousRecord:
            return []
        events = list(res.events)
        cid = res.cluster_id
        if res.previous_ids:
            parts = [self.states.pop(p) for p in res.previous_ids if p in self.states]
            current = self.states.get(cid)
            if current is not None:
                parts.append(current)
            merged, new_events = MemberState.merged(self.program, cid, parts)
            self.states[cid] = merged
            events.extend(new_events)
        state = self.states.get(cid)
        if state is None:
            state = self.states[cid] = MemberState(self.program, cid)
        events.extend(state.add(r))
        return events

    def ingest_all(self, records: Iterable[Record]) -> list[LoyaltyEvent]:
        out: list[LoyaltyEvent] = []
        for r in records:
            out.extend(self.ingest(r))
        return out

    def advance_to(self, at: datetime) -> list[LoyaltyEvent]:
        """The clock tick: time-driven effects of every profile up to ``at``."""
        out: list[LoyaltyEvent] = []
        for cid in sorted(self.states):
            out.extend(self.states[cid].advance_to(at))
        return out

    def export(self, as_of: datetime | None = None) -> list[dict[str, Any]]:
        """One snapshot per profile, ordered by profile id."""
        return [self.states[cid].snapshot(as_of) for cid in sorted(self.states)]
