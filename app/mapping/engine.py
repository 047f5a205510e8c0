"""The mapping engine: Debezium change event (bytes) -> canonical CloudEvents.

Pure: no Kafka, no database. Rules are compiled into closures once at load time
(:meth:`Mapper.from_dir`), so mapping one change is a dict lookup, an ``orjson.loads`` and a
few function calls per rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson

from app.domain.records import normalize_identifier
from app.mapping.cloudevents import CanonicalEvent, envelope, event_id, record_key
from app.mapping.config import (
    TEMPLATE_RE,
    EventRule,
    MappingFile,
    Trigger,
    ValueSpec,
    canonical_types,
    load_mapping_dir,
)
from app.mapping.convert import (
    CONVERTERS,
    epoch_ms_to_timestamp,
    to_cents,
    to_present,
    to_string,
    to_timestamp,
)
from app.mapping.errors import MappingError

Row = dict[str, Any]
Getter = Callable[[Row, Row | None], Any]
Predicate = Callable[[str, Row, Row | None], bool]

#: Returned by a getter whose value is null with ``if_null: omit``.
OMIT: Any = object()
#: ``time: $commit``: the source transaction's commit time (Debezium ``source.ts_ms``).
COMMIT_TIME = "$commit"
_CREATE_OPS = frozenset({"c", "r"})
_IGNORED_OPS = frozenset({"d", "t", "m"})  # delete, truncate, logical message


def _missing(column: str) -> MappingError:
    return MappingError(f"missing column {column!r} in row image", code="missing_column")


def _null(column: str) -> MappingError:
    return MappingError(f"column {column!r} is null", code="missing_column")


def _no_before(what: str) -> MappingError:
    return MappingError(
        f"update without before image ({what} needs it; set REPLICA IDENTITY FULL)",
        code="bad_envelope",
    )


def _column_value(row: Row, column: str) -> Any:
    try:
        return row[column]
    except KeyError:
        raise _missing(column) from None


# --------------------------------------------------------------------------- value getters


def compile_value(spec: ValueSpec) -> Getter:
    """Compile a :class:`ValueSpec` into ``get(after, before) -> value`` (may be :data:`OMIT`)."""
    conv = CONVERTERS[spec.as_]
    if spec.column is not None:
        return _compile_column(spec, spec.column, conv)
    if spec.object_ is not None:
        items = [(name, compile_value(sub)) for name, sub in spec.object_.items()]
        empty_is_omit = spec.if_null == "omit"

        def get_object(after: Row, before: Row | None) -> Any:
            out = {}
            for name, get in items:
                v = get(after, before)
                if v is not OMIT:
                    out[name] = v
            return OMIT if empty_is_omit and not out else out

        return get_object
    if spec.template is not None:
        return _compile_template(spec.template)
    if spec.delta is not None:
        return _compile_delta(spec.delta)
    if spec.digest is not None:
        # "column" or "column:converter" (e.g. "updated_at:timestamp"): converted values make
        # the digest independent of how a value is spelled (timestamp formats).
        cols = [
            (name, CONVERTERS[conv] if conv else None)
            for name, _, conv in (c.partition(":") for c in spec.digest)
        ]

        def get_digest(after: Row, before: Row | None) -> str:
            vals = []
            for name, conv in cols:
                v = _column_value(after, name)
                vals.append(v if conv is None or v is None else conv(v, name))
            return sha256(orjson.dumps(vals)).hexdigest()[:16]

        return get_digest
    const = spec.const

    def get_const(after: Row, before: Row | None) -> Any:
        return const

    return get_const


def _compile_column(spec: ValueSpec, col: str, conv: Callable[[Any, str], Any]) -> Getter:
    if_null = spec.if_null
    default = None if spec.default is None else conv(spec.default, f"{col} (default)")
    minimum = spec.min
    allowed = frozenset(spec.one_of) if spec.one_of is not None else None

    if conv is to_present:  # null means "absent": never an error, never omitted

        def get_presence(after: Row, before: Row | None) -> Any:
            return to_present(_column_value(after, col), col)

        return get_presence

    def get_column(after: Row, before: Row | None) -> Any:
        try:
            v = after[col]
        except KeyError:
            raise _missing(col) from None
        if v is None:
            if default is not None:
                return default
            if if_null == "keep":
                return None
            if if_null == "omit":
                return OMIT
            raise _null(col)
        v = conv(v, col)
        if minimum is not None and v < minimum:
            raise MappingError(f"column {col!r}: {v} is below the minimum {minimum}")
        if allowed is not None and v not in allowed:
            raise MappingError(f"column {col!r}: unexpected value {v!r:.40}")
        return v

    return get_column


def _compile_template(template: str) -> Getter:
    parts: list[str | tuple[str, Callable[[Any, str], Any]]] = []
    pos = 0
    for m in TEMPLATE_RE.finditer(template):
        if m.start() > pos:
            parts.append(template[pos : m.start()])
        parts.append((m.group(1), CONVERTERS[m.group(2) or "string"]))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])

    def get_template(after: Row, before: Row | None) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            col, conv = part
            v = _column_value(after, col)
            if v is None:
                raise _null(col)
            out.append(str(conv(v, col)))
        return "".join(out)

    return get_template


def _cents_or_zero(row: Row | None, col: str) -> int:
    if row is None:
        return 0
    v = _column_value(row, col)
    return 0 if v is None else to_cents(v, col)


def _compile_delta(col: str) -> Getter:
    def get_delta(after: Row, before: Row | None) -> int:
        return _cents_or_zero(after, col) - _cents_or_zero(before, col)

    return get_delta


# --------------------------------------------------------------------------- triggers


def compile_trigger(trigger: Trigger) -> Predicate:
    """Compile a trigger into ``fires(op, after, before) -> bool`` (op is c, r or u)."""
    if trigger.on == "insert":
        return lambda op, after, before: op in _CREATE_OPS
    if trigger.on == "update":
        return lambda op, after, before: op == "u"
    if trigger.change_of is not None:
        return _compile_change_of(trigger.change_of)
    if trigger.becomes is not None:
        return _compile_becomes({k: frozenset(v) for k, v in trigger.becomes.items()})
    if trigger.becomes_not_null is not None:
        return _compile_becomes_not_null(trigger.becomes_not_null)
    assert trigger.increase_of is not None
    return _compile_increase_of(trigger.increase_of)


def _compile_change_of(specs: Iterable[ValueSpec]) -> Predicate:
    raw_cols = tuple(s.column for s in specs if s.column is not None and s.as_ == "string")
    converted = [
        compile_value(s.model_copy(update={"if_null": "keep"}))
        for s in specs
        if s.column is None or s.as_ != "string"
    ]

    def fires(op: str, after: Row, before: Row | None) -> bool:
        if op != "u":
            return False
        if before is None:
            raise _no_before("change_of")
        for col in raw_cols:
            if _column_value(after, col) != before.get(col):
                return True
        return any(get(after, None) != get(before, None) for get in converted)

    return fires


def _compile_becomes(conditions: dict[str, frozenset[Any]]) -> Predicate:
    items = tuple(conditions.items())

    def matches(row: Row) -> bool:
        return all(_column_value(row, col) in allowed for col, allowed in items)

    def fires(op: str, after: Row, before: Row | None) -> bool:
        if op == "u":
            if before is None:
                raise _no_before("becomes")
            return matches(after) and not matches(before)
        return matches(after)

    return fires


def _compile_becomes_not_null(col: str) -> Predicate:
    def fires(op: str, after: Row, before: Row | None) -> bool:
        if _column_value(after, col) in (None, ""):
            return False
        if op == "u":
            if before is None:
                raise _no_before("becomes_not_null")
            return before.get(col) in (None, "")
        return True

    return fires


def _compile_increase_of(col: str) -> Predicate:
    def fires(op: str, after: Row, before: Row | None) -> bool:
        if op == "u" and before is None:
            raise _no_before("increase_of")
        return _cents_or_zero(after, col) > _cents_or_zero(before, col)

    return fires


# --------------------------------------------------------------------------- rules and tables


@dataclass(slots=True)
class CompiledRule:
    type: str
    fires: tuple[Predicate, ...]
    time: str
    version: Getter | None
    identifiers: tuple[tuple[str, Getter], ...]
    fields: tuple[tuple[str, Getter, bool], ...]  # name, getter, required by the type

    @classmethod
    def compile(cls, rule: EventRule) -> CompiledRule:
        required = set(canonical_types()[rule.type][1])
        return cls(
            type=rule.type,
            fires=tuple(compile_trigger(t) for t in rule.when),
            time=rule.time,
            version=compile_value(rule.version) if rule.version is not None else None,
            identifiers=tuple(
                (kind, compile_value(spec.model_copy(update={"if_null": "omit", "as_": "string"})))
                for kind, spec in rule.identifiers.items()
            ),
            fields=tuple(
                (name, compile_value(spec), name in required) for name, spec in rule.fields.items()
            ),
        )


@dataclass(slots=True)
class CompiledTable:
    source: str
    table: str
    topic: str
    pk: tuple[str, ...]
    rules: tuple[CompiledRule, ...]


def _pk_value(row: Row, pk: tuple[str, ...]) -> str:
    parts = []
    for col in pk:
        v = _column_value(row, col)
        if v is None:
            raise _null(col)
        parts.append(to_string(v, col))
    return parts[0] if len(parts) == 1 else "/".join(parts)


def _commit_time(doc: dict[str, Any]) -> str:
    src = doc.get("source")
    ms = src.get("ts_ms") if type(src) is dict else None
    if ms is None:
        ms = doc.get("ts_ms")
    if ms is None:
        raise MappingError("no source.ts_ms for time: $commit", code="missing_column")
    return epoch_ms_to_timestamp(ms, "source.ts_ms")


class Mapper:
    """Maps Debezium change events of the configured tables to canonical events."""

    __slots__ = ("_tables", "mappings")

    def __init__(self, mappings: Iterable[MappingFile]) -> None:
        self.mappings = list(mappings)
        self._tables: dict[str, CompiledTable] = {}
        for m in self.mappings:
            for table, tm in m.tables.items():
                topic = m.topic(table)
                if topic in self._tables:
                    raise ValueError(f"topic {topic} mapped twice")
                self._tables[topic] = CompiledTable(
                    source=m.source,
                    table=table,
                    topic=topic,
                    pk=tuple(tm.pk),
                    rules=tuple(CompiledRule.compile(r) for r in tm.events),
                )

    @classmethod
    def from_dir(cls, directory: str | Path) -> Mapper:
        """Load every mapping YAML of ``directory`` (raises ``MappingConfigError``)."""
        return cls(load_mapping_dir(directory))

    @property
    def topics(self) -> list[str]:
        """The Debezium change topics this mapper understands (subscribe to these)."""
        return sorted(self._tables)

    def map(self, topic: str, value: bytes | None) -> list[CanonicalEvent]:
        """Map one change event (the record value, as bytes) to canonical events.

        Tombstones (``None`` / empty), deletes, truncates and rows that trigger no rule give
        ``[]``. Anything that cannot be parsed or mapped raises :class:`MappingError`
        carrying ``topic`` so the caller can dead-letter the original bytes.
        """
        if not value:
            return []
        table = self._tables.get(topic)
        if table is None:
            raise MappingError(f"no mapping for topic {topic!r}", topic, "unknown_topic")
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise MappingError(f"unparseable JSON: {exc}", topic, "bad_json") from None
        try:
            return self.map_change(table, doc)
        except MappingError as exc:
            raise exc.with_topic(topic) from None
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            # A shape no rule foresaw (an object where a scalar belongs ...): dead-letter it
            # rather than stop the pipeline.
            reason = f"unexpected {type(exc).__name__}: {exc}"[:300]
            raise MappingError(reason, topic, "type_drift") from None

    def map_change(self, table: CompiledTable, doc: Any) -> list[CanonicalEvent]:
        """Map an already decoded change event of ``table``."""
        if doc is None:
            return []
        if type(doc) is not dict:
            raise MappingError("change event is not a JSON object", code="bad_envelope")
        if "payload" in doc and "schema" in doc:  # JsonConverter with schemas.enable=true
            return self.map_change(table, doc["payload"])
        op = doc.get("op")
        if op in _IGNORED_OPS:
            return []
        if op not in ("c", "r", "u"):
            raise MappingError(f"not a Debezium change event (op={op!r:.20})", code="bad_envelope")
        after = doc.get("after")
        if type(after) is not dict:
            raise MappingError(f"op {op} without an after image", code="bad_envelope")
        before = doc.get("before")
        if before is not None and type(before) is not dict:
            raise MappingError("before image is not an object", code="bad_envelope")
        out: list[CanonicalEvent] = []
        pk: str | None = None
        for rule in table.rules:
            for fires in rule.fires:
                if fires(op, after, before):
                    break
            else:
                continue
            if pk is None:
                pk = _pk_value(after, table.pk)
            event = self._build(table, rule, pk, after, before, doc)
            if event is not None:
                out.append(event)
        return out

    @staticmethod
    def _build(
        table: CompiledTable,
        rule: CompiledRule,
        pk: str,
        after: Row,
        before: Row | None,
        doc: dict[str, Any],
    ) -> CanonicalEvent | None:
        source = table.source
        name = table.table
        if rule.time == COMMIT_TIME:
            occurred_at = _commit_time(doc)
        else:
            t = _column_value(after, rule.time)
            if t is None:
                raise _null(rule.time)
            occurred_at = to_timestamp(t, rule.time)
        version = ""
        if rule.version is not None:
            v = rule.version(after, before)
            version = "" if v is None or v is OMIT else str(v)
        key = record_key(source, name, pk)
        # One row version can yield several records (identity.linked and consent.changed of
        # the same customer update): the short type makes record_id unique on its own.
        record_id = (f"{key}#{version}" if version else key) + "@" + rule.type.removeprefix("cdp.")
        identifiers = []
        for kind, get in rule.identifiers:
            raw = get(after, before)
            if raw is OMIT:
                continue
            norm = normalize_identifier(kind, raw)
            if norm:
                identifiers.append({"type": kind, "value": norm})
        data: dict[str, Any] = {
            "record_id": record_id,
            "source": source,
            "table": name,
            "pk": pk,
            "occurred_at": occurred_at,
            "identifiers": identifiers,
        }
        for fname, get, required in rule.fields:
            val = get(after, before)
            if val is not OMIT:
                data[fname] = val
            elif required:  # ``if_null: omit`` on a required field: no event
                return None
        return CanonicalEvent(
            key,
            envelope(
                event_id(source, name, pk, version, rule.type),
                source,
                rule.type,
                record_id,
                occurred_at,
                data,
            ),
        )
