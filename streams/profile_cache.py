"""The profiles the decision API has read, kept while the store says they are unchanged.

Why: a decision at checkout is ~0.6 ms of the API's CPU, and the store round trip it needs
for the live profile cost another ~0.3 ms plus two process wake-ups (the PostgreSQL backend's
and the API's), which on a loaded 2-core host is where the latency tail came from. A
checkout asks for the same people again and again (cart, then confirmation), so the API keeps
what it has read, bounded (least recently used first out), and drops an entry as soon as the
store commits a change to it.

Exact, not "eventually": the store's triggers (migration ``cdp_0007``) ``NOTIFY`` every
committed change of a profile document (``p<profile_id>``) or of an identifier's owner
(``k<type>:<hash>``), whoever made it. The reader (``streams/api_server.py``) listens on a
connection of its own and uses the cache only while that connection is up; it is emptied when
the connection is lost and again when it is back. A lookup that was in flight when any
notification arrived is not cached (its row may predate the change). So an entry is either
current or about to be dropped by a notification already on its way, the same window a store
read racing a commit has. Unknown identifiers are not cached: a new customer's first
purchase must be seen at once.

No I/O here: the listener feeds :meth:`ProfileCache.invalidate`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["CHANNEL", "DEFAULT_SIZE", "Found", "Key", "ProfileCache", "cache_size"]

#: the store's notification channel (migrations/cdp/versions/cdp_0007_profile_notifications.py)
CHANNEL = "cdp_profiles"
#: entries kept unless ``LOYALTY_CDP_API_CACHE`` says otherwise (about 1.5-3 KB each)
DEFAULT_SIZE = 100_000

Key = tuple[str, str]  # (identifier type, identifier hash)


def cache_size(environ: dict[str, str] | None = None) -> int:
    """``$LOYALTY_CDP_API_CACHE``: profiles the API keeps (default 100,000; 0 turns the cache
    off and every lookup reads the store). Raises ValueError with a one-line message."""
    import os

    raw = (environ if environ is not None else os.environ).get("LOYALTY_CDP_API_CACHE", "")
    if not raw.strip():
        return DEFAULT_SIZE
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"LOYALTY_CDP_API_CACHE must be a whole number >= 0, not {raw!r}")
    return value
Found = tuple[str, dict[str, Any]] | None  # (profile_id, export document), None: unknown


class ProfileCache:
    """``(type, hash) -> (profile_id, document)`` for at most ``size`` identifiers."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self.enabled = False  # only while the store's notifications reach us
        #: bumped by every notification: a lookup started before it may not be cached
        self.generation = 0
        self._entries: OrderedDict[Key, tuple[str, dict[str, Any]]] = OrderedDict()
        self._keys_of: dict[str, set[Key]] = {}  # profile_id -> its cached keys
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> tuple[str, dict[str, Any]] | None:
        """The cached profile of ``key``, or None (not cached: ask the store)."""
        if not self.enabled:
            return None
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, key: Key, found: Found, generation: int) -> None:
        """Keep what the store answered for ``key`` to a lookup made at ``generation``."""
        if not self.enabled or found is None or generation != self.generation:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._unlink(old[0], key)
        self._entries[key] = found
        self._keys_of.setdefault(found[0], set()).add(key)
        while len(self._entries) > self.size:
            k, (pid, _) = self._entries.popitem(last=False)
            self._unlink(pid, k)

    def invalidate(self, payload: str) -> None:
        """Drop what a notification names (newline-separated ``p<pid>`` / ``k<type>:<hash>``)."""
        self.generation += 1
        for item in payload.split("\n"):
            if item.startswith("p"):
                for key in self._keys_of.pop(item[1:], ()):
                    self._entries.pop(key, None)
            elif item.startswith("k"):
                type_, _, hash_ = item[1:].partition(":")
                hit = self._entries.pop((type_, hash_), None)
                if hit is not None:
                    self._unlink(hit[0], (type_, hash_))

    def enable(self) -> None:
        """The notifications reach us (again): start from nothing, as any change may have
        been missed while they did not."""
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False
        self.clear()

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._keys_of.clear()

    def _unlink(self, pid: str, key: Key) -> None:
        keys = self._keys_of.get(pid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of[pid]
