"""The profile stage's partition locks on real PostgreSQL (streams/store.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from streams.store import Store

pytest_plugins = ["tests.pg_support"]


@pytest.fixture
def store(source_dsns: dict[str, str]) -> Iterator[Store]:
    s = Store(source_dsns["cdp"])
    yield s
    s.dispose()


def _try_lock(store: Store, partitions: set[int]) -> bool:
    """Whether another transaction can take ``partitions`` now (50 ms lock timeout)."""
    try:
        with store.tx() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '50ms'"))
            store.partition_locks(conn, partitions)
        return True
    except OperationalError:
        return False


def test_partition_locks_are_held_until_commit(store: Store) -> None:
    with store.tx() as conn:
        store.partition_locks(conn, [5, 1, 3, 3])
        assert not _try_lock(store, {3})
        assert not _try_lock(store, {0, 1})
        assert _try_lock(store, {0, 2, 4})
    assert _try_lock(store, {1, 3, 5})
    with store.tx() as conn:
        store.partition_locks(conn, [])  # nothing to lock: no statement
