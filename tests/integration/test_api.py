"""The worker's web port on the real embedded stack: ``GET /v1/members/{id}`` returns the
export document (by member number, by any normalised ``type:value``), 404 for an unknown
identifier, 422 for a bad type; ``/metrics`` carries non-zero stage, loyalty-event and
latency series and the per-stage lag; ``/healthz`` answers. The port is served by the worker's
API process (``streams/api_server.py``): it answers there, forwards ``/healthz`` and
``/metrics``, is restarted when it dies and goes away with the worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from app.stack import embedded, pipeline
from app.stack.state import StackPaths
from streams.profile_process import PROCESS_NAME
from streams.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _exec(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn) as conn:
        for sql in statements:
            conn.execute(sql)
        conn.commit()


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    # Not under pytest's basetemp: a concurrent pytest run re-privatises (chmod 0700)
    # /tmp/pytest-of-<user>, and the unprivileged PostgreSQL could then not be stopped.
    root = Path(tempfile.mkdtemp(prefix="loyalty-cdp-api-"))
    state_dir = root / "stack"
    try:
        st = embedded.up(state_dir)
        _exec(
            st["sources"]["pos"],
            "INSERT INTO loyalty_cards VALUES"
            " ('C1','M100','+1 (555) 010-0100','2026-01-05T09:00:00Z')",
            "INSERT INTO transactions VALUES ('T1','S1','C1',120.50,'USD','2026-02-01T10:00:00Z')",
        )
        _exec(
            st["sources"]["web"],
            "INSERT INTO customers VALUES"
            " ('W1',' Ann@Example.COM ','555-0101',NULL,true,false,false,'2026-01-10T08:00:00Z')",
            "INSERT INTO loyalty_enrollments VALUES ('M200','W1','2026-01-11T08:00:00Z')",
        )
        pipeline.wait_caught_up(state_dir, timeout=180)
        st["state_dir_path"] = state_dir
        yield st
    finally:
        embedded.down(state_dir, drain_timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _get(st: dict[str, Any], path: str) -> httpx.Response:
    return httpx.get(st["api"] + path, timeout=10)


def _exported(st: dict[str, Any], member_id: str) -> dict[str, Any]:
    store = Store(st["store"])
    try:
        return next(d for d in store.export() if d["member_id"] == member_id)
    finally:
        store.dispose()


def test_member_by_member_number_is_the_export_document(stack: dict[str, Any]) -> None:
    r = _get(stack, "/v1/members/M100")
    assert r.status_code == 200, r.text
    doc = r.json()
    exported = _exported(stack, "M100")
    # The wall clock moves as_of every second (the profile stage's timer): compare the rest.
    assert {**doc, "as_of": None} == {**exported, "as_of": None}
    assert doc["member_id"] == "M100"
    assert "card_no:C1" in doc["identifiers"]
    assert doc["purchase_count"] == 1
    assert doc["lifetime_spend_cents"] == 12050
    assert set(doc) == {
        "member_id",
        "member_nos",
        "identifiers",
        "enrolled_at",
        "tier",
        "points_balance",
        "qualifying_spend_cents",
        "lifetime_spend_cents",
        "purchase_count",
        "last_purchase_at",
        "lapse_risk",
        "consent",
        "as_of",
    }


def test_member_by_identifiers(stack: dict[str, Any]) -> None:
    by_email = _get(stack, "/v1/members/" + quote("email:  ANN@example.Com "))
    assert by_email.status_code == 200, by_email.text
    assert by_email.json()["member_id"] == "M200"
    assert "email:ann@example.com" in by_email.json()["identifiers"]
    assert (
        by_email.json()["identifiers"]
        == _get(stack, "/v1/members/member_no:M200").json()["identifiers"]
    )
    by_card = _get(stack, "/v1/members/card_no:C1")
    assert by_card.status_code == 200
    assert by_card.json()["member_id"] == "M100"
    assert _get(stack, "/v1/members/customer_id:W1").json()["member_id"] == "M200"


def test_unknown_and_bad_identifiers(stack: dict[str, Any]) -> None:
    for path in ("/v1/members/M999", "/v1/members/email:nobody@example.com"):
        r = _get(stack, path)
        assert r.status_code == 404
        assert "error" in r.json()
        assert "nobody" not in r.text  # the reply does not echo the identifier value
    for path in ("/v1/members/passport:X1", "/v1/members/email:%20"):
        r = _get(stack, path)
        assert r.status_code == 422, path
        assert "error" in r.json()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_and_health(stack: dict[str, Any]) -> None:
    assert _get(stack, "/healthz").status_code == 200
    deadline = time.monotonic() + 30
    while True:  # the lag series appears after the poller's first measurement
        r = _get(stack, "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        m = _samples(r.text)
        if 'loyalty_cdp_consumer_lag_messages{stage="profiles"}' in m:
            break
        assert time.monotonic() < deadline, "no lag series"
        time.sleep(1)
    for stage in ("canonical", "identity", "profiles"):
        for direction in ("in", "out"):
            assert (
                m[f'loyalty_cdp_stage_messages_total{{direction="{direction}",stage="{stage}"}}']
                > 0
            )
        assert m[f'loyalty_cdp_stage_batch_seconds_count{{stage="{stage}"}}'] > 0
        assert f'loyalty_cdp_dlq_messages_total{{stage="{stage}"}}' in m
        # the identity stage has no input topic of its own (the canonical agent hands it
        # each batch): its lag is the canonical agent's
        lagged = f'loyalty_cdp_consumer_lag_messages{{stage="{stage}"}}' in m
        assert lagged == (stage != "identity")
    assert m['loyalty_cdp_loyalty_events_total{type="member_enrolled"}'] >= 2
    assert m['loyalty_cdp_loyalty_events_total{type="points_earned"}'] >= 1
    assert m["loyalty_cdp_loyalty_events_published_total"] >= 3


# -- the API process (streams/api_server.py); these two stop the worker: keep them last ------


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(d.name), cmd))
    return out


def _api_child(worker_pid: int) -> int:
    kids = [p for p, cmd in _children(worker_pid) if "streams.api_server" in cmd]
    assert len(kids) == 1, _children(worker_pid)
    return kids[0]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _comm(pid: int) -> str:
    """The process's name (``/proc/<pid>/comm``; the profile process names itself)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _nice(pid: int, tid: int | None = None) -> int:
    """The nice value of a thread (``tid``, default the main thread) of ``pid``."""
    stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of stat


def test_streams_run_below_the_api(stack: dict[str, Any]) -> None:
    """The broker, the CDC runner and the worker's threads run LOYALTY_CDP_STREAM_NICE (10)
    steps below the API process, which keeps the priority of whoever ran ``up``, and the
    decisioning process LOYALTY_CDP_DECISIONS_NICE (5) steps below those."""
    base = os.nice(0)
    paths = StackPaths(stack["state_dir_path"].resolve())
    for name in ("broker", "cdc", "worker"):
        pid = paths.process(name).pid()
        assert pid is not None and _nice(pid) == min(base + 10, 19), name
    wpid = paths.process("worker").pid()
    assert wpid is not None
    assert _nice(_api_child(wpid)) == base
    spawned = [p for p, cmd in _children(wpid) if "spawn_main" in cmd]
    profiles = [p for p in spawned if _comm(p) == PROCESS_NAME]
    decisioning = [p for p in spawned if p not in profiles]
    assert decisioning, _children(wpid)  # started by the fixture's purchases
    # LOYALTY_CDP_DECISIONS_NICE (5) further below the stages that feed it
    assert all(_nice(p) == min(base + 15, 19) for p in decisioning)
    # the profile stage's process is a stage: the worker's priority
    assert len(profiles) == 1 and _nice(profiles[0]) == min(base + 10, 19), spawned
    # and so are the PostgreSQL processes that run its SQL; the stages' are not
    with psycopg.connect(stack["store"]) as conn:
        backends = conn.execute(
            "SELECT application_name, pid FROM pg_stat_activity"
            " WHERE application_name LIKE 'loyalty-cdp %'"
        ).fetchall()
    by_name: dict[str, set[int]] = {}
    for name, pid in backends:
        by_name.setdefault(name, set()).add(_nice(pid))
    assert by_name["loyalty-cdp decisions"] == {min(base + 15, 19)}, by_name
    assert min(base + 15, 19) not in by_name["loyalty-cdp worker"], by_name
    assert min(base + 15, 19) not in by_name["loyalty-cdp profiles"], by_name


def test_the_cdc_runner_jvm_compiles_with_c1_only(stack: dict[str, Any]) -> None:
    """``LOYALTY_CDP_CDC_JVM_OPTS`` (default ``-XX:TieredStopAtLevel=1``) reaches the JVM: it
    has a C1 compiler thread and no C2 one (C2 took ~3 of 4 CPU-seconds of the runner)."""
    pid = StackPaths(stack["state_dir_path"].resolve()).process("cdc").pid()
    assert pid is not None
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names.add((task / "comm").read_text().strip())
    assert any(n.startswith("C1 Compiler") for n in names), sorted(names)
    assert not any(n.startswith("C2 Compiler") for n in names), sorted(names)


def test_api_process_serves_the_web_port_and_is_restarted(stack: dict[str, Any]) -> None:
    worker = StackPaths(stack["state_dir_path"].resolve()).process("worker")
    wpid = worker.pid()
    assert wpid is not None
    api = _api_child(wpid)
    port = int(stack["api"].rsplit(":", 1)[1])
    listeners = _listening_pids(port)
    assert listeners == {api}, (listeners, api, wpid)  # the API process owns the web port
    # /healthz and /metrics still answer on it (forwarded to the worker's web server)
    assert _get(stack, "/healthz").json()["status"] == "ok"
    assert _get(stack, "/metrics").headers["content-type"].startswith("text/plain")
    assert _get(stack, "/v1/members/M100").status_code == 200
    api_nice = _nice(api)
    os.kill(api, signal.SIGKILL)  # a crash: the worker starts a new one
    _wait_until(lambda: not _alive(api), 10, "the killed API process is still there")
    _wait_until(lambda: _listening_pids(port) - {api}, 30, "the API process was not restarted")
    new = _api_child(wpid)
    assert new != api
    assert _nice(new) == api_nice  # restarted from the supervisor's thread, not niced
    assert _get(stack, "/v1/members/M100").json()["member_id"] == "M100"
    assert _get(stack, "/healthz").status_code == 200


def test_api_process_goes_away_with_the_worker(stack: dict[str, Any]) -> None:
    worker = StackPaths(stack["state_dir_path"].resolve()).process("worker")
    wpid = worker.pid()
    assert wpid is not None
    api = _api_child(wpid)
    os.kill(wpid, signal.SIGKILL)  # the worker alone (not its group): its child must follow
    _wait_until(lambda: not _alive(api), 15, "the API process outlived the worker")
    port = int(stack["api"].rsplit(":", 1)[1])
    _wait_until(lambda: not _listening_pids(port), 10, "the web port is still bound")


def _listening_pids(port: int) -> set[int]:
    """Pids holding a listening TCP socket on ``port`` (from /proc/net/tcp and fd links)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f[9])
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (d / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        pids.add(int(d.name))
    return pids
