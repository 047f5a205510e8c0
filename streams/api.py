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
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import faust
from faust.web import Request, Response, View

from app.domain.records import normalize_identifier
from streams.store import Store

__all__ = ["IDENTIFIER_TYPES", "IdentifierError", "parse_member_ref", "register_api"]

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


def register_api(app: faust.App, store: Store, *, threads: int = 2) -> None:
    """Mount ``/v1/members/{id}`` on ``app``'s web server, reading from ``store``."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="api")

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
