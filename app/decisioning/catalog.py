"""The offer catalog: one YAML file (``config/offers.yaml``), validated with pydantic.

Four parts (see docs/decisioning.md for the full reference):

* ``product_offers``: products we may recommend (sku, price, category, margin).
  Value = ``price_cents x margin`` (expected margin cents).
* ``loyalty_offers``: program offers of a known ``kind`` (:data:`LOYALTY_KINDS`).
  Value = the configured ``value`` (same unit: cents of expected margin).
* ``models``: named logistic models (intercept + coefficients over :data:`FEATURES`);
  every offer names one (``model: default`` unless told otherwise).
* ``contact_policy``: caps, repeat window, quiet hours, default timezone, channel order.

Every offer has ``eligibility`` (tiers, enrolled, moment types, segment predicates), a
``priority`` (the rules-only order used for ADMT opt-outs: lower first) and per-channel
``templates`` whose ``{placeholders}`` must be in :data:`PLACEHOLDERS`.

Money is integer cents; the margin is an exact decimal in ``[0, 1]`` (a YAML ``0.35``
becomes ``Decimal('0.35')``) so the value is exact.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from datetime import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.domain.events import EVENT_TYPES
from app.domain.program import DEFAULT_PROGRAM, ProgramError, load_program, read_yaml

CHANNELS: tuple[str, ...] = ("email", "sms", "push", "in_app")
OUTBOUND_CHANNELS: tuple[str, ...] = ("email", "sms", "push")
PLACEMENTS: tuple[str, ...] = ("checkout_confirmation", "cart", "home")
MOMENT_TYPES: tuple[str, ...] = (
    *EVENT_TYPES,
    "purchase",
    *(f"api:{p}" for p in PLACEMENTS),
)
LoyaltyKind = Literal[
    "double_points",
    "tier_preview",
    "referral_bonus",
    "early_access",
    "enrollment",
    "welcome",
    "win_back",
    "points_receipt",  # "this purchase earned you X points" (members, purchase/checkout)
]
LOYALTY_KINDS: tuple[str, ...] = get_args(LoyaltyKind)
#: Features of the logistic model, computed from the profile snapshot (see features.py).
FEATURES: tuple[str, ...] = (
    "recency_days",
    "purchase_count",
    "tier_rank",
    "points_balance",
    "milestone_gap_ratio",
    "tier_gap_ratio",
    "lapse_risk",
    "enrolled",
    "lifetime_spend",
)
#: Fields a segment predicate may test: the features plus scalar profile/context fields.
SEGMENT_FIELDS: tuple[str, ...] = (
    *FEATURES,
    "tier",
    "qualifying_spend_cents",
    "lifetime_spend_cents",
    "milestone_gap_points",
    "tier_gap_cents",
    "next_milestone",
    "next_tier",
)
#: Template placeholders (docs/decisioning.md describes each).
PLACEHOLDERS: tuple[str, ...] = (
    "offer_name",
    "member_id",
    "tier",
    "points_balance",
    "points",
    "points_if_enrolled",
    "next_milestone",
    "milestone_gap_points",
    "next_tier",
    "tier_gap",
    "sku",
    "product_name",
    "price",
    "category",
    "product_points",
    "multiplier",
)
TEMPLATE_LIMITS = {"sms": 320, "push": 178}  # body characters (2 SMS segments; iOS banner)

Op = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _placeholders(text: str) -> list[str]:
    """Field names of a template; values are pre-formatted strings, so no spec/conversion."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template syntax: {exc}") from exc
    for _lit, name, spec, conv in parts:
        if name is not None and (spec or conv):
            raise ValueError(f"placeholder {{{name}}} takes no format spec or conversion")
    return [name for _lit, name, _spec, _conv in parts if name is not None]


class Template(_Strict):
    """One channel's message. ``subject`` is used by email (and as the push/in_app title)."""

    subject: str | None = None
    body: str = Field(min_length=1)

    @field_validator("subject", "body")
    @classmethod
    def _known_placeholders(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for name in _placeholders(v):
            if name not in PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {{{name}}}; known: {', '.join(PLACEHOLDERS)}"
                )
        return v


class Templates(_Strict):
    email: Template | None = None
    sms: Template | None = None
    push: Template | None = None
    in_app: Template | None = None

    @model_validator(mode="after")
    def _checks(self) -> Templates:
        if not any(getattr(self, c) is not None for c in CHANNELS):
            raise ValueError("at least one channel template is required")
        if self.email is not None and not self.email.subject:
            raise ValueError("email template needs a subject")
        for ch, limit in TEMPLATE_LIMITS.items():
            t: Template | None = getattr(self, ch)
            if t is not None and len(t.body) > limit:
                raise ValueError(f"{ch} body longer than {limit} characters")
        return self

    def get(self, channel: str) -> Template | None:
        t: Template | None = getattr(self, channel)
        return t


class Predicate(_Strict):
    """``field op value``: e.g. ``{field: purchase_count, op: gte, value: 3}``."""

    field: str
    op: Op
    value: Any

    @field_validator("field")
    @classmethod
    def _field(cls, v: str) -> str:
        if v not in SEGMENT_FIELDS:
            raise ValueError(f"unknown segment field {v!r}; known: {', '.join(SEGMENT_FIELDS)}")
        return v

    @model_validator(mode="after")
    def _value(self) -> Predicate:
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list):
                raise ValueError(f"op {self.op} needs a list value")
        elif self.op in ("lt", "lte", "gt", "gte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float | Decimal)
        ):
            raise ValueError(f"op {self.op} needs a number")
        return self


class Eligibility(_Strict):
    """All given rules must hold. ``None`` = no restriction."""

    moments: list[str] = Field(min_length=1)
    enrolled: bool | None = None
    tiers: list[str] | None = None  # tier names; guests have no tier
    segment: list[Predicate] = Field(default_factory=list)

    @field_validator("moments")
    @classmethod
    def _moments(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in MOMENT_TYPES]
        if bad:
            raise ValueError(f"unknown moment types {bad}; known: {', '.join(MOMENT_TYPES)}")
        return v


class Coefficients(_Strict):
    intercept: Decimal
    coefficients: dict[str, Decimal] = Field(default_factory=dict)

    @field_validator("coefficients")
    @classmethod
    def _features(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        bad = sorted(set(v) - set(FEATURES))
        if bad:
            raise ValueError(f"unknown features {bad}; known: {', '.join(FEATURES)}")
        return v


class _Offer(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    name: str = Field(min_length=1)
    priority: int = Field(default=100, ge=0)  # rules-only order (ADMT): lower first
    model: str = "default"
    eligibility: Eligibility
    templates: Templates


class ProductOffer(_Offer):
    sku: str = Field(min_length=1)
    price_cents: int = Field(gt=0)
    category: str = Field(min_length=1)
    margin: Decimal = Field(ge=0, le=1)

    @property
    def value(self) -> Decimal:
        """Expected margin cents if accepted."""
        return self.price_cents * self.margin


class LoyaltyOffer(_Offer):
    kind: LoyaltyKind
    value: Decimal = Field(ge=0)  # expected value units (margin cents) if accepted

    @model_validator(mode="after")
    def _kind_rules(self) -> LoyaltyOffer:
        if self.kind == "enrollment" and self.eligibility.enrolled is not False:
            raise ValueError("an enrollment offer must have eligibility.enrolled: false")
        if self.kind in ("points_receipt", "welcome", "tier_preview", "early_access") and (
            self.eligibility.enrolled is not True
        ):
            raise ValueError(f"a {self.kind} offer must have eligibility.enrolled: true")
        return self


_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class QuietHours(_Strict):
    """Local-time window ``[start, end)``; may wrap midnight (21:00-08:00)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("must be HH:MM (24 h)")
        return v

    @model_validator(mode="after")
    def _nonempty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def contains(self, local: time) -> bool:
        s, e = time.fromisoformat(self.start), time.fromisoformat(self.end)
        t = local.replace(tzinfo=None)
        return s <= t < e if s < e else (t >= s or t < e)


class ChannelPolicy(_Strict):
    cap: int | None = Field(default=None, ge=0)  # sends per rolling window; None = no cap
    quiet_hours: QuietHours | None = None
    global_cap_counts: bool = True  # does a send on this channel count toward global_cap


def _default_channels() -> dict[str, ChannelPolicy]:
    quiet = QuietHours(start="21:00", end="08:00")
    return {
        "email": ChannelPolicy(cap=3),
        "sms": ChannelPolicy(cap=1, quiet_hours=quiet),
        "push": ChannelPolicy(cap=3, quiet_hours=quiet),
        "in_app": ChannelPolicy(cap=None, global_cap_counts=False),
    }


class ContactPolicy(_Strict):
    timezone: str = "America/New_York"  # member timezone when the adapter knows none
    window_days: int = Field(default=7, ge=1)  # rolling window of the caps
    global_cap: int | None = Field(default=4, ge=0)
    repeat_days: int = Field(default=30, ge=0)  # no repeat of the same offer within
    channels: dict[str, ChannelPolicy] = Field(default_factory=_default_channels)
    channel_order: list[str] = Field(default_factory=lambda: ["push", "email", "sms"])
    max_outbound_per_moment: int = Field(default=1, ge=0)
    max_in_app: int = Field(default=3, ge=0)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {v!r}") from exc
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: dict[str, ChannelPolicy]) -> dict[str, ChannelPolicy]:
        bad = sorted(set(v) - set(CHANNELS))
        if bad:
            raise ValueError(f"unknown channels {bad}; known: {', '.join(CHANNELS)}")
        return {**{c: ChannelPolicy() for c in CHANNELS}, **v}

    @field_validator("channel_order")
    @classmethod
    def _order(cls, v: list[str]) -> list[str]:
        if sorted(v) != sorted(OUTBOUND_CHANNELS):
            raise ValueError(f"must list each of {', '.join(OUTBOUND_CHANNELS)} once")
        return v


class OfferCatalog(_Strict):
    """The whole catalog file."""

    version: int = 1
    product_offers: list[ProductOffer] = Field(default_factory=list)
    loyalty_offers: list[LoyaltyOffer] = Field(default_factory=list)
    models: dict[str, Coefficients] = Field(
        default_factory=lambda: {"default": Coefficients(intercept=Decimal(-2))}
    )
    contact_policy: ContactPolicy = Field(default_factory=ContactPolicy)

    @model_validator(mode="after")
    def _refs(self) -> OfferCatalog:
        if not self.offers:
            raise ValueError("the catalog has no offers (product_offers / loyalty_offers)")
        seen: set[str] = set()
        for o in self.offers:
            if o.id in seen:
                raise ValueError(f"duplicate offer id {o.id!r}")
            seen.add(o.id)
            if o.model not in self.models:
                raise ValueError(f"offer {o.id!r}: unknown model {o.model!r}")
        skus = [p.sku for p in self.product_offers]
        dup = sorted({s for s in skus if skus.count(s) > 1})
        if dup:
            raise ValueError(f"duplicate skus {dup}")
        return self

    @property
    def offers(self) -> tuple[ProductOffer | LoyaltyOffer, ...]:
        return (*self.product_offers, *self.loyalty_offers)


class CatalogError(ProgramError):
    """A catalog that cannot be used; ``errors`` holds every ``key.path: message``."""


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def _tier_errors(raw: dict[str, Any], tier_names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for section in ("product_offers", "loyalty_offers"):
        for i, o in enumerate(raw.get(section) or []):
            tiers = ((o or {}).get("eligibility") or {}).get("tiers") or []
            for j, t in enumerate(tiers):
                if t not in tier_names:
                    out.append(
                        f"{section}.{i}.eligibility.tiers.{j}: unknown tier {t!r}; "
                        f"program tiers: {', '.join(tier_names)}"
                    )
    return out


def catalog_errors(raw: Any, tier_names: Sequence[str] | None = None) -> list[str]:
    """Every error of a parsed catalog document as ``key.path: message`` (empty = valid).

    ``tier_names`` (default: the reference program's) checks ``eligibility.tiers``.
    """
    if not isinstance(raw, dict):
        return ["(root): must be a mapping with product_offers / loyalty_offers"]
    errors: list[str] = []
    try:
        OfferCatalog.model_validate(raw)
    except ValidationError as exc:
        for e in exc.errors():
            loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            msg = e["msg"].removeprefix("Value error, ")
            errors.append(f"{_loc(loc)}: {msg}")
    names = tier_names if tier_names is not None else [t.name for t in DEFAULT_PROGRAM.tiers]
    errors.extend(_tier_errors(raw, names))
    return errors


def _sibling_tiers(path: Path) -> list[str] | None:
    """Tier names of ``program.yaml`` next to the catalog, when there is a valid one."""
    prog = path.parent / "program.yaml"
    if not prog.is_file():
        return None
    try:
        return [t.name for t in load_program(prog).tiers]
    except ProgramError:
        return None


def validate_offer_file(path: str | Path, tier_names: Sequence[str] | None = None) -> list[str]:
    """All errors of an offer catalog file (empty list = valid). Never raises for bad input.

    Tier names are checked against ``tier_names``, else the ``program.yaml`` beside the
    file (if valid), else the reference program.
    """
    p = Path(path)
    try:
        raw = read_yaml(p)
    except ProgramError as exc:
        return exc.errors
    return catalog_errors(raw, tier_names if tier_names is not None else _sibling_tiers(p))


def load_catalog(path: str | Path, tier_names: Sequence[str] | None = None) -> OfferCatalog:
    """Load and validate; raises :class:`CatalogError` listing every error."""
    p = Path(path)
    try:
        raw = read_yaml(p)
    except ProgramError as exc:
        raise CatalogError(str(p), exc.errors) from exc
    errors = catalog_errors(raw, tier_names if tier_names is not None else _sibling_tiers(p))
    if errors:
        raise CatalogError(str(p), errors)
    return OfferCatalog.model_validate(raw)
