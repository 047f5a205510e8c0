"""The decision core: ``decide(moment, profile, context, catalog, history, now)`` (pure).

No Kafka, no database, no clock: the adapter (Faust agent or HTTP API) passes the moment,
the profile snapshot, a :class:`DecisionContext`, the catalog, the contact history and
``now``. Same inputs -> same :class:`Decision` (ids included).

Pipeline (docs/decisioning.md has the full reference):

1. **Member context** from the snapshot and the program (the domain's earn arithmetic).
2. **Eligibility** per offer: moment type, enrolled, tiers, segment predicates, plus
   kind rules (``points_receipt`` needs points > 0) and proximity (see below).
3. **Ordering**: rule class first -- 0 = the moment's essential message
   (``points_receipt`` for a member / ``enrollment`` for a non-member at a purchase,
   ``api:checkout_confirmation`` or ``api:cart``), 1 = products closing a milestone/tier
   gap (more gaps closed first, then cheapest), 2 = the rest -- then, in class 2, the score
   ``p(accept) x value`` (highest first) or, without a model, ``priority`` (lowest first);
   ties by offer id. A member with ``consent.admt_opt_out`` (CCPA ADMT) and an unknown
   person are never scored: the scorer is not called and every class is in rules order.
4. **Channels**: outbound (email/sms/push, agent moments only): walk offers in rank
   order and each offer's channels in ``contact_policy.channel_order``; the first
   (offer, channel) passing consent, quiet hours, caps and the repeat rule is chosen, up
   to ``max_outbound_per_moment`` (an offer goes out on one channel only). ``in_app``:
   up to ``max_in_app`` offers. API moments answer the person on the page: in_app only,
   no consent/cap/repeat/quiet-hours checks (not a contact; do not record it as a send).
5. Every offer not chosen is recorded with the reason (per channel once it was eligible).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from hashlib import blake2b
from typing import Any, Literal

from app.domain.program import CompiledProgram
from app.domain.records import format_time, parse_time

from .catalog import (
    PLACEMENTS,
    Coefficients,
    LoyaltyOffer,
    OfferCatalog,
    Predicate,
    ProductOffer,
    Template,
)
from .features import (
    CartLine,
    MemberContext,
    checkout_context,
    features,
    logistic,
    product_points,
    segment_values,
)
from .policy import (
    Contactability,
    Reason,
    Send,
    cap_reason,
    consent_reason,
    quiet_hours_reason,
    repeat_reason,
)

MomentKind = Literal["event", "purchase", "api"]
Scorer = Callable[[Coefficients, Mapping[str, float]], float]
Offer = ProductOffer | LoyaltyOffer
ESSENTIAL_MOMENTS = frozenset({"purchase", "api:checkout_confirmation", "api:cart"})
RULE_CLASSES = {0: "essential", 1: "proximity", 2: "general"}
# Exempt from the no-repeat rule: each receipt is about a different purchase (it still
# needs consent, respects quiet hours and counts toward the caps).
REPEATABLE_KINDS = frozenset({"points_receipt"})


@dataclass(frozen=True, slots=True)
class Moment:
    """What happened. ``type``: a loyalty event type, ``purchase`` or ``api:<placement>``.

    ``id`` must be deterministic for the thing that happened (loyalty event id, purchase
    record id, API request id): decision ids are derived from it.
    """

    id: str
    kind: MomentKind
    type: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
    amount_cents: int | None = None  # purchase amount
    points_earned: int | None = None  # purchase: what the fold credited, when known
    cart: tuple[CartLine, ...] = ()

    @classmethod
    def from_cloudevent(cls, ev: Mapping[str, Any]) -> Moment:
        """A ``loyalty.<type>`` CloudEvent (streams/loyalty_events.py) as a moment."""
        data = dict(ev["data"])
        type_ = str(ev["type"]).removeprefix("loyalty.")
        at = parse_time(data.get("effective_at") or ev["time"], str(ev["id"]), "effective_at")
        return cls(id=str(ev["id"]), kind="event", type=type_, at=at, data=data)

    @classmethod
    def purchase(
        cls, record_id: str, at: datetime, amount_cents: int, points_earned: int | None = None
    ) -> Moment:
        """A completed purchase. Pass ``points_earned`` from the domain (the
        ``points_earned`` event) when known; else it is quoted at the profile's tier."""
        return cls(
            id=record_id, kind="purchase", type="purchase", at=at,
            amount_cents=amount_cents, points_earned=points_earned,
        )

    @classmethod
    def api(
        cls, request_id: str, placement: str, at: datetime, cart: Sequence[CartLine] = ()
    ) -> Moment:
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}")
        return cls(id=request_id, kind="api", type=f"api:{placement}", at=at, cart=tuple(cart))


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """Inputs besides the profile: the program, the profile id, contactability."""

    program: CompiledProgram
    profile_id: str | None
    contact: Contactability = field(default_factory=Contactability)


@dataclass(frozen=True, slots=True)
class Rejection:
    offer_id: str
    channel: str | None  # None: rejected before channels (eligibility)
    code: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"offer_id": self.offer_id, "channel": self.channel, "code": self.code,
                "text": self.text}


@dataclass(frozen=True, slots=True)
class RankedOffer:
    """An eligible candidate, in rank order. ``p``/``value``/``score`` only when scored."""

    offer_id: str
    kind: str  # "product" or the loyalty kind
    rank: int
    rule_class: str
    reasons: tuple[Reason, ...]
    value: float
    p: float | None
    score: float | None
    render: Mapping[str, str]  # placeholder values for the templates

    def to_dict(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id, "kind": self.kind, "rank": self.rank,
            "rule_class": self.rule_class,
            "reasons": [{"code": r.code, "text": r.text} for r in self.reasons],
            "value": self.value, "p": self.p, "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class ChosenOffer:
    offer_id: str
    kind: str
    rank: int
    subject: str | None
    body: str
    reasons: tuple[Reason, ...]
    p: float | None
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id, "kind": self.kind, "rank": self.rank,
            "subject": self.subject, "body": self.body,
            "reasons": [{"code": r.code, "text": r.text} for r in self.reasons],
            "p": self.p, "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class ChannelDecision:
    """One message: ``decision_id`` = blake2b-128(moment id | profile id | channel)."""

    decision_id: str
    channel: str
    offers: tuple[ChosenOffer, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "channel": self.channel,
                "offers": [o.to_dict() for o in self.offers]}


@dataclass(frozen=True, slots=True)
class Decision:
    moment_id: str
    moment_type: str
    profile_id: str | None
    member_id: str | None
    decided_at: datetime
    ordering: Literal["model", "rules"]
    ordering_reason: str
    member: MemberContext
    ranked: tuple[RankedOffer, ...]
    channels: Mapping[str, ChannelDecision]  # only channels with a chosen offer
    rejected: tuple[Rejection, ...]

    def chosen(self, channel: str) -> tuple[ChosenOffer, ...]:
        cd = self.channels.get(channel)
        return cd.offers if cd else ()

    def sends(self) -> list[Send]:
        """The contact-history entries this decision adds when its messages go out."""
        return [
            Send(o.offer_id, ch, self.decided_at)
            for ch, cd in self.channels.items()
            for o in cd.offers
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "moment_id": self.moment_id,
            "moment_type": self.moment_type,
            "profile_id": self.profile_id,
            "member_id": self.member_id,
            "decided_at": format_time(self.decided_at),
            "ordering": self.ordering,
            "ordering_reason": self.ordering_reason,
            "member": self.member.to_dict(),
            "ranked": [r.to_dict() for r in self.ranked],
            "channels": {c: d.to_dict() for c, d in self.channels.items()},
            "rejected": [r.to_dict() for r in self.rejected],
        }


def decision_id(moment_id: str, profile_id: str | None, channel: str) -> str:
    raw = f"{moment_id}|{profile_id or ''}|{channel}".encode()
    return blake2b(raw, digest_size=16).hexdigest()


def money(cents: int | None) -> str:
    """Cents as ``units.cc`` (currency-neutral); None -> empty string."""
    if cents is None:
        return ""
    sign = "-" if cents < 0 else ""
    c = abs(cents)
    return f"{sign}{c // 100}.{c % 100:02d}"


def _text(v: Any) -> str:
    return "" if v is None else str(v)


# -- eligibility --------------------------------------------------------------------------


def _predicate_holds(pred: Predicate, actual: Any) -> bool:
    v = pred.value
    if pred.op == "eq":
        return bool(actual == v)
    if pred.op == "ne":
        return bool(actual != v)
    if pred.op == "in":
        return actual in v
    if pred.op == "not_in":
        return actual not in v
    if actual is None or isinstance(actual, str):
        return False
    a, b = Decimal(str(actual)), Decimal(str(v))
    return {"lt": a < b, "lte": a <= b, "gt": a > b, "gte": a >= b}[pred.op]


def _eligibility_reason(
    offer: Offer, moment: Moment, member: MemberContext, seg: Mapping[str, Any]
) -> Reason | None:
    el = offer.eligibility
    if moment.type not in el.moments:
        return Reason("moment_not_eligible", f"not offered on {moment.type}")
    if el.enrolled is True and not member.enrolled:
        return Reason("members_only", "offer is for enrolled members")
    if el.enrolled is False and member.enrolled:
        return Reason("non_members_only", "offer is for non-members")
    if el.tiers is not None and member.tier not in el.tiers:
        return Reason(
            "tier_not_eligible", f"tier {member.tier or 'none'} not in {', '.join(el.tiers)}"
        )
    for pred in el.segment:
        actual = seg.get(pred.field)
        if not _predicate_holds(pred, actual):
            return Reason(
                "segment_mismatch",
                f"{pred.field} {pred.op} {pred.value!r} is false (value {actual!r})",
            )
    return None


# -- the decision -------------------------------------------------------------------------


@dataclass
class _Candidate:
    offer: Offer
    rule_class: int
    reasons: list[Reason]
    value: Decimal
    render: dict[str, str]
    gaps_closed: int = 0
    p: float | None = None
    score: float | None = None


def _member_for_moment(
    moment: Moment, profile: Mapping[str, Any] | None, program: CompiledProgram
) -> MemberContext:
    if moment.kind == "api":
        return checkout_context(profile, moment.cart, program, moment.at)
    if moment.kind == "purchase" and moment.amount_cents is not None:
        m = checkout_context(
            profile, [CartLine("purchase", 1, max(0, moment.amount_cents))], program, moment.at
        )
        if moment.points_earned is not None and m.enrolled:
            m = _replace_points(m, moment.points_earned)
        return m
    m = checkout_context(profile, (), program, moment.at)
    pts = moment.data.get("points")
    if isinstance(pts, int) and not isinstance(pts, bool):
        m = _replace_points(m, pts)
    return m


def _replace_points(m: MemberContext, points: int) -> MemberContext:
    return replace(m, points=points)


def _base_render(member: MemberContext) -> dict[str, str]:
    return {
        "member_id": _text(member.member_id),
        "tier": _text(member.tier),
        "points_balance": str(member.points_balance),
        "points": str(member.points),
        "points_if_enrolled": str(member.points_if_enrolled),
        "next_milestone": _text(member.next_milestone),
        "milestone_gap_points": _text(member.milestone_gap_points),
        "next_tier": _text(member.next_tier),
        "tier_gap": money(member.tier_gap_cents),
        "multiplier": member.multiplier,
        "sku": "", "product_name": "", "price": "", "category": "", "product_points": "",
    }


def _proximity(program: CompiledProgram, member: MemberContext, moment: Moment) -> tuple[
    bool, bool
]:
    """(milestone gap in its approaching band, tier gap in its approaching band)."""
    if not member.enrolled:
        return False, False
    ms = False
    if member.next_milestone is not None:
        lo = dict(program.milestone_bands)[member.next_milestone]
        ms = member.points_balance >= lo or moment.type == "milestone_approaching"
    tier = False
    nxt = member.tier_rank + 1
    if member.next_tier is not None and nxt < len(program.tier_approach_lo):
        tier = (
            member.qualifying_spend_cents >= program.tier_approach_lo[nxt]
            or moment.type == "tier_approaching"
        )
    return ms, tier


def render(template: Template, values: Mapping[str, str]) -> tuple[str | None, str]:
    """(subject, body) with the placeholders filled."""
    subject = template.subject.format_map(values) if template.subject else None
    return subject, template.body.format_map(values)


def decide(
    moment: Moment,
    profile: Mapping[str, Any] | None,
    context: DecisionContext,
    catalog: OfferCatalog,
    history: Sequence[Send],
    now: datetime,
    *,
    scorer: Scorer = logistic,
) -> Decision:
    """Rank the catalog's offers for ``moment`` and choose per channel (module doc).

    ``profile``: ``MemberState.snapshot()`` (None = unknown person). ``history``: this
    person's past sends (any order; only the policy windows before ``now`` matter).
    ``scorer`` is the model (injectable for tests); it is never called for an ADMT
    opt-out or an unknown person.
    """
    program = context.program
    policy = catalog.contact_policy
    member = _member_for_moment(moment, profile, program)
    feats = features(profile, member, program, now)
    seg = segment_values(profile, member, feats)
    consent = (profile or {}).get("consent") or {}
    if profile is None:
        ordering: Literal["model", "rules"] = "rules"
        ordering_reason = "unknown person: no profile to score; rules-only priority order"
    elif consent.get("admt_opt_out") is True:
        ordering = "rules"
        ordering_reason = "admt_opt_out (CCPA ADMT): not scored by a model; priority order"
    else:
        ordering = "model"
        ordering_reason = "scored: p(accept) x value"

    ms_band, tier_band = _proximity(program, member, moment)
    base = _base_render(member)
    rejected: list[Rejection] = []
    cands: list[_Candidate] = []
    for offer in catalog.offers:
        why = _eligibility_reason(offer, moment, member, seg)
        if why is not None:
            rejected.append(Rejection(offer.id, None, why.code, why.text))
            continue
        values = dict(base, offer_name=offer.name)
        reasons = [Reason("eligible", f"eligible on {moment.type}")]
        rule_class = 2
        gaps = 0
        if isinstance(offer, ProductOffer):
            pts = product_points(program, profile, offer.price_cents, moment.at)
            values.update(
                sku=offer.sku, product_name=offer.name, price=money(offer.price_cents),
                category=offer.category, product_points=str(pts),
            )
            ms_gap, tier_gap = member.milestone_gap_points, member.tier_gap_cents
            if ms_band and ms_gap is not None and pts >= ms_gap:
                gaps += 1
                reasons.append(Reason(
                    "closes_milestone_gap",
                    f"earns {pts} points, closing the {ms_gap}-point gap to "
                    f"{member.next_milestone}",
                ))
            if tier_band and tier_gap is not None and offer.price_cents >= tier_gap:
                gaps += 1
                reasons.append(Reason(
                    "closes_tier_gap",
                    f"{money(offer.price_cents)} closes the {money(tier_gap)} gap to "
                    f"{member.next_tier}",
                ))
            if gaps:
                rule_class = 1
        else:
            if offer.kind == "points_receipt":
                if member.points <= 0:
                    rejected.append(Rejection(
                        offer.id, None, "no_points", "this purchase earned no points"
                    ))
                    continue
                if moment.type in ESSENTIAL_MOMENTS:
                    rule_class = 0
                    reasons.append(Reason(
                        "points_receipt", f"this purchase earned {member.points} points"
                    ))
            elif offer.kind == "enrollment" and moment.type in ESSENTIAL_MOMENTS:
                rule_class = 0
                reasons.append(Reason(
                    "enrollment_offer",
                    f"not a member: would have earned {member.points_if_enrolled} points",
                ))
        cands.append(_Candidate(offer, rule_class, reasons, offer.value, values, gaps))

    # -- ordering ---------------------------------------------------------------------
    if ordering == "model":
        for c in cands:
            c.p = scorer(catalog.models[c.offer.model], feats)
            c.score = c.p * float(c.value)
            c.reasons.append(Reason(
                "scored", f"p={c.p:.4f} x value={float(c.value):.2f} = {c.score:.4f}"
            ))
    else:
        for c in cands:
            c.reasons.append(Reason("rules_priority", f"priority {c.offer.priority}"))

    def key(c: _Candidate) -> tuple[Any, ...]:
        if c.rule_class == 0:
            return (0, c.offer.priority, 0.0, c.offer.id)
        if c.rule_class == 1:
            price = c.offer.price_cents if isinstance(c.offer, ProductOffer) else 0
            return (1, -c.gaps_closed, price, c.offer.id)
        if c.score is not None:
            return (2, 0, -c.score, c.offer.id)
        return (2, c.offer.priority, 0.0, c.offer.id)

    cands.sort(key=key)
    ranked = tuple(
        RankedOffer(
            offer_id=c.offer.id,
            kind="product" if isinstance(c.offer, ProductOffer) else c.offer.kind,
            rank=i + 1,
            rule_class=RULE_CLASSES[c.rule_class],
            reasons=tuple(c.reasons),
            value=float(c.value),
            p=None if c.p is None else round(c.p, 6),
            score=None if c.score is None else round(c.score, 6),
            render=c.render,
        )
        for i, c in enumerate(cands)
    )

    # -- channels ---------------------------------------------------------------------
    interactive = moment.kind == "api"
    contact = context.contact
    pending: list[Send] = []
    chosen: dict[str, list[ChosenOffer]] = {}

    def feasible(r: RankedOffer, channel: str) -> Reason | None:
        # caps count this decision's own choices; the repeat rule looks at past sends
        # only (the in-app copy of this moment's outbound offer is not a repeat)
        offer = by_id[r.offer_id]
        if offer.templates.get(channel) is None:
            return Reason("no_template", f"no {channel} template")
        why = consent_reason(channel, profile, contact, interactive)
        if why is not None or interactive:
            return why
        return (
            quiet_hours_reason(channel, policy, contact, now)
            or (None if r.kind in REPEATABLE_KINDS else repeat_reason(
                r.offer_id, policy, history, now))
            or cap_reason(channel, policy, [*history, *pending], now)
        )

    def choose(r: RankedOffer, channel: str) -> None:
        offer = by_id[r.offer_id]
        tmpl = offer.templates.get(channel)
        assert tmpl is not None
        subject, body = render(tmpl, r.render)
        chosen.setdefault(channel, []).append(ChosenOffer(
            r.offer_id, r.kind, r.rank, subject, body, r.reasons, r.p, r.score
        ))
        pending.append(Send(r.offer_id, channel, now))

    by_id = {o.id: o for o in catalog.offers}
    if not interactive:
        sent = 0
        for r in ranked:
            done_on: str | None = None
            for channel in policy.channel_order:
                if done_on is not None:
                    rejected.append(Rejection(
                        r.offer_id, channel, "sent_on_other_channel",
                        f"this moment's message for the offer goes out on {done_on}",
                    ))
                    continue
                why = feasible(r, channel)
                if why is not None:
                    rejected.append(Rejection(r.offer_id, channel, why.code, why.text))
                elif sent >= policy.max_outbound_per_moment:
                    rejected.append(Rejection(
                        r.offer_id, channel, "outranked",
                        f"a higher-ranked offer used this moment's "
                        f"{policy.max_outbound_per_moment} outbound message(s)",
                    ))
                else:
                    choose(r, channel)
                    done_on = channel
                    sent += 1
    n_in_app = 0
    for r in ranked:
        why = feasible(r, "in_app")
        if why is not None:
            rejected.append(Rejection(r.offer_id, "in_app", why.code, why.text))
        elif n_in_app >= policy.max_in_app:
            rejected.append(Rejection(
                r.offer_id, "in_app", "outranked",
                f"{policy.max_in_app} higher-ranked in-app offers were chosen",
            ))
        else:
            choose(r, "in_app")
            n_in_app += 1

    channels = {
        ch: ChannelDecision(decision_id(moment.id, context.profile_id, ch), ch, tuple(offers))
        for ch, offers in chosen.items()
    }
    return Decision(
        moment_id=moment.id,
        moment_type=moment.type,
        profile_id=context.profile_id,
        member_id=member.member_id,
        decided_at=now,
        ordering=ordering,
        ordering_reason=ordering_reason,
        member=member,
        ranked=ranked,
        channels=channels,
        rejected=tuple(rejected),
    )
