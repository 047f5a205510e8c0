"""The loyalty program: one YAML file, validated with pydantic.

Defaults equal SPEC sections 4 and 5, so an empty file is the reference program.
Multipliers and ratios are parsed as :class:`~decimal.Decimal` (a YAML ``1.25`` becomes
``Decimal('1.25')``, never a binary float) and turned into exact
:class:`~fractions.Fraction` values by :meth:`Program.compile`, because points are
``floor(...)`` of a product and a float could round ``x.9999`` down by one point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

IDENTIFIER_TYPES = ("member_no", "card_no", "customer_id", "user_id", "email", "phone")
DEFAULT_CURRENCIES = ("USD", "EUR", "GBP", "CAD", "AUD", "CHF", "JPY", "SEK", "NOK", "DKK")


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a program file must not silently fall back."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TierConfig(_Strict):
    name: str = Field(min_length=1)
    threshold_cents: int = Field(ge=0)
    multiplier: Decimal = Field(gt=0)


class CampaignConfig(_Strict):
    """A points campaign, active on the half-open interval ``[start, end)``."""

    name: str = Field(min_length=1)
    start: datetime
    end: datetime
    multiplier: Decimal = Field(gt=0)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("must carry a timezone (e.g. 2026-05-01T00:00:00Z)")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> CampaignConfig:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class MilestoneConfig(_Strict):
    thresholds: list[int] = Field(default_factory=lambda: [1000, 5000, 10000])
    approaching_ratio: Decimal = Field(default=Decimal("0.95"), gt=0, lt=1)

    @field_validator("thresholds")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(t <= 0 for t in v):
            raise ValueError("thresholds must be positive")
        if any(b <= a for a, b in pairwise(v)):
            raise ValueError("thresholds must be strictly increasing")
        return v


class ExpiryConfig(_Strict):
    lot_days: int = Field(default=365, ge=1)
    notice_lead_days: int = Field(default=30, ge=0)

    @model_validator(mode="after")
    def _lead_inside(self) -> ExpiryConfig:
        if self.notice_lead_days >= self.lot_days:
            raise ValueError("notice_lead_days must be smaller than lot_days")
        return self


class LapseConfig(_Strict):
    min_purchases: int = Field(default=3, ge=2)
    gap_factor: Decimal = Field(default=Decimal(2), gt=0)
    floor_days: int = Field(default=21, ge=1)


class IdentifierConfig(_Strict):
    merge: bool = True


def _default_tiers() -> list[TierConfig]:
    return [
        TierConfig(name="member", threshold_cents=0, multiplier=Decimal("1.0")),
        TierConfig(name="silver", threshold_cents=50_000, multiplier=Decimal("1.25")),
        TierConfig(name="gold", threshold_cents=200_000, multiplier=Decimal("1.5")),
        TierConfig(name="platinum", threshold_cents=500_000, multiplier=Decimal("2.0")),
    ]


def _default_identifiers() -> dict[str, IdentifierConfig]:
    return {t: IdentifierConfig(merge=t != "phone") for t in IDENTIFIER_TYPES}


class Program(_Strict):
    """The whole program file. Every field has the SPEC default."""

    earn_rate: Decimal = Field(default=Decimal(1), gt=0)
    qualification_window_days: int = Field(default=365, ge=1)
    tier_hold_days: int = Field(default=365, ge=0)
    tier_approaching_ratio: Decimal = Field(default=Decimal("0.9"), gt=0, lt=1)
    tiers: list[TierConfig] = Field(default_factory=_default_tiers)
    campaigns: list[CampaignConfig] = Field(default_factory=list)
    milestones: MilestoneConfig = Field(default_factory=MilestoneConfig)
    expiry: ExpiryConfig = Field(default_factory=ExpiryConfig)
    lapse: LapseConfig = Field(default_factory=LapseConfig)
    identifiers: dict[str, IdentifierConfig] = Field(default_factory=_default_identifiers)
    currencies: list[str] = Field(default_factory=lambda: list(DEFAULT_CURRENCIES))

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: list[TierConfig]) -> list[TierConfig]:
        if not v:
            raise ValueError("at least one tier is required")
        if v[0].threshold_cents != 0:
            raise ValueError("the first (base) tier must have threshold_cents 0")
        if any(b.threshold_cents <= a.threshold_cents for a, b in pairwise(v)):
            raise ValueError("thresholds must be strictly increasing")
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        return v

    @field_validator("identifiers")
    @classmethod
    def _identifiers(cls, v: dict[str, IdentifierConfig]) -> dict[str, IdentifierConfig]:
        unknown = sorted(set(v) - set(IDENTIFIER_TYPES))
        if unknown:
            raise ValueError(f"unknown identifier types {unknown}; known: {list(IDENTIFIER_TYPES)}")
        if "member_no" in v and not v["member_no"].merge:
            raise ValueError("member_no must merge (it defines the member)")
        # A partial mapping overrides the defaults; missing types keep them.
        return {**_default_identifiers(), **v}

    @field_validator("currencies")
    @classmethod
    def _currencies(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if len(c) != 3 or not c.isalpha() or not c.isupper()]
        if bad:
            raise ValueError(f"not ISO 4217 alphabetic codes: {bad}")
        return v

    def compile(self) -> CompiledProgram:
        """Exact, hot-path-friendly constants (Fractions, timedeltas, tuples)."""
        return CompiledProgram(
            earn_rate=Fraction(self.earn_rate),
            window=timedelta(days=self.qualification_window_days),
            hold=timedelta(days=self.tier_hold_days),
            tier_names=tuple(t.name for t in self.tiers),
            tier_thresholds=tuple(t.threshold_cents for t in self.tiers),
            tier_multipliers=tuple(Fraction(t.multiplier) for t in self.tiers),
            tier_approaching_ratio=Fraction(self.tier_approaching_ratio),
            tier_approach_lo=tuple(
                _ceil(t.threshold_cents * Fraction(self.tier_approaching_ratio))
                for t in self.tiers
            ),
            campaigns=tuple(
                (c.start, c.end, Fraction(c.multiplier), c.name) for c in self.campaigns
            ),
            milestones=tuple(self.milestones.thresholds),
            milestone_ratio=Fraction(self.milestones.approaching_ratio),
            milestone_bands=tuple(
                (m, _ceil(m * Fraction(self.milestones.approaching_ratio)))
                for m in self.milestones.thresholds
            ),
            lot_life=timedelta(days=self.expiry.lot_days),
            notice_lead=timedelta(days=self.expiry.notice_lead_days),
            lapse_min_purchases=self.lapse.min_purchases,
            lapse_factor=Fraction(self.lapse.gap_factor),
            lapse_floor=timedelta(days=self.lapse.floor_days),
            merging=frozenset(k for k, c in self.identifiers.items() if c.merge),
            currencies=frozenset(self.currencies),
        )


@dataclass(frozen=True, slots=True)
class CompiledProgram:
    """The program as the fold uses it. Built once; shared by every member state."""

    earn_rate: Fraction
    window: timedelta
    hold: timedelta
    tier_names: tuple[str, ...]
    tier_thresholds: tuple[int, ...]
    tier_multipliers: tuple[Fraction, ...]
    tier_approaching_ratio: Fraction
    tier_approach_lo: tuple[int, ...]  # ceil(threshold x ratio) per tier: approaching band
    campaigns: tuple[tuple[datetime, datetime, Fraction, str], ...]
    milestones: tuple[int, ...]
    milestone_ratio: Fraction
    milestone_bands: tuple[tuple[int, int], ...]  # (M, ceil(M x ratio))
    lot_life: timedelta
    notice_lead: timedelta
    lapse_min_purchases: int
    lapse_factor: Fraction
    lapse_floor: timedelta
    merging: frozenset[str]
    currencies: frozenset[str]
    # derived in __post_init__ (hot-path constants of the fold; not part of equality)
    first_due: timedelta = field(init=False, compare=False, repr=False)
    notice_offset: timedelta = field(init=False, compare=False, repr=False)
    lapse_num: int = field(init=False, compare=False, repr=False)
    lapse_den: int = field(init=False, compare=False, repr=False)
    lapse_floor_us: int = field(init=False, compare=False, repr=False)
    # every M and band edge, sorted: a balance change crosses none of them -> no milestone
    milestone_marks: tuple[int, ...] = field(init=False, compare=False, repr=False)
    # (tier, campaign index) -> (numerator, denominator, text) of the earn multiplier
    mult_cache: dict[tuple[int, int], tuple[int, int, str]] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        notice_offset = self.lot_life - self.notice_lead
        put = object.__setattr__
        put(self, "notice_offset", notice_offset)
        # the earliest effect a purchase can schedule: window exit, hold end, notice
        put(self, "first_due", min(self.window, self.hold, notice_offset))
        put(self, "lapse_num", self.lapse_factor.numerator)
        put(self, "lapse_den", self.lapse_factor.denominator)
        put(self, "lapse_floor_us", self.lapse_floor // timedelta(microseconds=1))
        put(self, "milestone_marks", tuple(sorted({x for b in self.milestone_bands for x in b})))
        put(self, "mult_cache", {})


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


class ProgramError(Exception):
    """A program file that cannot be used; ``errors`` holds every ``key.path: message``."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__(f"{source}: " + "; ".join(self.errors))


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def program_errors(raw: Any) -> list[str]:
    """Every validation error of an already-parsed document as ``key.path: message``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return ["(root): must be a mapping of program settings"]
    try:
        Program.model_validate(raw)
    except ValidationError as exc:
        return [f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
    return []


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; an unreadable or unparseable file is one ``(file): ...`` error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProgramError(str(path), [f"(file): cannot read: {exc.strerror or exc}"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProgramError(str(path), [f"(file): not valid YAML{where}"]) from exc


def validate_program_file(path: str | Path) -> list[str]:
    """All errors of a program file (empty list = valid). Never raises for bad input."""
    try:
        raw = read_yaml(Path(path))
    except ProgramError as exc:
        return exc.errors
    return program_errors(raw)


def load_program(path: str | Path) -> Program:
    """Load and validate a program file; raises :class:`ProgramError` listing every error."""
    raw = read_yaml(Path(path))
    errors = program_errors(raw)
    if errors:
        raise ProgramError(str(path), errors)
    return Program.model_validate(raw or {})


DEFAULT_PROGRAM = Program()
