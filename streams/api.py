"""``GET /v1/members/{id}`` on the worker's web port: one profile, as ``profiles export`` writes it.

``id`` is a member number (``M100``) or any identifier as ``type:value`` (``card_no:C1``,
``email:Ann@Example.com``). The value is normalised as SPEC 4 prescribes (email trimmed and
lower-cased, phone digits only, the rest trimmed) and hashed like the store's identifier index,
so the raw email or phone is never stored, logged or compared in clear.

Responses: 200 with the export document (the fields of SPEC 5, byte for byte what the store
holds), 404 ``{"error": ...}`` for an identifier no profile holds, 422 for an unknown
identifier type or an empty value. The store read is blocking (SQLAlchemy over psycopg), so
it runs on a small thread pool of its own, never on the event loop that carries Faust's
heartbeats and fetches, and never on the stages' single-thread executors.

``POST /v1/decisions`` (issue 6): ``{"identifier": "type:value", "placement":
"checkout_confirmation"|"cart"|"home", "cart": [{"sku", "qty", "unit_price"}]}`` -> the member
context (enrolled, tier, balance, points this cart earns, gaps to the next milestone and
tier) and the ranked offers with reasons, from the live profile in the store; an unknown
person gets the guest context and the enrollment offer. ``unit_price`` is a decimal in
currency units (a JSON number or string, read exactly, at most 2 places) converted to integer
cents. Bad input: 422 ``{"error": "<field>: <message>"}`` naming the field. An API answer is
not a contact: nothing is written (no contact history, caps and consent do not apply).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal
from urllib.parse import unquote

import faust
from faust.web import Request, Response, View
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import text

from app.decisioning import (
    CartLine,
    Contactability,
    DecisionContext,
    Moment,
    OfferCatalog,
    decide,
    load_catalog,
)
from app.domain.program import CompiledProgram, load_program
from app.domain.records import format_time, normalize_identifier
from app.settings import settings
from streams.store import Store, identifier_hash

__all__ = [
    "IDENTIFIER_TYPES",
    "DecisionRequest",
    "IdentifierError",
    "decide_request",
    "parse_decision_request",
    "parse_member_ref",
    "register_api",
]

IDENTIFIER_TYPES = ("member_no", "card_no", "customer_id", "user_id", "email", "phone")


class IdentifierError(ValueError):
    """The path names no valid identifier (answered with 422)."""


def parse_member_ref(ref: str) -> tuple[str, str]:
    """``M100`` -> ``("member_no", "M100")``; ``email: A@B.com`` -> ``("email", "a@b.com")``."""
    ref = unquote(ref)
    type_, sep, value = ref.partition(":")
    if not sep:
        type_, value = "member_no", ref
    type_ = type_.strip().lower()
    if type_ not in IDENTIFIER_TYPES:
        raise IdentifierError(
            f"unknown identifier type {type_!r}; expected one of {', '.join(IDENTIFIER_TYPES)}"
        )
    value = normalize_identifier(type_, value)
    if not value:
        raise IdentifierError(f"empty {type_} value")
    return type_, value


class CartItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=100)
    qty: int = Field(ge=1, le=10_000, strict=True)
    unit_price: Decimal = Field(ge=0, le=Decimal("1000000"))

    @field_validator("unit_price", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, str, Decimal)):
            raise ValueError("a decimal in currency units (JSON number or string)")
        try:
            d = Decimal(v)
        except InvalidOperation:
            raise ValueError("not a decimal number") from None
        if not d.is_finite() or d != d.quantize(Decimal("0.01")):
            raise ValueError("at most 2 decimal places")
        return d

    @property
    def unit_price_cents(self) -> int:
        return int(self.unit_price * 100)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identifier: str = Field(min_length=1, max_length=320)
    placement: Literal["checkout_confirmation", "cart", "home"]
    cart: list[CartItem] = Field(default_factory=list, max_length=500)


class RequestError(ValueError):
    """A bad decision request (answered with 422); the message names the field."""


def parse_decision_request(body: bytes) -> tuple[DecisionRequest, str, str]:
    """Validate the body; returns the request and the parsed identifier (type, value)."""
    try:
        # floats parsed as Decimal: 19.99 stays exactly 19.99
        raw = json.loads(body or b"null", parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("body: not valid JSON") from None
    if not isinstance(raw, dict):
        raise RequestError("body: must be a JSON object")
    try:
        req = DecisionRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise RequestError(f"{where}: {err['msg']}") from None
    try:
        type_, value = parse_member_ref(req.identifier)
    except IdentifierError as exc:
        raise RequestError(f"identifier: {exc}") from None
    return req, type_, value


@cache
def _config() -> tuple[CompiledProgram, OfferCatalog]:
    from streams.decisioning import offers_file

    return load_program(settings().program_file).compile(), load_catalog(offers_file())


def _profile(store: Store, type_: str, value: str) -> tuple[str, dict[str, Any]] | None:
    with store.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT p.profile_id, p.doc FROM profile_identifiers i JOIN profiles p"
                " USING (profile_id) WHERE i.type = :t AND i.value_hash = :h"
                " ORDER BY p.member_id NULLS LAST, p.profile_id LIMIT 1"
            ),
            {"t": type_, "h": identifier_hash(type_, value)},
        ).first()
    return None if row is None else (row[0], dict(row[1]))


def decide_request(
    store: Store, req: DecisionRequest, type_: str, value: str, now: datetime | None = None
) -> dict[str, Any]:
    """Read the live profile and decide (blocking: run it on the API's thread pool)."""
    program, catalog = _config()
    found = _profile(store, type_, value)
    pid, doc = found if found is not None else (None, None)
    now = now or datetime.now(UTC)
    cart = [CartLine(i.sku, i.qty, i.unit_price_cents) for i in req.cart]
    moment = Moment.api(uuid.uuid4().hex, req.placement, now, cart)
    d = decide(moment, doc, DecisionContext(program, pid, Contactability()), catalog, (), now)
    chosen = d.chosen("in_app")
    return {
        "request_id": moment.id,
        "placement": req.placement,
        "decided_at": format_time(now),
        "member": d.member.to_dict(),
        "ordering": d.ordering,
        "ordering_reason": d.ordering_reason,
        "offers": [o.to_dict() for o in chosen],
        "ranked": [r.to_dict() for r in d.ranked],
        "rejected": [r.to_dict() for r in d.rejected],
    }


def register_api(app: faust.App, store: Store, *, threads: int = 2) -> None:
    """Mount ``/v1/members/{id}`` and ``POST /v1/decisions`` on ``app``'s web server."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="api")
    _config()  # load (and validate) program and catalog before serving

    @app.page("/v1/decisions")
    class Decisions(View):
        async def post(self, request: Request) -> Response:
            try:
                req, type_, value = parse_decision_request(await request.read())
            except RequestError as exc:
                return self.json({"error": str(exc)}, status=422)
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(pool, decide_request, store, req, type_, value)
            return self.json(answer)

    @app.page("/v1/members/{member_ref}")
    class Member(View):
        async def get(self, request: Request, member_ref: str) -> Response:
            try:
                type_, value = parse_member_ref(member_ref)
            except IdentifierError as exc:
                return self.json({"error": str(exc)}, status=422)
            loop = asyncio.get_running_loop()
            doc: dict[str, Any] | None = await loop.run_in_executor(
                pool, store.profile_doc, type_, value
            )
            if doc is None:
                # Name the type only: the value may be an email or a phone (no PII in replies).
                return self.json({"error": f"no profile with this {type_}"}, status=404)
            return self.json(doc)
