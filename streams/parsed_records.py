"""Hand-over of parsed records from the identity stage to the profile stage of one worker.

The identity stage parses every ``cdp.events`` message into a domain record and stores its
payload in ``records``; the profile stage reads the payloads back and, without this, parses
them a second time (about a third of its CPU). When both stages run in the same worker, as
they do in the embedded stack and in most deployments, the identity stage leaves each record
it *inserted* here after its transaction committed, keyed by record id, and the profile
stage takes it instead of parsing. Records are frozen, so sharing them between the two
stage threads is safe.

Only inserted records are handed over: a duplicate delivery keeps the first payload in the
store, so a cached record always equals what the store holds for its id. Anything not found
(another worker's records, a restart, an evicted entry) is parsed from the store as before;
the cache is an optimisation, never a source of truth. The bound keeps memory flat when the
profile partitions of these records are owned by another worker.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.domain.records import Record

__all__ = ["ParsedRecords"]


class ParsedRecords:
    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._records: dict[str, Record] = {}
        self.hits = 0

    def put_many(self, records: Iterable[Record]) -> None:
        cache = self._records
        for r in records:
            cache[r.record_id] = r
        while len(cache) > self.limit:  # oldest first (dicts keep insertion order)
            try:
                del cache[next(iter(cache))]
            except (KeyError, StopIteration, RuntimeError):
                break  # the profile thread took entries meanwhile

    def take(self, record_id: str) -> Record | None:
        r = self._records.pop(record_id, None)
        if r is not None:
            self.hits += 1
        return r

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)
