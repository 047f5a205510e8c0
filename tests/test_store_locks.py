"""The profile stage's partition locks on real PostgreSQL (streams/store.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
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


def _backend(store: Store) -> tuple[int, int]:
    """(pid, owner uid) of the server process behind one of the store's connections."""
    with store.tx() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    return pid, os.stat(f"/proc/{pid}").st_uid


def test_backend_nice_lowers_the_server_process_of_each_connection(
    source_dsns: dict[str, str],
) -> None:
    plain, low = Store(source_dsns["cdp"]), Store(source_dsns["cdp"], backend_nice=13)
    try:
        base = os.getpriority(os.PRIO_PROCESS, _backend(plain)[0])  # the server's own
        pid, owner = _backend(low)
        allowed = os.geteuid() in (0, owner)  # root, or the server's own user
        assert base != 13
        assert os.getpriority(os.PRIO_PROCESS, pid) == (13 if allowed else base)
        with low.tx() as conn:  # the connection still works (no transaction left open)
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        plain.dispose()
        low.dispose()


def test_a_connection_is_pinged_only_after_it_sat_idle(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No round trip per transaction for a busy stage; an idle connection whose server
    process is gone (a PostgreSQL restart, a killed backend) is replaced before use."""
    pings = []
    real = store.engine.dialect.do_ping
    monkeypatch.setattr(store.engine.dialect, "do_ping", lambda c: pings.append(1) or real(c))
    for _ in range(5):
        with store.tx() as conn:
            conn.execute(text("SELECT 1"))
    assert pings == []  # the same pooled connection, used a moment ago
    with store.tx() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    dsn = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as other:  # ends the pooled one's process
        other.execute("SELECT pg_terminate_backend(%s)", (backend,))
    monkeypatch.setattr("streams.store.PING_IDLE_S", 0.0)  # as if both sat idle
    for _ in range(2):  # whichever connection the pool hands out, the dead one is replaced
        with store.tx() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != backend
    assert pings
