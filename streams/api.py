"""The decision API's request parsing and answers: ``GET /v1/members/{id}`` and
``POST /v1/decisions`` on the worker's web port, served by the API process
(:mod:`streams.api_server`), not by the Faust web server (why: its docstring).

``id`` is a member number (``M100``) or any identifier as ``type:value`` (``card_no:C1``,
``email:Ann@Example.com``). The value is normalised as SPEC 4 prescribes (email trimmed and
lower-cased, phone digits only, the rest trimmed) and hashed like the store's identifier index,
so the raw email or phone is never stored, logged or compared in clear.

Responses: 200 with the export document (the fields of SPEC 5, byte for byte what the store
holds), 404 ``{"error": ...}`` for an identifier no profile holds, 422 for an unknown
identifier type or an empty value.

``POST /v1/decisions`` (issue 6): ``{"identifier": "type:value", "placement":
"checkout_confirmation"|"cart"|"home", "cart": [{"sku", "qty", "unit_price"}]}`` -> the member
context (enrolled, tier, balance, points this cart earns, gaps to the next milestone and
tier) and the ranked offers with reasons, from the live profile in the store; an unknown
person gets the guest context and the enrollment offer. ``unit_price`` is a decimal in
currency units (a JSON number or string, read exactly, at most 2 places) converted to integer
cents. Bad input: 422 ``{"error": "<field>: <message>"}`` naming the field. An API answer is
not a contact: nothing is written (no contact history, caps and consent do not apply).

Everything here is synchronous and I/O-free except :func:`decide_request` (a blocking store
read, for tests and tools): the API process reads the profile with its own async pool
(:data:`PROFILE_SQL`) and calls :func:`decision_answer`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    "PROFILE_SQL",
    "DecisionRequest",
    "IdentifierError",
    "RequestError",
    "decide_request",
    "decision_answer",
    "load_config",
    "parse_decision_request",
    "parse_member_ref",
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


#: floats parsed as Decimal (19.99 stays exactly 19.99); one decoder, not one per request
_DECODER = json.JSONDecoder(parse_float=Decimal)


def parse_decision_request(body: bytes) -> tuple[DecisionRequest, str, str]:
    """Validate the body; returns the request and the parsed identifier (type, value)."""
    try:
        raw = _DECODER.decode((body or b"null").decode())
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
def load_config() -> tuple[CompiledProgram, OfferCatalog]:
    """The compiled program and the offer catalog, loaded (and validated) once per process."""
    from streams.decisioning import offers_file

    return load_program(settings().program_file).compile(), load_catalog(offers_file())


#: The profile holding an identifier (member profile first), by the identifier's hash.
#: Parameters: (type, value_hash); columns: profile_id, doc (jsonb).
PROFILE_SQL = (
    "SELECT p.profile_id, p.doc FROM profile_identifiers i JOIN profiles p"
    " USING (profile_id) WHERE i.type = %s AND i.value_hash = %s"
    " ORDER BY p.member_id NULLS LAST, p.profile_id LIMIT 1"
)


def _profile(store: Store, type_: str, value: str) -> tuple[str, dict[str, Any]] | None:
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql(PROFILE_SQL, (type_, identifier_hash(type_, value))).first()
    return None if row is None else (row[0], dict(row[1]))


def decision_answer(
    req: DecisionRequest, found: tuple[str, dict[str, Any]] | None, now: datetime
) -> dict[str, Any]:
    """The answer to ``req`` for the profile ``found`` (``(profile_id, doc)``, None: unknown)."""
    program, catalog = load_config()
    pid, doc = found if found is not None else (None, None)
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


def decide_request(
    store: Store, req: DecisionRequest, type_: str, value: str, now: datetime | None = None
) -> dict[str, Any]:
    """Read the live profile (blocking) and decide: :func:`decision_answer` over ``store``."""
    return decision_answer(req, _profile(store, type_, value), now or datetime.now(UTC))
