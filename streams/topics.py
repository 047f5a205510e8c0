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

#: The consumer group of the workers' Faust app (the canonical, identity and profile stages).
WORKER_GROUP = "loyalty-cdp"
#: The decisioning processes' own group (streams/decision_process.py): their input is not on
#: the worker's Faust consumer, so a decisioning backlog never holds up the stages.
DECISIONS_GROUP = "loyalty-cdp-decisions"
DECISIONS_INPUT = (LOYALTY, GUEST_PURCHASES)


def stage_group(stage: str) -> str:
    """The consumer group whose committed offsets say how far ``stage`` got."""
    return DECISIONS_GROUP if stage == "decisions" else WORKER_GROUP


def partition_of(profile_id: str, partitions: int) -> int:
    """The ``cdp.resolved`` partition that owns a profile (stable: crc32, not Python hash)."""
    return zlib.crc32(profile_id.encode()) % partitions
