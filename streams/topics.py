"""Topic names and the partitioning of the profile stage, shared by the stream stages."""

from __future__ import annotations

import zlib

CHANGE_PREFIXES = ("pos", "web", "app")
CANONICAL = "cdp.events"
INGEST = "cdp.ingest"
DLQ = "cdp.dlq"
RESOLVED = "cdp.resolved"  # internal: identity stage -> profile stage notifications
LOYALTY = "loyalty.events"
GUEST_PURCHASES = "cdp.guest_purchases"  # internal: profile stage -> decisioning (outbox)
PROFILES = "cdp.profiles"


def partition_of(profile_id: str, partitions: int) -> int:
    """The ``cdp.resolved`` partition that owns a profile (stable: crc32, not Python hash)."""
    return zlib.crc32(profile_id.encode()) % partitions
