"""The pipeline computed offline, without the stack: simulator rows -> Debezium change
events -> the pure mapping layer -> canonical records -> the domain core's fold.

The reference the end-to-end tests compare the real pipeline with
(``tests/integration/test_profiles_pipeline.py``), and a fast source of realistic loyalty
events and profile snapshots for the schema tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from app.domain.events import LoyaltyEvent
from app.domain.profiles import Profiles
from app.domain.program import CompiledProgram
from app.domain.records import InvalidRecord, PurchaseLine, Record, record_from_cloudevent
from app.mapping.engine import Mapper
from app.simulate import Traffic

__all__ = ["Folded", "fold", "map_traffic", "records_of"]


def _debezium_value(v: Any) -> Any:
    """A column value as Debezium's JsonConverter writes it (decimal.handling.mode=string)."""
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(v, Decimal):
        return str(v)
    return v


def map_traffic(mapper: Mapper, traffics: Iterable[Traffic]) -> dict[str, dict[str, Any]]:
    """Canonical events (id -> CloudEvent) of the traffics' row changes, in write order.

    Each change becomes the event Debezium would capture: the row image after it and, for
    an update, the previous image as ``before`` (the sources are ``REPLICA IDENTITY FULL``).
    """
    out: dict[str, dict[str, Any]] = {}
    for traffic in traffics:
        images: dict[tuple[str, str, tuple[Any, ...]], dict[str, Any]] = {}
        for op in traffic.ops:
            after = {k: _debezium_value(v) for k, v in op.row.items()}
            ident = (op.source, op.table, op.key)
            before = images.get(ident) if op.action == "update" else None
            images[ident] = after
            ts_ms = int(op.at.timestamp() * 1000)
            doc = {
                "before": before,
                "after": after,
                "source": {
                    "connector": "postgresql",
                    "ts_ms": ts_ms,
                    "db": op.source,
                    "schema": "public",
                    "table": op.table,
                },
                "op": "u" if op.action == "update" else "c",
                "ts_ms": ts_ms,
            }
            for ev in mapper.map(f"{op.source}.public.{op.table}", orjson.dumps(doc)):
                # Same id, first version kept: what every consumer that drops duplicates by
                # id does (the identity stage inserts records ON CONFLICT DO NOTHING). Ids do
                # collide when a row changes twice within one updated_at (the simulator
                # creates some web customers / app users and enrolls them in the same
                # second); the pipeline, too, sees the first version first (one partition).
                out.setdefault(ev.id, ev.event)
    return out


def records_of(program: CompiledProgram, events: dict[str, dict[str, Any]]) -> list[Record]:
    """The records the identity stage keeps (purchase lines are skipped), in fold order."""
    records = (record_from_cloudevent(ev, currencies=program.currencies) for ev in events.values())
    return sorted(
        (rec for rec in records if not isinstance(rec, PurchaseLine)),
        key=lambda rec: rec.sort_key(),
    )


@dataclass
class Folded:
    profiles: dict[str, dict[str, Any]]  # profile id -> export document at ``until``
    events: list[LoyaltyEvent]  # what the offline fold emitted, in its (event-time) order
    core: Profiles
    until: datetime

    def final_event_ids(self) -> set[str]:
        """Ids of the events of every profile's final fold (its whole history, to ``until``).

        The pipeline must have published each of them, whatever the arrival order: a late
        or merged record refolds and emits the new fold's events its earlier folds lacked,
        and ids do not depend on when (or under which profile id) a moment was computed.
        """
        return {
            e.id for st in self.core.states.values() for e in st.refold(self.until).take_events()
        }


def fold(program: CompiledProgram, records: Iterable[Record], until: datetime) -> Folded:
    """The domain core's fold of ``records`` (in fold order), advanced to ``until``."""
    core = Profiles(program)
    events: list[LoyaltyEvent] = []
    for rec in records:
        # a record the domain refuses is refused by the pipeline too (rejected_records)
        with contextlib.suppress(InvalidRecord):
            events.extend(core.ingest(rec))
    events.extend(core.advance_to(until))
    profiles = {pid: core.states[pid].snapshot() for pid in sorted(core.states)}
    return Folded(profiles, events, core, until)
