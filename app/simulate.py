"""Synthetic traffic for the three reference sources (``loyalty-cdp simulate``).

Three layers, so tests can use whichever they need:

* :func:`generate` -- the rows, without touching a database: a :class:`Traffic` whose
  ``ops`` are :class:`RowOp` (insert or update, with the *full* row image after the change),
  sorted by event time. ``Traffic.by_source()`` splits them per source and
  ``Traffic.final_rows()`` gives the end state of every table, so expected results can be
  computed offline.
* :func:`write_ops` -- one writer for one source: applies ops in order through parameterised
  SQL (consecutive identical statements as ``executemany`` inside a pipeline), committing
  every few hundred rows -- or, when throttled, ~20 times a second -- so CDC sees a stream of
  small transactions. Rows that belong together (a transaction and its lines, an order and its
  items, an enrollment and the customer update) always commit together.
* :func:`simulate` -- generate and write all three sources concurrently (one thread per
  source), with an optional global ``rate`` in rows/s and a progress callback.

Determinism: everything derives from ``random.Random(seed)`` and ``start``; no wall clock.
The same ``(members, days, seed, start)`` gives byte-identical rows. Ids are numbered in
event-time order and carry the seed (``M7-0000001``), so runs with different seeds can share
a database, while re-running the same seed into the same database fails with a clear
:class:`SimulationError` (its rows are already there).

What the traffic contains (each op carries ``tags`` naming the behaviour it shows):

* members enrolling on each channel: POS card issued (``enroll_pos``), web
  ``loyalty_enrollments`` + ``customers.member_no`` (``enroll_web``; some were guests who had
  already ordered), app ``users.member_no`` set (``enroll_app``);
* the same person on several channels: linked by ``member_no``, or sharing only an email
  (``shared_email``, email written with varying case/whitespace), occasionally with a second
  ``member_no`` (``duplicate_membership``: the two memberships merge by email); some persons
  have another account that shares only the phone (``shared_phone_only``: phone does not merge
  by default). Phones are written in varying formats with the same digits.
* purchases: POS transactions with lines (``purchase_pos``; ``guest_purchase`` when
  ``card_no`` is null), web orders ``placed`` -> ``paid`` (``purchase_web``) or ``cancelled``
  (``order_cancelled``), app purchases (``purchase_app``); web guests order without
  ``member_no`` (``guest_purchase``);
* refunds: web ``refunded_amount`` increases (``refund_partial`` -> ``partially_refunded``,
  ``refund_full`` -> ``refunded``), POS returns (``pos_return``, partial or full);
* redemptions in the app (``redemption``), some of them overdrafts (``overdraft``: the points
  exceed 4 x the whole person's earn base up to then, so they exceed the balance under the
  default program -- tier multiplier <= 2, campaign multiplier <= 2 -- whatever merged);
* consent changes: web ``email_opt_in``/``sms_consent``/``admt_opt_out`` (``consent_web``),
  app ``push_opt_in``/``push_token`` (``consent_app``); app events (``app_event``,
  ``referral_sent``/``referral_converted`` included).

The first members of every run are scripted so that every kind above occurs even for a
handful of members (a demo with ``--members 5`` still shows an overdraft and a refund).
"""

from __future__ import annotations

import functools
import heapq
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg

SOURCES: tuple[str, ...] = ("pos", "web", "app")

# Column order of every table (inserts write all of them) and its primary key.
TABLES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("pos", "loyalty_cards"): (("card_no", "member_no", "phone", "issued_at"), ("card_no",)),
    ("pos", "transactions"): (
        ("txn_id", "store_id", "card_no", "total", "currency", "occurred_at"), ("txn_id",)),
    ("pos", "transaction_lines"): (
        ("txn_id", "line_no", "sku", "qty", "unit_price"), ("txn_id", "line_no")),
    ("pos", "returns"): (("return_id", "txn_id", "amount", "occurred_at"), ("return_id",)),
    ("web", "customers"): (
        ("customer_id", "email", "phone", "member_no", "email_opt_in", "sms_consent",
         "admt_opt_out", "updated_at"), ("customer_id",)),
    ("web", "loyalty_enrollments"): (("member_no", "customer_id", "enrolled_at"), ("member_no",)),
    ("web", "orders"): (
        ("order_id", "customer_id", "total", "currency", "status", "refunded_amount",
         "updated_at"), ("order_id",)),
    ("web", "order_items"): (
        ("order_id", "line_no", "sku", "qty", "unit_price"), ("order_id", "line_no")),
    ("app", "users"): (
        ("user_id", "email", "phone", "member_no", "push_token", "push_opt_in", "updated_at"),
        ("user_id",)),
    ("app", "purchases"): (
        ("purchase_id", "user_id", "total", "currency", "occurred_at"), ("purchase_id",)),
    ("app", "redemptions"): (
        ("redemption_id", "user_id", "points", "reward_code", "occurred_at"), ("redemption_id",)),
    ("app", "app_events"): (
        ("event_id", "user_id", "kind", "sku", "occurred_at"), ("event_id",)),
}

CENT = Decimal("0.01")
DAY = 86_400.0
CURRENCY = "USD"
ProgressFn = Callable[[int, int], None]


class SimulationError(RuntimeError):
    """One-line, user-facing failure (the CLI prints it)."""


@dataclass(frozen=True, slots=True)
class RowOp:
    """One row change: ``row`` is the full row image after it (inserts and updates alike)."""

    source: str
    table: str
    action: Literal["insert", "update"]
    row: Mapping[str, Any]
    at: datetime
    unit: int  # ops of one source with the same unit commit in one transaction
    tags: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[Any, ...]:
        return tuple(self.row[k] for k in TABLES[(self.source, self.table)][1])


@dataclass
class Traffic:
    ops: list[RowOp]
    members: int
    days: int
    seed: int
    start: datetime

    def by_source(self) -> dict[str, list[RowOp]]:
        out: dict[str, list[RowOp]] = {s: [] for s in SOURCES}
        for op in self.ops:
            out[op.source].append(op)
        return out

    def final_rows(self) -> dict[tuple[str, str], dict[tuple[Any, ...], Mapping[str, Any]]]:
        """(source, table) -> primary key -> last row image."""
        out: dict[tuple[str, str], dict[tuple[Any, ...], Mapping[str, Any]]] = {
            t: {} for t in TABLES
        }
        for op in self.ops:
            out[(op.source, op.table)][op.key] = op.row
        return out

    def tag_counts(self) -> Counter[str]:
        return Counter(tag for op in self.ops for tag in op.tags)


@dataclass
class SimulationSummary:
    members: int
    days: int
    seed: int
    start: datetime
    end: datetime
    rows_by_source: dict[str, int]
    rows_by_table: dict[str, int]
    tags: dict[str, int]
    elapsed_s: float
    rows: int = field(init=False)
    rows_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.rows = sum(self.rows_by_source.values())
        self.rows_per_s = self.rows / self.elapsed_s if self.elapsed_s > 0 else math.inf


# --------------------------------------------------------------------------- generation

_FIRST = ("ann", "bob", "chen", "dana", "eli", "fatima", "gus", "hana", "ivan", "jo", "kofi",
          "lea", "mo", "nia", "omar", "pia", "quinn", "raj", "sofia", "tom", "uma", "vik",
          "wen", "xavi", "yara", "zoe")
_LAST = ("lee", "smith", "garcia", "nguyen", "muller", "rossi", "khan", "silva", "kim",
         "novak", "olsen", "park", "diaz", "ito", "brown", "moreau")
_DOMAINS = ("example.com", "example.org", "example.net")
_PHONE_FORMATS = (
    "+1 {a}-{b}-{c}", "+1 ({a}) {b}-{c}", "1{a}{b}{c}", "+1.{a}.{b}.{c}", "+1{a}{b}{c}",
)
_REWARDS = ((100, "RWD-COFFEE"), (250, "RWD-5OFF"), (500, "RWD-10OFF"), (1000, "RWD-25OFF"),
            (2500, "RWD-70OFF"))
_STORES = tuple(f"S{n:03d}" for n in range(1, 13))


def _catalog() -> tuple[tuple[str, Decimal], ...]:
    """A fixed product catalog (independent of the seed): (sku, unit price)."""
    rng = random.Random(20_240_101)
    items = []
    for n in range(1, 81):
        price = Decimal(str(round(min(400.0, rng.lognormvariate(3.0, 0.9)) + 0.99, 0))) - CENT
        items.append((f"SKU-{n:05d}", max(price, Decimal("1.99"))))
    return tuple(items)


CATALOG = _catalog()


@dataclass
class _Person:
    idx: int
    email: str
    phone_digits: str
    member_nos: list[str] = field(default_factory=list)
    email_accounts: int = 0
    earn_base: int = 0  # sum of floor(total) over every purchase so far (all channels)
    member_earn: int = 0  # the same over purchases made as a member (an estimate of earn)
    redeemed: int = 0
    force: set[str] = field(default_factory=set)


@dataclass
class _Account:
    """A web customer or app user and its current row image."""

    person: _Person
    row: dict[str, Any]
    referral_pending: int = 0


class _Gen:
    def __init__(self, members: int, days: int, seed: int, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.rng = random.Random(seed)
        self.members, self.days, self.seed, self.start = members, days, seed, start
        self.horizon = days * DAY
        self.ns = f"{seed}"
        self.schedule: list[tuple[int, int, Callable[[datetime], None]]] = []  # a heap
        self.seq = 0
        self.counters: Counter[str] = Counter()
        self.ops: list[RowOp] = []
        self.unit = 0
        self.current_units: dict[str, int] = {}

    # ---- ids, emission -------------------------------------------------------------

    def new_id(self, prefix: str, width: int = 7) -> str:
        self.counters[prefix] += 1
        return f"{prefix}{self.ns}-{self.counters[prefix]:0{width}d}"

    def at(self, offset_s: float, fn: Callable[[datetime], None]) -> None:
        """Schedule ``fn`` at ``start + offset_s`` (whole seconds); dropped past the window."""
        offset = math.floor(offset_s)
        if 0 <= offset < self.horizon:
            self.seq += 1
            heapq.heappush(self.schedule, (offset, self.seq, fn))

    def emit(self, source: str, table: str, action: Literal["insert", "update"],
             row: Mapping[str, Any], at: datetime, *tags: str) -> None:
        if source not in self.current_units:
            self.unit += 1
            self.current_units[source] = self.unit
        cols = TABLES[(source, table)][0]
        image = {c: row.get(c) for c in cols}
        self.ops.append(RowOp(source, table, action, image, at, self.current_units[source],
                              frozenset(tags)))

    def run(self) -> list[RowOp]:
        """Execute the schedule in event-time order (actions may schedule later ones)."""
        while self.schedule:
            offset, _seq, fn = heapq.heappop(self.schedule)
            self.current_units = {}
            fn(self.start + timedelta(seconds=offset))
        return self.ops

    # ---- random helpers ---------------------------------------------------------------

    def poisson_times(self, begin: float, per_day: float, at_least: int = 0,
                      soon: bool = False) -> list[float]:
        """Event offsets of a Poisson process from ``begin`` to the end of the window, plus
        ``at_least`` extra ones within 10 days (``soon``: 8 % of the window) -- used for
        behaviours that must happen (scripted persons, a guest's first order)."""
        out: list[float] = []
        t = begin
        while per_day > 0:
            t += self.rng.expovariate(per_day / DAY)
            if t >= self.horizon:
                break
            out.append(t)
        for _ in range(at_least if begin + 60 < self.horizon else 0):
            span = 0.08 * self.horizon if soon else 10 * DAY
            out.append(self.rng.uniform(begin + 60, min(self.horizon, begin + span)))
        return sorted(out)

    def basket(self) -> tuple[list[tuple[str, int, Decimal]], Decimal]:
        lines = []
        for _ in range(self.rng.choice((1, 1, 2, 2, 3, 4))):
            sku, price = self.rng.choice(CATALOG)
            lines.append((sku, self.rng.choice((1, 1, 1, 2, 3)), price))
        total = sum((q * p for _, q, p in lines), Decimal("0")).quantize(CENT)
        return lines, total

    def email_as_typed(self, email: str) -> str:
        r = self.rng.random()
        if r < 0.15:
            return email.title()
        if r < 0.25:
            return f"  {email.upper()} "
        return email

    def phone_as_typed(self, digits: str) -> str:
        a, b, c = digits[1:4], digits[4:7], digits[7:]
        return self.rng.choice(_PHONE_FORMATS).format(a=a, b=b, c=c)

    def new_person(self, idx: int) -> _Person:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        email = f"{first}.{last}.{self.ns}x{idx}@{self.rng.choice(_DOMAINS)}"
        phone = f"1555{self.rng.randrange(10**7):07d}"
        return _Person(idx, email, phone)


# --------------------------------------------------------------------------- behaviours


class _Script(_Gen):
    """Plans the behaviour of every person (phase 1) as scheduled closures (phase 2)."""

    # Scripted first members: (enrollment channel, forced behaviours).
    SCRIPTED: tuple[tuple[str, frozenset[str]], ...] = (
        ("web", frozenset({"guest_first", "extra_app", "duplicate", "refund_twice"})),
        ("app", frozenset({"overdraft", "extra_web"})),
        ("pos", frozenset({"extra_web", "phone_twin", "pos_return", "card_purchase"})),
        ("web", frozenset({"cancel", "consent"})),
        ("pos", frozenset({"anonymous", "extra_app", "consent"})),
    )

    def plan(self) -> None:
        for i in range(self.members):
            person = self.new_person(i)
            if i < len(self.SCRIPTED):
                channel, person.force = self.SCRIPTED[i][0], set(self.SCRIPTED[i][1])
            else:
                channel = self.rng.choices(SOURCES, weights=(40, 35, 25))[0]
            self.plan_member(person, channel)
        for g in range(max(1, round(self.members * 0.3))):
            self.plan_guest(self.new_person(self.members + g))

    def new_member_no(self, person: _Person) -> str:
        member_no = self.new_id("M")
        person.member_nos.append(member_no)
        return member_no

    def account_member_no(self, person: _Person, link: bool, duplicate: bool) -> str | None:
        """member_no of a new web/app account: a second membership, the person's, or none."""
        if duplicate:
            return self.new_member_no(person)
        return person.member_nos[0] if link and person.member_nos else None

    @staticmethod
    def shares(person: _Person) -> tuple[str, ...]:
        """Called when an email-bearing account is created: tags it if the email repeats."""
        person.email_accounts += 1
        return ("shared_email",) if person.email_accounts > 1 else ()

    def after(self, person: _Person, t: float, lo: float, hi: float) -> float:
        """``t`` plus a delay in [lo, hi) s; scripted persons' delays are squeezed into 8 % of
        the window so that their forced behaviours happen even in a short simulation."""
        if person.force:
            hi = min(hi, 0.08 * self.horizon)
            lo = min(lo, hi / 4)
        return t + self.rng.uniform(lo, hi)

    def want(self, person: _Person, flag: str, p: float) -> bool:
        return flag in person.force or self.rng.random() < p

    def plan_member(self, person: _Person, channel: str) -> None:
        te = self.rng.uniform(0, (0.05 if person.force else 0.6) * self.horizon)
        if channel == "pos":
            self.plan_card(person, te, enroll=True)
        elif channel == "web":
            guest_first = self.want(person, "guest_first", 0.25)
            self.plan_customer(person, self.rng.uniform(0, te) if guest_first else te,
                               enroll_at=te)
        else:
            signup = self.rng.uniform(0, te) if self.rng.random() < 0.4 else te
            self.plan_user(person, signup, enroll_at=te)
        later = lambda: self.after(person, te, 3600, 20 * DAY)  # noqa: E731
        if channel != "pos" and self.rng.random() < 0.3:
            self.plan_card(person, later(), enroll=False)
        dup = "duplicate" in person.force or self.rng.random() < 0.1
        if channel != "web" and self.want(person, "extra_web", 0.45):
            shares_app = channel == "app"
            self.plan_customer(person, later(), link=self.rng.random() < 0.6,
                               duplicate=dup and shares_app)
        if channel != "app" and self.want(person, "extra_app", 0.4):
            self.plan_user(person, later(), link=self.rng.random() < 0.5,
                           duplicate=dup and channel == "web")
        if self.want(person, "phone_twin", 0.06):
            twin = _Person(person.idx, f"work.{person.email}", person.phone_digits)
            self.plan_customer(twin, later(), tags=("shared_phone_only",))
        if self.want(person, "anonymous", 0.3):
            for t in self.poisson_times(0, 1 / 30, at_least=1 if "anonymous" in person.force
                                        else 0):
                self.at(t, lambda at, p=person: self.pos_txn(p, None, at))

    def plan_guest(self, person: _Person) -> None:
        kind = self.rng.random()
        first = self.rng.uniform(0, 0.8 * self.horizon)
        if kind < 0.5:
            self.plan_customer(person, first, guest_orders=True)
        elif kind < 0.7:
            self.plan_user(person, first)
        else:
            for t in self.poisson_times(first, 1 / 10, at_least=1):
                self.at(t, lambda at, p=person: self.pos_txn(p, None, at))

    # ---- POS ------------------------------------------------------------------------

    def plan_card(self, person: _Person, t: float, enroll: bool) -> None:
        card: dict[str, Any] = {}
        has_phone = self.rng.random() < 0.7 or "phone_twin" in person.force

        def issue(at: datetime) -> None:
            enrolls = enroll or not person.member_nos
            if enrolls:
                self.new_member_no(person)
            card.update(card_no=self.new_id("C", 8), member_no=person.member_nos[0],
                        phone=self.phone_as_typed(person.phone_digits) if has_phone else None,
                        issued_at=at)
            self.emit("pos", "loyalty_cards", "insert", card, at,
                      *(("enroll_pos",) if enrolls else ()))

        self.at(t, issue)
        at_least = 2 if person.force & {"pos_return", "card_purchase"} else 0
        for tp in self.poisson_times(t + 60, self.rng.lognormvariate(-2.3, 0.6),
                                     at_least=at_least, soon=True):
            self.at(tp, lambda at: self.pos_txn(person, card, at))

    def pos_txn(self, person: _Person, card: dict[str, Any] | None, at: datetime) -> None:
        lines, total = self.basket()
        use_card = card is not None and (
            "card_purchase" in person.force or self.rng.random() < 0.9)
        card_no = card["card_no"] if card is not None and use_card else None
        txn = {"txn_id": self.new_id("T", 9), "store_id": self.rng.choice(_STORES),
               "card_no": card_no, "total": total, "currency": CURRENCY, "occurred_at": at}
        tags = ("purchase_pos",) if card_no else ("purchase_pos", "guest_purchase")
        self.emit("pos", "transactions", "insert", txn, at, *tags)
        for n, (sku, qty, price) in enumerate(lines, 1):
            self.emit("pos", "transaction_lines", "insert",
                      {"txn_id": txn["txn_id"], "line_no": n, "sku": sku, "qty": qty,
                       "unit_price": price}, at)
        person.earn_base += int(total)
        if card_no is not None:
            person.member_earn += int(total)
        forced = card_no is not None and "pos_return" in person.force
        if forced or self.rng.random() < 0.07:
            person.force.discard("pos_return")
            full = self.rng.random() < 0.25
            sku, qty, price = lines[0]
            amount = total if full else min(total, price)
            offset = self.after(person, (at - self.start).total_seconds(), 3600, 15 * DAY)
            self.at(offset, lambda rat: self.emit(
                "pos", "returns", "insert",
                {"return_id": self.new_id("R", 8), "txn_id": txn["txn_id"], "amount": amount,
                 "occurred_at": rat}, rat, "pos_return", "refund_full" if full else
                "refund_partial"))

    # ---- web ------------------------------------------------------------------------

    def plan_customer(self, person: _Person, t: float, *, enroll_at: float | None = None,
                      link: bool = False, duplicate: bool = False, guest_orders: bool = False,
                      tags: tuple[str, ...] = ()) -> None:
        acct = _Account(person, {})

        def create(at: datetime) -> None:
            member_no = self.account_member_no(person, link, duplicate)
            acct.row = {"customer_id": self.new_id("W", 8),
                        "email": self.email_as_typed(person.email),
                        "phone": self.phone_as_typed(person.phone_digits)
                        if self.rng.random() < 0.6 or tags else None,
                        "member_no": member_no, "email_opt_in": self.rng.random() < 0.6,
                        "sms_consent": self.rng.random() < 0.3, "admt_opt_out": False,
                        "updated_at": at}
            extra = ("enroll_web", "duplicate_membership") if duplicate else ()
            self.emit("web", "customers", "insert", acct.row, at, *self.shares(person), *tags,
                      *extra)
            if duplicate:
                self.emit("web", "loyalty_enrollments", "insert",
                          {"member_no": member_no, "customer_id": acct.row["customer_id"],
                           "enrolled_at": at}, at)
            if enroll_at is not None and enroll_at <= t:
                enroll(at)

        def enroll(at: datetime) -> None:
            acct.row = {**acct.row, "member_no": self.new_member_no(person), "updated_at": at}
            self.emit("web", "loyalty_enrollments", "insert",
                      {"member_no": acct.row["member_no"], "customer_id": acct.row["customer_id"],
                       "enrolled_at": at}, at, "enroll_web")
            self.emit("web", "customers", "update", acct.row, at)

        self.at(t, create)
        if enroll_at is not None and enroll_at > t:
            self.at(enroll_at, enroll)
        guest = enroll_at is None and not link and not duplicate
        forced = person.force & {"guest_first", "refund_twice", "cancel"}
        at_least = 2 if forced else (1 if guest_orders else 0)
        rate = self.rng.lognormvariate(-2.8, 0.6) * (2 if forced else 1)
        for tp in self.poisson_times(t + 60, rate, at_least=at_least, soon=True):
            guest_now = guest or (enroll_at is not None and tp < enroll_at)
            self.at(tp, lambda at, g=guest_now: self.web_order(acct, at, g))
        if self.want(person, "consent", 0.5):
            for tc in self.poisson_times(t + 60, 1 / 30, at_least=1 if person.force else 0,
                                         soon=True):
                self.at(tc, lambda at: self.web_consent(acct, at))

    def web_consent(self, acct: _Account, at: datetime) -> None:
        r = self.rng.random()
        if r < 0.45:
            change = {"email_opt_in": not acct.row["email_opt_in"]}
        elif r < 0.9:
            change = {"sms_consent": not acct.row["sms_consent"]}
        else:
            change = {"admt_opt_out": not acct.row["admt_opt_out"]}
        acct.row = {**acct.row, **change, "updated_at": at}
        self.emit("web", "customers", "update", acct.row, at, "consent_web")

    def web_order(self, acct: _Account, at: datetime, guest: bool) -> None:
        person = acct.person
        lines, total = self.basket()
        order = {"order_id": self.new_id("O", 9), "customer_id": acct.row["customer_id"],
                 "total": total, "currency": CURRENCY, "status": "placed",
                 "refunded_amount": Decimal("0.00"), "updated_at": at}
        self.emit("web", "orders", "insert", order, at, "order_placed")
        for n, (sku, qty, price) in enumerate(lines, 1):
            self.emit("web", "order_items", "insert",
                      {"order_id": order["order_id"], "line_no": n, "sku": sku, "qty": qty,
                       "unit_price": price}, at)
        t0 = (at - self.start).total_seconds()
        pay_first = "refund_twice" in person.force  # its refunds must not be cancelled away
        if "cancel" in person.force or (not pay_first and self.rng.random() < 0.1):
            person.force.discard("cancel")
            self.at(self.after(person, t0, 600, 2 * DAY),
                    lambda a: self.order_update(order, a, {"status": "cancelled"},
                                                "order_cancelled"))
            return
        paid_tags = ("purchase_web", "guest_purchase") if guest else ("purchase_web",)
        t_paid = self.after(person, t0, 60, 1800)

        def paid(a: datetime) -> None:
            person.earn_base += int(total)
            if not guest:
                person.member_earn += int(total)
            self.order_update(order, a, {"status": "paid"}, *paid_tags)

        self.at(t_paid, paid)
        if "refund_twice" in person.force or self.rng.random() < 0.12:
            twice = "refund_twice" in person.force or self.rng.random() < 0.3
            person.force.discard("refund_twice")
            first = (total * Decimal(self.rng.choice((20, 30, 50))) / 100).quantize(CENT)
            if not twice and self.rng.random() < 0.4:
                first = total
            t1 = self.after(person, t_paid, DAY, 10 * DAY)
            self.at(t1, lambda a: self.refund(order, a, first))
            if twice and first < total:
                self.at(self.after(person, t1, DAY, 10 * DAY),
                        lambda a: self.refund(order, a, total))

    def refund(self, order: dict[str, Any], at: datetime, cumulative: Decimal) -> None:
        full = cumulative >= order["total"]
        self.order_update(order, at, {"refunded_amount": cumulative,
                                      "status": "refunded" if full else "partially_refunded"},
                          "refund_full" if full else "refund_partial")

    def order_update(self, order: dict[str, Any], at: datetime, change: dict[str, Any],
                     *tags: str) -> None:
        order.update(change, updated_at=at)
        self.emit("web", "orders", "update", dict(order), at, *tags)

    # ---- app ------------------------------------------------------------------------

    def plan_user(self, person: _Person, t: float, *, enroll_at: float | None = None,
                  link: bool = False, duplicate: bool = False) -> None:
        acct = _Account(person, {})
        opted = self.rng.random() < 0.5

        def create(at: datetime) -> None:
            member_no = self.account_member_no(person, link, duplicate)
            acct.row = {"user_id": self.new_id("U", 8),
                        "email": self.email_as_typed(person.email),
                        "phone": self.phone_as_typed(person.phone_digits)
                        if self.rng.random() < 0.5 else None,
                        "member_no": member_no,
                        "push_token": self.push_token() if opted else None,
                        "push_opt_in": opted, "updated_at": at}
            extra = ("enroll_app", "duplicate_membership") if duplicate else ()
            self.emit("app", "users", "insert", acct.row, at, *self.shares(person), *extra)
            if enroll_at is not None and enroll_at <= t:
                enroll(at)

        def enroll(at: datetime) -> None:
            acct.row = {**acct.row, "member_no": self.new_member_no(person), "updated_at": at}
            self.emit("app", "users", "update", acct.row, at, "enroll_app")

        self.at(t, create)
        if enroll_at is not None and enroll_at > t:
            self.at(enroll_at, enroll)
        member_from = enroll_at if enroll_at is not None else (t if link or duplicate else None)
        rate = self.rng.lognormvariate(-3.0, 0.6)
        scripted = 1 if person.force else 0
        for tp in self.poisson_times(t + 60, rate, at_least=scripted, soon=True):
            self.at(tp, lambda at, m=member_from is not None and tp >= member_from:
                    self.app_purchase(acct, at, m))
        for te in self.poisson_times(t + 60, self.rng.uniform(0.1, 0.8), scripted, soon=True):
            self.at(te, lambda at: self.app_event(acct, at))
        for tc in self.poisson_times(t + 60, 1 / 40, scripted, soon=True):
            self.at(tc, lambda at: self.app_consent(acct, at))
        if member_from is not None:
            forced = "overdraft" in person.force
            for tr in self.poisson_times(member_from + 60, 1 / 20, at_least=1 if forced else 0,
                                         soon=True):
                self.at(tr, lambda at: self.redeem(acct, at))

    def push_token(self) -> str:
        return "ptk_" + "".join(self.rng.choices("0123456789abcdef", k=32))

    def app_purchase(self, acct: _Account, at: datetime, member: bool) -> None:
        _, total = self.basket()
        self.emit("app", "purchases", "insert",
                  {"purchase_id": self.new_id("P", 9), "user_id": acct.row["user_id"],
                   "total": total, "currency": CURRENCY, "occurred_at": at}, at,
                  "purchase_app", *(() if member else ("guest_purchase",)))
        acct.person.earn_base += int(total)
        if member:
            acct.person.member_earn += int(total)

    def redeem(self, acct: _Account, at: datetime) -> None:
        person = acct.person
        available = person.member_earn - person.redeemed
        affordable = [r for r in _REWARDS if r[0] <= available]
        if "overdraft" in person.force or (not affordable and self.rng.random() < 0.1):
            person.force.discard("overdraft")
            points, code = 4 * person.earn_base + 500, "RWD-STAFF-OVERRIDE"
            tags: tuple[str, ...] = ("redemption", "overdraft")
        elif affordable:
            points, code = self.rng.choice(affordable)
            tags = ("redemption",)
        else:
            return
        person.redeemed += points
        self.emit("app", "redemptions", "insert",
                  {"redemption_id": self.new_id("D", 8), "user_id": acct.row["user_id"],
                   "points": points, "reward_code": code, "occurred_at": at}, at, *tags)

    def app_event(self, acct: _Account, at: datetime) -> None:
        r = self.rng.random()
        if acct.referral_pending and r < 0.1:
            acct.referral_pending -= 1
            kind, sku = "referral_converted", None
        elif r < 0.06:
            acct.referral_pending += 1
            kind, sku = "referral_sent", None
        else:
            kind, sku = ("view" if r < 0.7 else "add_to_cart"), self.rng.choice(CATALOG)[0]
        self.emit("app", "app_events", "insert",
                  {"event_id": self.new_id("E", 10), "user_id": acct.row["user_id"],
                   "kind": kind, "sku": sku, "occurred_at": at}, at, "app_event", kind)

    def app_consent(self, acct: _Account, at: datetime) -> None:
        r = self.rng.random()
        if r < 0.3 and acct.row["push_opt_in"]:
            change: dict[str, Any] = {"push_token": self.push_token()}  # token rotation
        elif acct.row["push_opt_in"]:
            change = {"push_opt_in": False}
        else:
            change = {"push_opt_in": True, "push_token": self.push_token()}
        acct.row = {**acct.row, **change, "updated_at": at}
        self.emit("app", "users", "update", acct.row, at, "consent_app")


def generate(members: int, days: int, seed: int, start: datetime) -> Traffic:
    """All rows of a simulation, in event-time order, without touching a database."""
    if members < 0 or days <= 0:
        raise ValueError("members must be >= 0 and days > 0")
    script = _Script(members, days, seed, start)
    script.plan()
    return Traffic(script.run(), members, days, seed, start)


# --------------------------------------------------------------------------- writing


def _sql(op: RowOp) -> tuple[str, tuple[str, ...]]:
    return _statement(op.source, op.table, op.action)


@functools.cache
def _statement(source: str, table: str, action: str) -> tuple[str, tuple[str, ...]]:
    """(SQL, parameter column order) of an insert or update of ``table``."""
    cols, key = TABLES[(source, table)]
    if action == "insert":
        marks = ", ".join(["%s"] * len(cols))
        return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", cols
    rest = tuple(c for c in cols if c not in key)
    sets = ", ".join(f"{c} = %s" for c in rest)
    where = " AND ".join(f"{k} = %s" for k in key)
    return f"UPDATE {table} SET {sets} WHERE {where}", rest + key


def _batches(ops: Sequence[RowOp], batch_rows: int) -> Iterable[list[RowOp]]:
    """Cut ``ops`` into commit batches of >= ``batch_rows`` rows, never splitting a unit."""
    batch: list[RowOp] = []
    for op in ops:
        if len(batch) >= batch_rows and batch[-1].unit != op.unit:
            yield batch
            batch = []
        batch.append(op)
    if batch:
        yield batch


def write_ops(dsn: str, ops: Sequence[RowOp], *, rate: float | None = None,
              batch_rows: int | None = None,
              progress: Callable[[int], None] | None = None) -> int:
    """Apply ``ops`` (one source's, in order) to ``dsn``; returns the number of rows written.

    ``rate`` throttles to that many rows/s; ``progress(n)`` is called after each commit with
    the rows that commit wrote.
    """
    if batch_rows is None:
        batch_rows = 500 if rate is None else max(1, min(500, int(rate / 20)))
    written = 0
    began = time.monotonic()
    try:
        with psycopg.connect(dsn) as conn:
            _check_not_written(conn, ops)
            for batch in _batches(ops, batch_rows):
                with conn.pipeline(), conn.cursor() as cur:
                    i = 0
                    while i < len(batch):
                        query, cols = _sql(batch[i])
                        j = i
                        while j < len(batch) and _sql(batch[j])[0] == query:
                            j += 1
                        cur.executemany(query, [tuple(o.row[c] for c in cols)
                                                for o in batch[i:j]])
                        i = j
                conn.commit()
                written += len(batch)
                if progress is not None:
                    progress(len(batch))
                if rate:
                    ahead = began + written / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
    except psycopg.errors.UniqueViolation as exc:
        raise SimulationError(
            "the source database already holds rows of this simulation (same seed); "
            "use another --seed or a fresh state dir"
        ) from exc
    except psycopg.OperationalError as exc:
        raise SimulationError(f"cannot write to {_safe(dsn)}: {str(exc).splitlines()[0]}") \
            from exc
    return written


def _check_not_written(conn: psycopg.Connection[Any], ops: Sequence[RowOp]) -> None:
    """Fail early (before a pipeline aborts noisily) if the first insert is already there."""
    first = next((op for op in ops if op.action == "insert"), None)
    if first is None:
        return
    key = TABLES[(first.source, first.table)][1]
    where = " AND ".join(f"{k} = %s" for k in key)
    found = conn.execute(f"SELECT 1 FROM {first.table} WHERE {where}", first.key).fetchone()
    conn.rollback()
    if found:
        raise psycopg.errors.UniqueViolation(f"{first.table} {first.key} exists")


def _safe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(dsn).render_as_string(hide_password=True)
    except Exception:  # not a URL (key=value form): say nothing about it
        return "the database"


def simulate(dsns: Mapping[str, str], members: int, days: int, rate: float | None,
             seed: int, start: datetime,
             progress: ProgressFn | None = None) -> SimulationSummary:
    """Generate traffic and write it to the ``pos``/``web``/``app`` DSNs concurrently.

    ``rate`` is the total rows/s over the three sources (each writer gets its share); None is
    as fast as possible. ``progress(done, total)`` is called from the writer threads.
    """
    missing = [s for s in SOURCES if not dsns.get(s)]
    if missing:
        raise SimulationError(f"no DSN for source(s): {', '.join(missing)}")
    traffic = generate(members, days, seed, start)
    per_source = traffic.by_source()
    total = len(traffic.ops)
    done = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def tick(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if progress is not None:
                progress(done, total)

    def worker(source: str) -> None:
        ops = per_source[source]
        share = None if rate is None or not total else max(rate * len(ops) / total, 1e-3)
        try:
            write_ops(dsns[source], ops, rate=share, progress=tick)
        except BaseException as exc:
            errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(s,), name=f"simulate-{s}") for s in SOURCES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    if errors:
        raise errors[0]
    return SimulationSummary(
        members=members, days=days, seed=seed, start=start,
        end=start + timedelta(days=days),
        rows_by_source={s: len(per_source[s]) for s in SOURCES},
        rows_by_table=dict(Counter(f"{op.source}.{op.table}" for op in traffic.ops)),
        tags=dict(sorted(traffic.tag_counts().items())), elapsed_s=elapsed,
    )
