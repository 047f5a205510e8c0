"""Mapping YAML: pydantic models, loading, and validation with key-path errors.

One file per source (``connectors/mappings/<source>.yaml``). The rule language is
documented in ``docs/canonical-events.md`` ("Mapping YAML").
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "cdp.events.schema.json"
IdentifierType = Literal["member_no", "card_no", "customer_id", "user_id", "email", "phone"]
Conversion = Literal["string", "int", "bool", "present", "timestamp", "cents", "currency", "raw"]
COMMON_DATA_FIELDS = frozenset({"record_id", "source", "table", "pk", "occurred_at", "identifiers"})
_NAME = r"^[A-Za-z_][A-Za-z0-9_$]*$"
TEMPLATE_RE = re.compile(r"\{([^{}:]+)(?::([a-z]+))?\}")
Scalar = str | int | bool


class MappingConfigError(ValueError):
    """A mapping file that does not validate; ``errors`` are ``path.to.key: message`` lines."""

    def __init__(self, path: str | Path, errors: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(errors))
        self.path = str(path)
        self.errors = errors


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ValueSpec(_Strict):
    """How one value is read from the row. A bare string is shorthand for ``{column: X}``.

    Exactly one source: ``column`` (after image), ``const``, ``template``
    (``"web:{order_id}#{refunded_amount:cents}"``), ``delta`` (after − before of an amount
    column, in cents; a missing before image counts as 0), ``digest`` (a short sha256 of
    columns' values, each ``column`` or ``column:conversion``: a content version without
    PII) or ``object`` (nested fields).
    """

    column: str | None = Field(default=None, pattern=_NAME)
    const: Scalar | None = None
    template: str | None = None
    delta: str | None = Field(default=None, pattern=_NAME)
    digest: list[str] | None = Field(default=None, min_length=1)
    object_: dict[str, ValueSpec] | None = Field(default=None, alias="object", min_length=1)
    as_: Conversion = Field(default="string", alias="as")
    default: Scalar | None = None
    if_null: Literal["error", "keep", "omit"] = "error"
    min: int | None = None
    one_of: list[Scalar] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"column": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> ValueSpec:
        given = [
            k
            for k in ("column", "const", "template", "delta", "digest", "object")
            if (k if k != "object" else "object_") in self.model_fields_set
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of column, const, template, delta, digest, object"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.template is not None:
            if not TEMPLATE_RE.search(self.template):
                raise ValueError("template has no {column} placeholder")
            for m in TEMPLATE_RE.finditer(self.template):
                if not re.match(_NAME, m.group(1)):
                    raise ValueError(f"bad column name {m.group(1)!r} in template")
                if m.group(2) not in (None, "string", "int", "cents", "timestamp"):
                    raise ValueError(f"unknown conversion {m.group(2)!r} in template")
        for entry in self.digest or ():
            name, _, conv = entry.partition(":")
            if not re.match(_NAME, name):
                raise ValueError(f"bad column name {name!r} in digest")
            if conv not in ("", "string", "int", "cents", "timestamp", "bool"):
                raise ValueError(f"unknown conversion {conv!r} in digest")
        if self.min is not None and self.as_ not in ("int", "cents"):
            raise ValueError("min applies only with as: int or as: cents")
        return self


class Trigger(_Strict):
    """One condition on a row change. ``insert`` matches op ``c`` and snapshot reads ``r``."""

    on: Literal["insert", "update"] | None = None
    change_of: list[ValueSpec] | None = Field(default=None, min_length=1)
    becomes: dict[str, list[Scalar]] | None = Field(default=None, min_length=1)
    becomes_not_null: str | None = Field(default=None, pattern=_NAME)
    increase_of: str | None = Field(default=None, pattern=_NAME)

    @field_validator("becomes", mode="before")
    @classmethod
    def _listify(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        if len(self.model_fields_set) != 1:
            raise ValueError(
                "a trigger is insert, update, or one of change_of, becomes, "
                "becomes_not_null, increase_of"
            )
        return self


class EventRule(_Strict):
    type: str
    when: list[Trigger] = Field(min_length=1)
    time: str = Field(pattern=r"^([A-Za-z_][A-Za-z0-9_$]*|\$commit)$")
    version: ValueSpec | None = None
    identifiers: dict[IdentifierType, ValueSpec] = Field(default_factory=dict)
    fields: dict[str, ValueSpec] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        full = value if value.startswith("cdp.") else f"cdp.{value}"
        if full not in canonical_types():
            raise ValueError(
                f"unknown canonical type {value!r}; one of {sorted(canonical_types())}"
            )
        return full

    @field_validator("when", mode="before")
    @classmethod
    def _when_list(cls, data: Any) -> Any:
        items = data if isinstance(data, list) else [data]
        return [{"on": x} if isinstance(x, str) else x for x in items]

    @model_validator(mode="after")
    def _fields_match_type(self) -> EventRule:
        props, required = canonical_types()[self.type]
        extra = set(props) - COMMON_DATA_FIELDS
        unknown = sorted(set(self.fields) - extra)
        missing = sorted((set(required) - COMMON_DATA_FIELDS) - set(self.fields))
        problems = []
        if unknown:
            problems.append(f"fields not in {self.type}: {', '.join(unknown)}")
        if missing:
            problems.append(f"fields required by {self.type} missing: {', '.join(missing)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TableMapping(_Strict):
    pk: list[str] = Field(min_length=1)
    schema_: str | None = Field(default=None, alias="schema", pattern=_NAME)
    events: list[EventRule] = Field(default_factory=list)

    @field_validator("pk", mode="before")
    @classmethod
    def _pk_list(cls, data: Any) -> Any:
        return [data] if isinstance(data, str) else data


class MappingFile(_Strict):
    source: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    topic_prefix: str | None = None
    schema_: str = Field(default="public", alias="schema", pattern=_NAME)
    tables: dict[str, TableMapping] = Field(min_length=1)

    @property
    def prefix(self) -> str:
        return self.topic_prefix or self.source

    def topic(self, table: str) -> str:
        """Debezium topic of ``table``: ``<topic.prefix>.<schema>.<table>``."""
        return f"{self.prefix}.{self.tables[table].schema_ or self.schema_}.{table}"


@cache
def canonical_types() -> dict[str, tuple[dict[str, Any], list[str]]]:
    """``type -> (data properties, required data fields)`` from the JSON Schema."""
    schema = json.loads(SCHEMA_PATH.read_bytes())
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name in schema["properties"]["type"]["enum"]:
        d = schema["$defs"][name.removeprefix("cdp.")]
        out[name] = (d["properties"], d["required"])
    return out


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top)"


def _parse(path: Path) -> tuple[MappingFile | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [f"(file): cannot read {path}: {exc.strerror or exc}"]
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        return None, [f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(raw, dict):
        return None, ["(top): expected a mapping with source and tables"]
    raw.setdefault("source", path.stem)
    try:
        return MappingFile.model_validate(raw), []
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = err["loc"]
            if loc and loc[-1] == "[key]":  # a bad dict key: name it, not pydantic's marker
                loc, msg = loc[:-1], f"bad key: {msg}"
            errors.append(f"{_key_path(loc)}: {msg}")
        return None, errors


def validate_mapping_file(path: str | Path) -> list[str]:
    """Validate one mapping YAML; returns ``path.to.key: message`` lines (empty = valid)."""
    return _parse(Path(path))[1]


def load_mapping_file(path: str | Path) -> MappingFile:
    """Load and validate one mapping YAML or raise :class:`MappingConfigError`."""
    mapping, errors = _parse(Path(path))
    if mapping is None:
        raise MappingConfigError(path, errors)
    return mapping


def validate_mapping_dir(directory: str | Path) -> list[str]:
    """Validate every mapping YAML of a directory; ``<file>: path.to.key: message`` lines."""
    try:
        load_mapping_dir(directory)
    except MappingConfigError as exc:
        return exc.errors
    except OSError as exc:
        return [f"(dir): cannot read {directory}: {exc.strerror or exc}"]
    return []


def load_mapping_dir(directory: str | Path) -> list[MappingFile]:
    """All ``*.yaml`` / ``*.yml`` files of a directory, sorted by name; errors are collected."""
    files = sorted(p for p in Path(directory).iterdir() if p.suffix in (".yaml", ".yml"))
    mappings: list[MappingFile] = []
    errors: list[str] = []
    for p in files:
        mapping, errs = _parse(p)
        errors.extend(f"{p.name}: {e}" for e in errs)
        if mapping is not None:
            mappings.append(mapping)
    if errors:
        raise MappingConfigError(directory, errors)
    if not mappings:
        raise MappingConfigError(directory, ["(dir): no mapping YAML files"])
    sources = [m.source for m in mappings]
    dupes = sorted({s for s in sources if sources.count(s) > 1})
    if dupes:
        raise MappingConfigError(directory, [f"source: defined twice: {', '.join(dupes)}"])
    return mappings
