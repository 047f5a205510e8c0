"""Terse constructors of canonical records for the domain tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain.records import (
    ConsentChanged,
    Identifier,
    IdentityLinked,
    MemberEnrolled,
    PointsRedeemed,
    PurchaseCompleted,
    PurchaseRefunded,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def ids(**kw: str) -> tuple[Identifier, ...]:
    return tuple(sorted(Identifier(k, v) for k, v in kw.items()))


def link(key: str, t: datetime, **kw: str) -> IdentityLinked:
    return IdentityLinked(f"web.customers:{key}", "web", "customers", key, t, ids(**kw))


def enroll(member_no: str, t: datetime, **kw: str) -> MemberEnrolled:
    return MemberEnrolled(
        f"web.loyalty_enrollments:{member_no}", "web", "loyalty_enrollments", member_no, t,
        ids(member_no=member_no, **kw), member_no,
    )


def buy(pid: str, cents: int, t: datetime, **kw: str) -> PurchaseCompleted:
    return PurchaseCompleted(
        f"pos.transactions:{pid}", "pos", "transactions", pid, t, ids(**kw), f"pos:{pid}",
        cents, "USD",
    )


def refund(key: str, pid: str, cents: int, t: datetime) -> PurchaseRefunded:
    return PurchaseRefunded(
        f"pos.returns:{key}", "pos", "returns", key, t, (), key, f"pos:{pid}", cents
    )


def redeem(key: str, points: int, t: datetime, **kw: str) -> PointsRedeemed:
    return PointsRedeemed(
        f"app.redemptions:{key}", "app", "redemptions", key, t, ids(**kw), key, points, None
    )


def consent(key: str, t: datetime, **flags: bool) -> ConsentChanged:
    return ConsentChanged(
        f"web.customers:{key}#{t.isoformat()}", "web", "customers", key, t, ids(customer_id=key),
        tuple(sorted(flags.items())),
    )
