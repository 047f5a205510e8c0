"""The decision API's profile cache (``streams/profile_cache.py``): what it keeps, and the
notifications that drop it. Plain objects; the store's triggers are tested against real
PostgreSQL in tests/test_api_server.py."""

from __future__ import annotations

import pytest

from streams.profile_cache import DEFAULT_SIZE, ProfileCache, cache_size

ANN = ("email", "h-ann")
CARD = ("card_no", "h-c1")
DOC = {"member_id": "M1", "points_balance": 10}


def _cache(size: int = 10) -> ProfileCache:
    c = ProfileCache(size)
    c.enable()
    return c


def test_keeps_what_the_store_answered() -> None:
    c = _cache()
    assert c.get(ANN) is None
    c.put(ANN, ("P1", DOC), c.generation)
    assert c.get(ANN) == ("P1", DOC)
    assert (c.hits, c.misses) == (1, 1)


def test_unknown_identifiers_are_not_kept() -> None:
    c = _cache()
    c.put(ANN, None, c.generation)
    assert len(c) == 0


def test_a_profile_change_drops_every_identifier_of_it() -> None:
    c = _cache()
    c.put(ANN, ("P1", DOC), c.generation)
    c.put(CARD, ("P1", DOC), c.generation)
    c.put(("phone", "h-x"), ("P2", DOC), c.generation)
    c.invalidate("pP1\npP9")
    assert c.get(ANN) is None and c.get(CARD) is None
    assert c.get(("phone", "h-x")) == ("P2", DOC)


def test_an_identifier_changing_owner_drops_it() -> None:
    # a guest held card C1; a member profile now holds it too (the member wins the lookup)
    c = _cache()
    c.put(CARD, ("G1", DOC), c.generation)
    c.put(ANN, ("G1", DOC), c.generation)
    c.invalidate("kcard_no:h-c1")
    assert c.get(CARD) is None
    assert c.get(ANN) == ("G1", DOC)


def test_a_lookup_in_flight_during_a_notification_is_not_kept() -> None:
    c = _cache()
    started = c.generation
    c.invalidate("pP7")  # a commit lands while the store read is in flight
    c.put(ANN, ("P1", DOC), started)
    assert c.get(ANN) is None


def test_nothing_is_kept_or_served_while_notifications_do_not_arrive() -> None:
    c = ProfileCache(10)
    c.put(ANN, ("P1", DOC), c.generation)
    assert c.get(ANN) is None and len(c) == 0
    c.enable()
    c.put(ANN, ("P1", DOC), c.generation)
    c.disable()  # the listening connection is lost: any change may now go unnoticed
    assert c.get(ANN) is None and len(c) == 0
    c.enable()
    assert c.get(ANN) is None


def test_least_recently_used_goes_first() -> None:
    c = _cache(size=2)
    c.put(("t", "a"), ("PA", DOC), c.generation)
    c.put(("t", "b"), ("PB", DOC), c.generation)
    assert c.get(("t", "a")) is not None  # a is now more recent than b
    c.put(("t", "c"), ("PC", DOC), c.generation)
    assert c.get(("t", "b")) is None
    assert c.get(("t", "a")) is not None and c.get(("t", "c")) is not None
    c.invalidate("pPB")  # the evicted entry's bookkeeping is gone too
    assert len(c) == 2


def test_size_from_the_environment() -> None:
    assert cache_size({}) == DEFAULT_SIZE
    assert cache_size({"LOYALTY_CDP_API_CACHE": "0"}) == 0
    assert cache_size({"LOYALTY_CDP_API_CACHE": "500"}) == 500
    for bad in ("-1", "lots"):
        with pytest.raises(ValueError, match="LOYALTY_CDP_API_CACHE"):
            cache_size({"LOYALTY_CDP_API_CACHE": bad})
