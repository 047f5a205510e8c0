"""Canonical records (docs/canonical-events.md) as typed, frozen values.

The parser is the single gate between the JSON on ``cdp.events`` and the pure domain: after
it, amounts are non-negative integer cents, times are timezone-aware UTC datetimes and every
field the type needs is present. Anything else raises :class:`InvalidRecord` naming the
record, so the adapters can route it to ``cdp.dlq`` without a traceback in the pipeline.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from sys import intern
from typing import Any, ClassVar, NamedTuple

from app.domain.program import DEFAULT_CURRENCIES, IDENTIFIER_TYPES

CONSENT_KEYS = ("email_opt_in", "sms_consent", "admt_opt_out", "push_opt_in", "push_token")


class InvalidRecord(ValueError):
    """A canonical record the domain refuses; ``record_id`` names it for the DLQ."""

    def __init__(self, record_id: str | None, reason: str) -> None:
        self.record_id = record_id
        self.reason = reason
        super().__init__(f"{record_id or '<unknown record>'}: {reason}")


class AnonymousRecord(Exception):
    """A record with no identity (SPEC 2: a POS sale without a card), or the return or line
    of such a sale: it stays on ``cdp.events`` for consumers and belongs to no profile.
    Not an error: nothing goes to the dead-letter topic."""

    def __init__(self, record_id: str) -> None:
        super().__init__(f"{record_id}: anonymous (no identifiers)")
        self.record_id = record_id


class UnknownPurchase(InvalidRecord):
    """A refund (or line) whose purchase is not known where it must be."""


class Identifier(NamedTuple):
    """A normalized identifier. A NamedTuple (not a dataclass): it is hashed into sets and
    union-find maps for every record, and a tuple hashes and compares in C."""

    type: str
    value: str

    @property
    def key(self) -> str:
        """``type:value``, the export and union-find spelling."""
        return f"{self.type}:{self.value}"


@dataclass(frozen=True, slots=True)
class Record:
    """Fields common to every canonical record."""

    TYPE: ClassVar[str] = ""
    RANK: ClassVar[int] = 99  # SPEC 5 tie-break among records at the same occurred_at

    record_id: str
    source: str
    table: str
    pk: str
    occurred_at: datetime
    identifiers: tuple[Identifier, ...]

    def sort_key(self) -> tuple[datetime, int, str, str, str, str]:
        """Event-time fold order: time, type rank, then source, table, pk, record id."""
        return (self.occurred_at, self.RANK, self.source, self.table, self.pk, self.record_id)


@dataclass(frozen=True, slots=True)
class IdentityLinked(Record):
    TYPE: ClassVar[str] = "cdp.identity.linked"
    RANK: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class MemberEnrolled(Record):
    TYPE: ClassVar[str] = "cdp.member.enrolled"
    RANK: ClassVar[int] = 1
    member_no: str


@dataclass(frozen=True, slots=True)
class ConsentChanged(Record):
    TYPE: ClassVar[str] = "cdp.consent.changed"
    RANK: ClassVar[int] = 2
    consent: tuple[tuple[str, bool], ...]  # sorted (key, value) pairs, only keys present


@dataclass(frozen=True, slots=True)
class PurchaseCompleted(Record):
    TYPE: ClassVar[str] = "cdp.purchase.completed"
    RANK: ClassVar[int] = 3
    purchase_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True, slots=True)
class PurchaseLine(Record):
    TYPE: ClassVar[str] = "cdp.purchase.line"
    RANK: ClassVar[int] = 4
    purchase_id: str
    line_no: int
    sku: str
    qty: int
    unit_price_cents: int


@dataclass(frozen=True, slots=True)
class PurchaseRefunded(Record):
    TYPE: ClassVar[str] = "cdp.purchase.refunded"
    RANK: ClassVar[int] = 5
    refund_id: str
    purchase_id: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class PointsRedeemed(Record):
    TYPE: ClassVar[str] = "cdp.points.redeemed"
    RANK: ClassVar[int] = 6
    redemption_id: str
    points: int
    reward_code: str | None


@dataclass(frozen=True, slots=True)
class EngagementRecorded(Record):
    TYPE: ClassVar[str] = "cdp.engagement.recorded"
    RANK: ClassVar[int] = 7
    kind: str
    sku: str | None


# A record class's position here is its type tag in the stored form (app.domain.storage):
# append new types, never reorder.
RECORD_CLASSES: tuple[type[Record], ...] = (
    IdentityLinked,
    MemberEnrolled,
    ConsentChanged,
    PurchaseCompleted,
    PurchaseLine,
    PurchaseRefunded,
    PointsRedeemed,
    EngagementRecorded,
)
RECORD_TYPES: dict[str, type[Record]] = {cls.TYPE: cls for cls in RECORD_CLASSES}
ENGAGEMENT_KINDS = frozenset({"view", "add_to_cart", "referral_sent", "referral_converted"})
_DEFAULT_CURRENCIES = frozenset(DEFAULT_CURRENCIES)


def normalize_identifier(type_: str, value: str) -> str:
    """SPEC 4: email trimmed and lower-cased, phone digits only, others trimmed."""
    if type_ == "email":
        return value.strip().lower()
    if type_ == "phone":
        return "".join(ch for ch in value if ch.isdigit())
    return value.strip()


def member_no_order(value: str) -> tuple[int, int, str]:
    """Order of member numbers for "smallest member_no": numeric when all digits."""
    return (0, int(value), value) if value.isdigit() else (1, 0, value)


def smallest_member_no(
    identifiers: Iterable[Identifier], current: str | None = None
) -> str | None:
    """The smallest ``member_no`` among ``identifiers`` and ``current`` (the member id)."""
    best = current
    for i in identifiers:
        if i.type == "member_no" and i.value != best and (
            best is None or member_no_order(i.value) < member_no_order(best)
        ):
            best = i.value
    return best


def parse_time(value: Any, record_id: str | None, field: str = "occurred_at") -> datetime:
    """RFC 3339 with an offset -> aware UTC datetime. Naive or missing times are errors."""
    if not isinstance(value, str) or not value:
        raise InvalidRecord(record_id, f"{field}: missing or not a string")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord(record_id, f"{field}: not an RFC 3339 time: {value!r}") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidRecord(record_id, f"{field}: time without timezone: {value!r}")
    return dt.astimezone(UTC)


def format_time(dt: datetime) -> str:
    """Aware datetime -> RFC 3339 UTC with microseconds and ``Z`` (the contract's spelling)."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class _Fields:
    """Typed access to ``data`` that turns every problem into :class:`InvalidRecord`."""

    __slots__ = ("data", "rid")

    def __init__(self, data: Mapping[str, Any], rid: str | None) -> None:
        self.data = data
        self.rid = rid

    def text(self, key: str, *, optional: bool = False) -> Any:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise InvalidRecord(self.rid, f"{key}: missing or not a non-empty string")
        return v

    def integer(self, key: str, *, minimum: int) -> int:
        v = self.data.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidRecord(self.rid, f"{key}: missing or not an integer")
        if v < minimum:
            word = "negative" if v < 0 else f"below {minimum}"
            raise InvalidRecord(self.rid, f"{key}: {word} value {v}")
        return v


def _identifiers(raw: Any, rid: str | None) -> tuple[Identifier, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRecord(rid, "identifiers: not a list")
    out: set[Identifier] = set()
    for item in raw:
        if not isinstance(item, Mapping):
            raise InvalidRecord(rid, "identifiers: item is not an object")
        t, v = item.get("type"), item.get("value")
        if t not in IDENTIFIER_TYPES:
            raise InvalidRecord(rid, f"identifiers: unknown type {t!r}")
        if not isinstance(v, str):
            raise InvalidRecord(rid, f"identifiers: value of {t} is not a string")
        v = normalize_identifier(t, v)
        if v:
            out.add(Identifier(intern(t), v))
    return tuple(sorted(out))


def record_from_data(
    type_: str, data: Mapping[str, Any], *, currencies: Collection[str] = _DEFAULT_CURRENCIES
) -> Record:
    """Build a record from the ``data`` object of a canonical event (also the storage form)."""
    rid = data.get("record_id") if isinstance(data.get("record_id"), str) else None
    cls = RECORD_TYPES.get(type_)
    if cls is None:
        raise InvalidRecord(rid, f"type: unknown canonical type {type_!r}")
    f = _Fields(data, rid)
    common: dict[str, Any] = {
        "record_id": f.text("record_id"),
        # low-cardinality strings are interned: one object per spelling, not per record
        "source": intern(f.text("source")),
        "table": intern(f.text("table")),
        "pk": f.text("pk"),
        "occurred_at": parse_time(data.get("occurred_at"), rid),
        "identifiers": _identifiers(data.get("identifiers"), rid),
    }
    extra: dict[str, Any] = {}
    if cls is MemberEnrolled:
        member_no = normalize_identifier("member_no", f.text("member_no"))
        extra["member_no"] = member_no
        ids = set(common["identifiers"]) | {Identifier("member_no", member_no)}
        common["identifiers"] = tuple(sorted(ids))
    elif cls is ConsentChanged:
        consent = data.get("consent")
        if not isinstance(consent, Mapping) or not consent:
            raise InvalidRecord(rid, "consent: missing or empty object")
        pairs = []
        for k, v in consent.items():
            if k not in CONSENT_KEYS or not isinstance(v, bool):
                raise InvalidRecord(rid, f"consent: {k!r} is not a known boolean flag")
            pairs.append((k, v))
        extra["consent"] = tuple(sorted(pairs))
    elif cls is PurchaseCompleted:
        extra["purchase_id"] = f.text("purchase_id")
        extra["amount_cents"] = f.integer("amount_cents", minimum=0)
        currency = f.text("currency")
        if currency not in currencies:
            raise InvalidRecord(rid, f"currency: unknown currency {currency!r}")
        extra["currency"] = intern(currency)
    elif cls is PurchaseLine:
        extra["purchase_id"] = f.text("purchase_id")
        extra["line_no"] = f.integer("line_no", minimum=0)
        extra["sku"] = f.text("sku")
        extra["qty"] = f.integer("qty", minimum=0)
        extra["unit_price_cents"] = f.integer("unit_price_cents", minimum=0)
    elif cls is PurchaseRefunded:
        extra["refund_id"] = f.text("refund_id")
        extra["purchase_id"] = f.text("purchase_id")
        extra["amount_cents"] = f.integer("amount_cents", minimum=1)
    elif cls is PointsRedeemed:
        extra["redemption_id"] = f.text("redemption_id")
        extra["points"] = f.integer("points", minimum=1)
        extra["reward_code"] = f.text("reward_code", optional=True)
    elif cls is EngagementRecorded:
        kind = f.text("kind")
        if kind not in ENGAGEMENT_KINDS:
            raise InvalidRecord(rid, f"kind: unknown engagement kind {kind!r}")
        extra["kind"] = kind
        extra["sku"] = f.text("sku", optional=True)
    return cls(**common, **extra)


def record_from_cloudevent(
    event: Mapping[str, Any], *, currencies: Collection[str] = _DEFAULT_CURRENCIES
) -> Record:
    """Validate a CloudEvents 1.0 ``cdp.events`` message and return its typed record."""
    if not isinstance(event, Mapping):
        raise InvalidRecord(None, "event: not a JSON object")
    data = event.get("data")
    subject = event.get("subject") if isinstance(event.get("subject"), str) else None
    if not isinstance(data, Mapping):
        raise InvalidRecord(subject, "data: missing or not an object")
    if event.get("specversion") != "1.0":
        raise InvalidRecord(subject, "specversion: must be '1.0'")
    type_ = event.get("type")
    if not isinstance(type_, str):
        raise InvalidRecord(subject, "type: missing")
    return record_from_data(type_, data, currencies=currencies)


def record_to_data(record: Record) -> dict[str, Any]:
    """The inverse of :func:`record_from_data` (a compact, JSON-able storage form)."""
    out: dict[str, Any] = {
        "record_id": record.record_id,
        "source": record.source,
        "table": record.table,
        "pk": record.pk,
        "occurred_at": format_time(record.occurred_at),
        "identifiers": [{"type": i.type, "value": i.value} for i in record.identifiers],
    }
    if isinstance(record, ConsentChanged):
        out["consent"] = dict(record.consent)
    else:
        for name in type(record).__slots__:
            out[name] = getattr(record, name)
    return out
