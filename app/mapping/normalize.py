"""Identifier normalisation (SPEC section 4).

Kept here, dependency-free, because the mapping layer must not wait for the domain core;
``app.domain.identity.normalize_identifier`` is preferred when it exists (see
:func:`normalize_identifier`), so both layers share one rule.
"""

from __future__ import annotations

from collections.abc import Callable

IDENTIFIER_TYPES = ("member_no", "card_no", "customer_id", "user_id", "email", "phone")


def _local_normalize(kind: str, value: str) -> str:
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return "".join(ch for ch in value if ch.isdigit())
    return value.strip()


def _resolve() -> Callable[[str, str], str]:
    try:  # pragma: no cover - depends on the domain core's progress
        from app.domain.identity import (  # type: ignore[import-not-found,unused-ignore]
            normalize_identifier as domain_normalize,
        )
    except ImportError:
        return _local_normalize
    return domain_normalize  # type: ignore[no-any-return,unused-ignore]


normalize_identifier: Callable[[str, str], str] = _resolve()
"""``normalize_identifier(type, value) -> str``: email trimmed and lower-cased, phone digits
only, other identifiers trimmed. An empty result means "no identifier"."""
