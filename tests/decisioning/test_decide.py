"""Every rule of the decision core: consent, ADMT, caps, repeat, quiet hours, proximity,
checkout (member vs guest), determinism."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.decisioning import (
    CartLine,
    Moment,
    Send,
    checkout_context,
    decide,
    decision_id,
)
from app.decisioning.catalog import Coefficients, OfferCatalog
from app.decisioning.features import logistic
from app.decisioning.policy import repeat_reason
from app.domain.program import CampaignConfig, Program
from tests.decisioning.helpers import (
    NOW,
    PROGRAM,
    catalog,
    catalog_doc,
    codes,
    ctx,
    event,
    guest,
    product,
    profile,
    sends,
)

CAT = catalog()
LAPSE = event("lapse_risk")


def outbound(d: object) -> dict[str, list[str]]:
    chans = d.channels  # type: ignore[attr-defined]
    return {c: [o.offer_id for o in cd.offers] for c, cd in chans.items() if c != "in_app"}


# -- consent ------------------------------------------------------------------------------


def only(channel: str | None, push_token: bool = False) -> tuple[dict[str, object], object]:
    flags = {"email_opt_in": channel == "email", "sms_consent": channel == "sms",
             "push_opt_in": channel == "push"}
    return profile(consent=flags), ctx(push_token=push_token)


def test_email_needs_email_opt_in() -> None:
    p, c = only("email")
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert outbound(d) == {"email": ["dbl"]}
    p, c = only(None)
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert outbound(d) == {}
    assert "no_consent_email" in codes(d, "dbl", "email")


def test_email_needs_an_address() -> None:
    p = profile(identifiers=["member_no:M1", "phone:+15551230000"],
                consent={"sms_consent": False, "push_opt_in": False})
    d = decide(LAPSE, p, ctx(), CAT, [], NOW)
    assert codes(d, "dbl", "email") == ["no_email_address"] and outbound(d) == {}


def test_sms_needs_sms_consent_and_a_phone() -> None:
    p, c = only("sms")
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert outbound(d) == {"sms": ["dbl"]}
    p, c = only(None)
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert codes(d, "dbl", "sms") == ["no_consent_sms"]
    nophone = profile(identifiers=["email:a@example.com"],
                      consent={"email_opt_in": False, "push_opt_in": False})
    d = decide(LAPSE, nophone, ctx(), CAT, [], NOW)
    assert codes(d, "dbl", "sms") == ["no_phone_number"]


def test_push_needs_token_and_opt_in() -> None:
    p, c = only("push", push_token=True)
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert outbound(d) == {"push": ["dbl"]}
    p, c = only("push", push_token=False)
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert codes(d, "dbl", "push") == ["no_push_token"] and outbound(d) == {}
    p, c = only("email", push_token=True)
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert codes(d, "dbl", "push") == ["no_consent_push"] and outbound(d) == {"email": ["dbl"]}


def test_in_app_needs_a_known_profile_only() -> None:
    p, c = only(None)
    d = decide(LAPSE, p, c, CAT, [], NOW)  # type: ignore[arg-type]
    assert [o.offer_id for o in d.chosen("in_app")] == ["dbl", "winback"]
    d = decide(event("member_enrolled"), None, ctx(), CAT, [], NOW)
    assert all(r.code == "moment_not_eligible" for r in d.rejected)
    unknown = decide(event("points_expiring"), None, ctx(), _with_anyone(), [], NOW)
    assert unknown.chosen("in_app") == ()
    assert codes(unknown, "anyone", "in_app") == ["unknown_profile"]


def _with_anyone() -> OfferCatalog:
    doc = catalog_doc()
    doc["loyalty_offers"].append({
        "id": "anyone", "kind": "double_points", "name": "x", "value": 1,
        "eligibility": {"moments": ["points_expiring"]},
        "templates": {"in_app": {"body": "x"}},
    })
    return OfferCatalog.model_validate(doc)


# -- ADMT ---------------------------------------------------------------------------------


class Spy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: Coefficients, feats: Mapping[str, float]) -> float:
        self.calls += 1
        return logistic(model, feats)


def test_admt_opt_out_is_never_scored_and_follows_priority() -> None:
    spy = Spy()
    p = profile(consent={"admt_opt_out": True})
    d = decide(LAPSE, p, ctx(), CAT, [], NOW, scorer=spy)
    assert spy.calls == 0
    assert d.ordering == "rules" and "ADMT" in d.ordering_reason
    assert [r.offer_id for r in d.ranked] == ["winback", "dbl"]  # priority 5 before 20
    assert all(r.p is None and r.score is None for r in d.ranked)
    assert outbound(d) == {"push": ["winback"]}


def test_without_opt_out_the_model_orders_by_expected_value() -> None:
    spy = Spy()
    d = decide(LAPSE, profile(), ctx(), CAT, [], NOW, scorer=spy)
    assert spy.calls == 2 and d.ordering == "model"
    assert [r.offer_id for r in d.ranked] == ["dbl", "winback"]  # 900 x p > 100 x p
    top = d.ranked[0]
    p = 1 / (1 + __import__("math").exp(-(-1 + 0.1 * 5)))
    assert top.p == pytest.approx(p, abs=1e-6) and top.score == pytest.approx(900 * p, 1e-6)
    assert any(r.code == "scored" for r in d.chosen("push")[0].reasons)


def test_unknown_person_is_not_scored() -> None:
    spy = Spy()
    d = decide(Moment.api("r1", "home", NOW), None, ctx(), CAT, [], NOW, scorer=spy)
    assert spy.calls == 0 and d.ordering == "rules"
    assert [o.offer_id for o in d.chosen("in_app")] == ["enroll"]


# -- caps and repeat ----------------------------------------------------------------------


def test_channel_cap_rolls_over_seven_days() -> None:
    hist = sends("other", "push", 1, 6.9)
    d = decide(LAPSE, profile(), ctx(), CAT, hist, NOW)
    assert codes(d, "dbl", "push") == ["channel_cap"] and outbound(d) == {"email": ["dbl"]}
    old = sends("other", "push", 1, 7)  # exactly 7 days ago is outside (now - 7 d, now]
    d = decide(LAPSE, profile(), ctx(), CAT, old, NOW)
    assert outbound(d) == {"push": ["dbl"]}


def test_global_cap_counts_outbound_channels_only() -> None:
    hist = [*sends("a", "push", 1), *sends("b", "email", 2, 3), *sends("c", "sms", 4),
            *sends("d", "in_app", 1, 1, 1, 1, 1)]
    d = decide(LAPSE, profile(), ctx(), CAT, hist, NOW)
    assert codes(d, "dbl", "push") == ["global_cap"]
    assert codes(d, "dbl", "email") == ["global_cap"]
    assert codes(d, "dbl", "sms") == ["channel_cap"]
    assert outbound(d) == {} and [o.offer_id for o in d.chosen("in_app")] == ["dbl", "winback"]


def test_no_repeat_within_thirty_days() -> None:
    d = decide(LAPSE, profile(), ctx(), CAT, sends("dbl", "email", 29.9), NOW)
    assert codes(d, "dbl", "push") == ["repeat_offer"]
    assert codes(d, "dbl", "in_app") == ["repeat_offer"]
    assert outbound(d) == {"push": ["winback"]}
    d = decide(LAPSE, profile(), ctx(), CAT, sends("dbl", "email", 30), NOW)
    assert outbound(d) == {"push": ["dbl"]}


def test_one_outbound_message_per_moment() -> None:
    d = decide(LAPSE, profile(), ctx(), CAT, [], NOW)
    assert codes(d, "dbl", "email") == ["sent_on_other_channel"]
    assert codes(d, "winback", "push") == ["outranked"]
    d2 = decide(LAPSE, profile(), ctx(), catalog(max_outbound_per_moment=2), [], NOW)
    assert outbound(d2) == {"push": ["dbl", "winback"]}


# -- quiet hours --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utc", "tz", "quiet"),
    [
        (datetime(2026, 6, 11, 2, 30, tzinfo=UTC), None, True),  # 22:30 New York (EDT)
        (datetime(2026, 6, 10, 11, 59, tzinfo=UTC), None, True),  # 07:59
        (datetime(2026, 6, 10, 12, 0, tzinfo=UTC), None, False),  # 08:00 ends the window
        (datetime(2026, 6, 11, 0, 59, tzinfo=UTC), None, False),  # 20:59
        (datetime(2026, 6, 11, 1, 0, tzinfo=UTC), None, True),  # 21:00 starts it
        (datetime(2026, 6, 10, 20, 0, tzinfo=UTC), "Europe/Berlin", True),  # 22:00 Berlin
        (datetime(2026, 6, 10, 20, 0, tzinfo=UTC), None, False),  # 16:00 New York
        (datetime(2026, 6, 10, 20, 0, tzinfo=UTC), "Not/AZone", False),  # default zone
        (datetime(2026, 1, 10, 13, 30, tzinfo=UTC), None, False),  # 08:30 EST (winter)
        (datetime(2026, 1, 10, 12, 30, tzinfo=UTC), None, True),  # 07:30 EST
    ],
)
def test_quiet_hours_for_sms_and_push(utc: datetime, tz: str | None, quiet: bool) -> None:
    m = event("lapse_risk", at=utc)
    d = decide(m, profile(consent={"email_opt_in": False}), ctx(tz=tz), CAT, [], utc)
    if quiet:
        assert codes(d, "dbl", "push") == ["quiet_hours"]
        assert codes(d, "dbl", "sms") == ["quiet_hours"]
        assert outbound(d) == {}
        assert [o.offer_id for o in d.chosen("in_app")] == ["dbl", "winback"]
        d = decide(m, profile(), ctx(tz=tz), CAT, [], utc)
        assert outbound(d) == {"email": ["dbl"]}  # email has no quiet hours
    else:
        assert outbound(d) == {"push": ["dbl"]}


# -- proximity ----------------------------------------------------------------------------


def ranked_ids(d: object) -> list[str]:
    return [r.offer_id for r in d.ranked]  # type: ignore[attr-defined]


def test_milestone_proximity_cheapest_closer_first() -> None:
    p = profile(points_balance=9800)  # 200 points to 10 000 (band from 9 500)
    d = decide(event("milestone_approaching"), p, ctx(), CAT, [], NOW)
    assert ranked_ids(d)[:3] == ["p250", "p300", "p400"]
    assert d.ranked[0].rule_class == "proximity"
    assert [r.code for r in d.ranked[0].reasons][:2] == ["eligible", "closes_milestone_gap"]
    p50 = next(r for r in d.ranked if r.offer_id == "p50")
    assert p50.rule_class == "general"
    assert outbound(d) == {"email": ["p250"]}  # products have no push template
    assert d.chosen("email")[0].body == "Product p250 250.00 earns 250"
    assert codes(d, "p250", "push") == ["no_template"]


def test_proximity_uses_the_tier_multiplier_and_campaigns() -> None:
    doc = catalog_doc()
    doc["product_offers"].append(product("p150", 15000))
    cat = OfferCatalog.model_validate(doc)
    m = event("milestone_approaching")
    member = decide(m, profile(points_balance=9800), ctx(), cat, [], NOW)
    assert ranked_ids(member)[0] == "p250"  # 150 points do not close 200
    gold = decide(m, profile(points_balance=9800, tier="gold"), ctx(), cat, [], NOW)
    assert ranked_ids(gold)[0] == "p150"  # 150 x 1.5 = 225
    camp = Program(campaigns=[CampaignConfig(
        name="dbl", start=NOW - timedelta(days=1), end=NOW + timedelta(days=1),
        multiplier=Decimal(2),
    )]).compile()
    c = ctx()
    promo = decide(m, profile(points_balance=9800), type(c)(camp, "prof-1"), cat, [], NOW)
    assert ranked_ids(promo)[0] == "p150"  # 150 x 2 = 300


def test_tier_proximity_closes_the_spend_gap() -> None:
    p = profile(tier="silver", qualifying_spend_cents=190000)  # 100.00 to gold
    d = decide(event("tier_approaching"), p, ctx(), CAT, [], NOW)
    assert ranked_ids(d)[:3] == ["p250", "p300", "p400"]
    assert [r.code for r in d.ranked[0].reasons][1] == "closes_tier_gap"
    assert "100.00" in d.ranked[0].reasons[1].text


def test_proximity_ordering_holds_without_a_model() -> None:
    spy = Spy()
    p = profile(points_balance=9800, consent={"admt_opt_out": True})
    d = decide(event("milestone_approaching"), p, ctx(), CAT, [], NOW, scorer=spy)
    assert spy.calls == 0
    # closers cheapest first, then the rest by priority (winback 5, dbl 20, p50 50)
    assert ranked_ids(d) == ["p250", "p300", "p400", "winback", "dbl", "p50"]


def test_outside_the_band_products_are_not_favoured() -> None:
    d = decide(event("milestone_approaching"), profile(points_balance=100), ctx(), CAT, [], NOW)
    assert all(r.rule_class == "general" for r in d.ranked)


# -- checkout: member vs guest ------------------------------------------------------------

CART = [CartLine("A", 2, 1250)]  # 25.00


def test_member_at_checkout_gets_the_points_receipt() -> None:
    m = Moment.api("req-1", "checkout_confirmation", NOW, CART)
    d = decide(m, profile(tier="silver"), ctx(), CAT, [], NOW)
    assert d.member.enrolled and d.member.points == 31  # floor(25 x 1.25)
    top = d.chosen("in_app")[0]
    assert top.offer_id == "receipt" and top.body == "This purchase earned you 31 points."
    assert codes(d, "enroll", None) == ["non_members_only"]


def test_guest_at_checkout_gets_enrollment_with_would_have_earned_points() -> None:
    m = Moment.api("req-2", "checkout_confirmation", NOW, CART)
    for who in (None, guest()):
        d = decide(m, who, ctx(), CAT, [], NOW)
        assert not d.member.enrolled and d.member.points == 0
        assert d.member.points_if_enrolled == 25
        top = d.chosen("in_app")[0]
        assert top.offer_id == "enroll" and top.body == "Join: you would have earned 25."
        assert codes(d, "receipt", None) == ["members_only"]


def test_api_answers_are_not_contacts() -> None:
    hist = sends("receipt", "in_app", 1, 2) + sends("x", "email", 1, 1, 1, 1, 1)
    m = Moment.api("req-3", "cart", NOW, CART)
    d = decide(m, profile(), ctx(), CAT, hist, NOW)
    assert d.chosen("in_app")[0].offer_id == "receipt"
    assert set(d.channels) == {"in_app"}


def test_purchase_moment_receipt_and_enrollment() -> None:
    m = Moment.purchase("pos.transactions:1", NOW, 4099, points_earned=61)
    d = decide(m, profile(), ctx(), CAT, [], NOW)
    assert outbound(d) == {"push": ["receipt"]}
    assert d.chosen("push")[0].reasons[1].text == "this purchase earned 61 points"
    quoted = decide(Moment.purchase("pos.transactions:1", NOW, 4099), profile(), ctx(), CAT,
                    [], NOW)
    assert quoted.member.points == 40
    g = decide(m, guest(), ctx(), CAT, [], NOW)
    assert outbound(g) == {"push": ["enroll"]}
    assert [o.body for o in g.chosen("in_app")] == ["Join: you would have earned 40."]


def test_receipts_are_exempt_from_the_repeat_rule_not_from_caps() -> None:
    m = Moment.purchase("p:2", NOW, 4099)
    d = decide(m, profile(), ctx(), CAT, sends("receipt", "push", 3), NOW)
    assert outbound(d) == {"push": ["receipt"]}
    d = decide(m, profile(), ctx(), CAT, sends("receipt", "push", 3, 4), NOW)
    assert codes(d, "receipt", "push") == ["channel_cap"] and outbound(d) == {"email": ["receipt"]}


def test_purchase_under_one_unit_earns_no_receipt() -> None:
    d = decide(Moment.purchase("p:1", NOW, 99), profile(), ctx(), CAT, [], NOW)
    assert codes(d, "receipt", None) == ["no_points"]


def test_checkout_context_matches_quote_purchase() -> None:
    from app.domain.state import MemberState
    from tests.domain.builders import at, buy, enroll

    state = MemberState(PROGRAM, "prof-9")
    state.add_many([
        enroll("M9", at(0), email="m9@example.com"),
        buy("t1", 60000, at(1), member_no="M9"),
        buy("t2", 5000, at(2), member_no="M9"),
    ])
    when = at(3)
    q = state.quote_purchase(12345, when)
    c = checkout_context(state.snapshot(), [CartLine("x", 1, 12345)], PROGRAM, when)
    assert (c.enrolled, c.points, c.points_if_enrolled, c.tier, c.points_balance) == (
        q["enrolled"], q["points"], q["points_if_enrolled"], q["tier"], q["balance"])
    assert (c.next_milestone, c.milestone_gap_points, c.next_tier, c.tier_gap_cents) == (
        q["next_milestone"], q["milestone_gap_points"], q["next_tier"], q["tier_gap_cents"])
    assert c.multiplier == q["multiplier"]


def test_checkout_context_of_a_guest() -> None:
    c = checkout_context(None, [CartLine("a", 3, 999), CartLine("b", 1, 1)], PROGRAM, NOW)
    assert (c.known, c.enrolled, c.cart_total_cents, c.points, c.points_if_enrolled) == (
        False, False, 2998, 0, 29)
    assert c.next_milestone is None and c.tier is None


# -- eligibility, determinism, moments ----------------------------------------------------


def test_eligibility_rules_are_recorded() -> None:
    d = decide(LAPSE, profile(), ctx(), CAT, [], NOW)
    assert codes(d, "gold-early", None) == ["tier_not_eligible"]
    assert codes(d, "refer", None) == ["segment_mismatch"]
    assert codes(d, "p50", None) == ["moment_not_eligible"]
    assert codes(d, "enroll", None) == ["moment_not_eligible"]
    gold = decide(LAPSE, profile(tier="gold", purchase_count=12), ctx(), CAT, [], NOW)
    assert {r.offer_id for r in gold.ranked} == {"dbl", "winback", "gold-early", "refer"}


def test_same_inputs_same_decision_and_ids() -> None:
    a = decide(LAPSE, profile(), ctx(), CAT, [], NOW)
    b = decide(LAPSE, profile(), ctx(), CAT, [], NOW)
    assert a.to_dict() == b.to_dict()
    assert a.channels["push"].decision_id == decision_id("ev-lapse_risk", "prof-1", "push")
    assert a.channels["in_app"].decision_id != a.channels["push"].decision_id
    assert [s.channel for s in a.sends()] == ["push", "in_app", "in_app"]


def test_moment_from_a_loyalty_cloudevent() -> None:
    from app.domain.events import LoyaltyEvent
    from streams.loyalty_events import to_cloudevent

    ev = LoyaltyEvent("e1", "milestone_approaching", "prof-1", "M1", NOW, "pos:1",
                      {"balance": 9800, "milestone": 10000})
    m = Moment.from_cloudevent(to_cloudevent(ev))
    assert (m.id, m.kind, m.type, m.at) == ("e1", "event", "milestone_approaching", NOW)
    with pytest.raises(ValueError, match="placement"):
        Moment.api("r", "nowhere", NOW)


def test_profile_without_purchases_scores() -> None:
    p = profile(last_purchase_at=None, purchase_count=0)
    d = decide(LAPSE, p, ctx(), CAT, [Send("z", "push", NOW)], NOW)
    assert d.ranked[0].p is not None


def test_the_shipped_catalog_renders_every_moment() -> None:
    from app.decisioning import load_catalog
    from app.decisioning.catalog import MOMENT_TYPES
    from tests.decisioning.test_catalog import SHIPPED

    cat = load_catalog(SHIPPED)
    people = [profile(points_balance=9800, tier="silver", qualifying_spend_cents=190000),
              guest(), None]
    for type_ in MOMENT_TYPES:
        if type_.startswith("api:"):
            m = Moment.api("r", type_[4:], NOW, CART)
        elif type_ == "purchase":
            m = Moment.purchase("p", NOW, 4099)
        else:
            m = event(type_, points=120)
        for who in people:
            d = decide(m, who, ctx(), cat, [], NOW)
            for cd in d.channels.values():
                for o in cd.offers:
                    assert "{" not in o.body and "}" not in o.body
    near = decide(event("milestone_approaching"), profile(points_balance=9800), ctx(), cat,
                  [], NOW)
    assert near.chosen("email")[0].offer_id == "sku-rain-jacket"  # 249 points close 200


def test_repeat_reason_names_the_latest_send_of_that_offer_in_the_window() -> None:
    policy = CAT.contact_policy
    days = timedelta(days=policy.repeat_days)
    history = [
        Send("dbl", "email", NOW - days),  # at the window's open end: outside
        Send("dbl", "push", NOW - days / 2),
        Send("dbl", "email", NOW - days / 4),  # the latest in the window
        Send("other", "sms", NOW - timedelta(hours=1)),
        Send("dbl", "sms", NOW + timedelta(hours=1)),  # after now: not history yet
    ]
    why = repeat_reason("dbl", policy, history, NOW)
    assert why is not None and why.code == "repeat_offer"
    assert why.text.startswith(f"offer sent on email at {(NOW - days / 4).isoformat()}")
    assert repeat_reason("dbl", policy, history[:1] + history[3:], NOW) is None
    assert repeat_reason("new", policy, history, NOW) is None
