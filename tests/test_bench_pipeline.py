"""``bench pipeline``'s synthetic load: one enrollment per member first, then purchases
round-robin in event-time order; another tag gives other members (the second, memory
burst must add new members, not touch the first burst's). And the WAL figures' reading of
``pg_stat_wal`` on real PostgreSQL."""

from __future__ import annotations

import time

import orjson
import psycopg

from app.bench.pipeline import _wal, synthetic_events
from app.stack.ports import free_port

pytest_plugins = ["tests.pg_support"]


def test_synthetic_events() -> None:
    msgs = synthetic_events(3, 10, "a")
    assert len(msgs) == 10
    docs = [orjson.loads(v) for _, v in msgs]
    assert [d["type"] for d in docs[:3]] == ["cdp.member.enrolled"] * 3
    assert {d["type"] for d in docs[3:]} == {"cdp.purchase.completed"}
    times = [d["time"] for d in docs[3:]]
    assert times == sorted(times)
    assert len({d["id"] for d in docs}) == 10  # deterministic, distinct ids
    assert synthetic_events(3, 10, "a") == msgs
    other = {k for k, _ in synthetic_events(3, 10, "b")}
    assert other.isdisjoint({k for k, _ in msgs}) and len(other) == 3


def test_wal_figures_read_what_the_server_wrote(source_dsns: dict[str, str]) -> None:
    dsn = source_dsns["cdp"]
    before = _wal(dsn)
    assert before is not None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_wal_probe (x int)")
        conn.execute("INSERT INTO bench_wal_probe SELECT g FROM generate_series(1, 1000) g")
        conn.execute("DROP TABLE bench_wal_probe")
    after = _wal(dsn)
    assert after is not None and after[0] - before[0] > 1000 * 28  # bytes: at once
    deadline = time.monotonic() + 15  # records: once the backend reported (<= 1 s, or exit)
    while after[1] - before[1] < 1000 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _wal(dsn) or after
    assert after[1] - before[1] >= 1000  # a WAL record per row at least
    assert _wal(f"postgresql://cdp@127.0.0.1:{free_port()}/cdp") is None  # not measured
