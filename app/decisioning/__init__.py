"""Decisioning: offer catalog, contact policy and the pure decision core (SPEC 7).

Public API for the adapters (Faust agent, HTTP API)::

    catalog = load_catalog("config/offers.yaml")
    decision = decide(moment, profile_snapshot, DecisionContext(program, profile_id,
                      Contactability(push_token=..., timezone=...)), catalog, history, now)
    context = checkout_context(profile_snapshot, cart, program, at)

Nothing here imports Kafka, a database or the clock. See docs/decisioning.md.
"""

from .catalog import (
    CHANNELS,
    LOYALTY_KINDS,
    PLACEHOLDERS,
    PLACEMENTS,
    CatalogError,
    OfferCatalog,
    catalog_errors,
    load_catalog,
    validate_offer_file,
)
from .core import (
    ChannelDecision,
    ChosenOffer,
    Decision,
    DecisionContext,
    Moment,
    RankedOffer,
    Rejection,
    decide,
    decision_id,
)
from .features import CartLine, MemberContext, checkout_context
from .policy import Contactability, Reason, Send

__all__ = [
    "CHANNELS",
    "LOYALTY_KINDS",
    "PLACEHOLDERS",
    "PLACEMENTS",
    "CartLine",
    "CatalogError",
    "ChannelDecision",
    "ChosenOffer",
    "Contactability",
    "Decision",
    "DecisionContext",
    "MemberContext",
    "Moment",
    "OfferCatalog",
    "RankedOffer",
    "Reason",
    "Rejection",
    "Send",
    "catalog_errors",
    "checkout_context",
    "decide",
    "decision_id",
    "load_catalog",
    "validate_offer_file",
]
