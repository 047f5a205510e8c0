"""Identifier normalisation (SPEC section 4): one rule shared with the domain core.

The domain core's ``normalize_identifier(type, value)`` is used when importable (the domain is
pure Python, no Kafka or database import); the local copy below is the fallback so the
mapping layer stands alone. Either way: email trimmed and lower-cased, phone digits only,
other identifiers trimmed; an empty result means "no identifier".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

IDENTIFIER_TYPES = ("member_no", "card_no", "customer_id", "user_id", "email", "phone")
Normalizer = Callable[[str, str], str]


def _local_normalize(kind: str, value: str) -> str:
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return "".join(ch for ch in value if ch.isdigit())
    return value.strip()


_PROBES = (("email", " A.B@X.Org ", "a.b@x.org"), ("phone", "+1 (555) 010-2", "15550102"))


def _resolve() -> Normalizer:
    for module in ("app.domain.identity", "app.domain.records"):
        try:
            fn = getattr(importlib.import_module(module), "normalize_identifier", None)
        except ImportError:
            continue
        # Only adopt it if it has the (type, value) signature and the SPEC's behaviour.
        try:
            if callable(fn) and all(fn(k, v) == want for k, v, want in _PROBES):
                return fn  # type: ignore[no-any-return]
        except Exception:  # a foreign signature: keep the local rule
            pass
    return _local_normalize


normalize_identifier: Normalizer = _resolve()
