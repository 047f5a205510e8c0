"""Properties: no channel without consent; replaying a random stream of moments through
``decide`` + its own sends never exceeds a cap, repeats an offer or breaks quiet hours."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from app.decisioning import Moment, Send, decide
from app.decisioning.catalog import QuietHours
from tests.decisioning.helpers import NOW, catalog, ctx, event, profile

CAT = catalog()
POLICY = CAT.contact_policy
EVENTS = ["lapse_risk", "milestone_approaching", "tier_approaching", "tier_upgraded",
          "member_enrolled", "points_expiring"]

consents = st.fixed_dictionaries({
    "email_opt_in": st.booleans(), "sms_consent": st.booleans(),
    "push_opt_in": st.booleans(), "admt_opt_out": st.booleans(),
})
idents = st.sets(st.sampled_from(["email:a@example.com", "phone:+15551230000", "member_no:M1"]))
history = st.lists(
    st.builds(
        Send,
        st.sampled_from(["dbl", "winback", "p250", "receipt", "other"]),
        st.sampled_from(["email", "sms", "push", "in_app"]),
        st.floats(0, 40).map(lambda d: NOW - timedelta(days=d)),
    ),
    max_size=8,
)


@given(consents, idents, st.booleans(), st.sampled_from(EVENTS), history,
       st.integers(0, 12000), st.sampled_from(["member", "silver", "gold"]))
def test_never_a_channel_without_consent(
    consent: dict[str, bool], ids: set[str], token: bool, type_: str, hist: list[Send],
    balance: int, tier: str,
) -> None:
    p = profile(consent=consent, identifiers=sorted(ids), points_balance=balance, tier=tier)
    d = decide(event(type_), p, ctx(push_token=token), CAT, hist, NOW)
    allowed = {
        "email": consent["email_opt_in"] and "email:a@example.com" in ids,
        "sms": consent["sms_consent"] and "phone:+15551230000" in ids,
        "push": token and consent["push_opt_in"],
        "in_app": True,
    }
    for channel in d.channels:
        assert allowed[channel], (channel, consent, ids, token)
    if consent["admt_opt_out"]:
        assert d.ordering == "rules" and all(r.p is None for r in d.ranked)
    assert len([o for c in ("email", "sms", "push") for o in d.chosen(c)]) <= 1


def _quiet(channel: str, s: Send) -> bool:
    q: QuietHours | None = POLICY.channels[channel].quiet_hours
    return q is not None and q.contains(s.sent_at.astimezone(ZoneInfo(POLICY.timezone)).time())


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from([*EVENTS, "purchase"]), st.integers(1, 24 * 60)),
                min_size=1, max_size=40),
       st.integers(0, 12000))
def test_replay_never_exceeds_caps_or_repeats(
    stream: list[tuple[str, int]], balance: int
) -> None:
    p = profile(points_balance=balance)
    sent: list[Send] = []
    t = NOW
    for i, (type_, minutes) in enumerate(stream):
        t += timedelta(minutes=minutes * 3)
        m = (Moment.purchase(f"buy-{i}", t, 5000) if type_ == "purchase"
             else event(type_, at=t, eid=f"ev-{i}"))
        d = decide(m, p, ctx(), CAT, sent, t)
        again = decide(m, p, ctx(), CAT, sent, t)
        assert d.to_dict() == again.to_dict()
        sent.extend(d.sends())
    window = timedelta(days=POLICY.window_days)
    counted = {c for c, cp in POLICY.channels.items() if cp.global_cap_counts}
    for s in sent:
        recent = [x for x in sent if s.sent_at - window < x.sent_at <= s.sent_at]
        cap = POLICY.channels[s.channel].cap
        if cap is not None:
            assert sum(1 for x in recent if x.channel == s.channel) <= cap
        if s.channel in counted and POLICY.global_cap is not None:
            assert sum(1 for x in recent if x.channel in counted) <= POLICY.global_cap
        assert not _quiet(s.channel, s)
        for x in sent:
            if x.offer_id == s.offer_id != "receipt" and x.sent_at != s.sent_at:
                assert abs(x.sent_at - s.sent_at) >= timedelta(days=POLICY.repeat_days)
