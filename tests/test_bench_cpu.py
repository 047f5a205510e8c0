"""The bench's CPU-by-role reading (app/bench/cpu.py) on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from app.bench.cpu import (
    PROFILES_NAME,
    ROLES,
    cores,
    cpu_by_role,
    per_event_ms,
    stage_processes,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")

# burn ``s`` CPU seconds, then stay alive ``stay`` seconds (read while alive, a process counts
# under its own command line and name, which is how the tests tell the roles apart)
_BURN = (
    "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
    "time.sleep({stay})\n"
)


# as streams.profile_process.name_process names the profile stage's child
_NAMED = "import ctypes\nctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0)\n"


def _burn(seconds: float, *tag: str, name: str = "") -> subprocess.Popen[bytes]:
    # the tag lands in the child's command line, the name in /proc/<pid>/comm: that is how
    # roles are told apart
    code = (_NAMED.format(name=name) if name else "") + _BURN.format(s=seconds, stay=30)
    return subprocess.Popen([sys.executable, "-c", code, *tag])


def test_children_of_the_worker_are_split_by_what_they_run() -> None:
    before = cpu_by_role({"worker": os.getpid()})
    api = _burn(0.4, "streams.api_server")
    child = _burn(0.6, "spawn_main")
    profiles = _burn(0.5, "spawn_main", name=PROFILES_NAME)
    time.sleep(0.3)
    after_start = time.monotonic()
    while time.monotonic() - after_start < 10:
        now = cpu_by_role({"worker": os.getpid()})
        if now["api"] >= 0.35 and now["decisions"] >= 0.55 and now["profiles"] >= 0.45:
            break
        time.sleep(0.05)
    for p in (api, child, profiles):
        p.kill()
        p.wait()
    assert set(now) == set(ROLES)
    assert now["api"] - before["api"] >= 0.35
    assert now["decisions"] - before["decisions"] >= 0.55
    assert 0.45 <= now["profiles"] - before["profiles"] < 1.0  # not also counted as decisions
    assert now["worker"] >= before["worker"]  # the parent's own time stays "worker"
    assert now["postgres"] == now["broker"] == now["cdc"] == 0.0


def test_a_child_that_exited_keeps_its_time_in_its_role() -> None:
    # PostgreSQL's backends come and go; the postmaster reaps them
    before = cpu_by_role({"postgres": os.getpid()})["postgres"]
    child = subprocess.Popen([sys.executable, "-c", _BURN.format(s=0.5, stay=0)])
    child.wait()
    after = cpu_by_role({"postgres": os.getpid()})["postgres"]
    assert after - before >= 0.45


def test_the_stage_processes_are_the_worker_and_its_profile_child() -> None:
    profiles = _burn(0.0, "spawn_main", name=PROFILES_NAME)
    other = _burn(0.0, "spawn_main")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = stage_processes(os.getpid())
            if len(found) > 1:
                break
            time.sleep(0.05)
        assert found == [os.getpid(), profiles.pid]
    finally:
        for p in (profiles, other):
            p.kill()
            p.wait()


def test_a_missing_root_counts_nothing() -> None:
    assert cpu_by_role({"broker": None, "cdc": 2**22 + 7}) == dict.fromkeys(ROLES, 0.0)


def test_per_event_ms() -> None:
    a = dict.fromkeys(ROLES, 1.0)
    b = {**a, "worker": 3.0, "postgres": 1.5}
    assert per_event_ms(a, b, 1000) == {
        **dict.fromkeys(ROLES, 0.0), "worker": 2.0, "postgres": 0.5, "total": 2.5
    }
    assert per_event_ms({}, b, 1000) == {}
    assert per_event_ms(a, b, 0) == {}


def test_cores() -> None:
    a = dict.fromkeys(ROLES, 1.0)
    b = {**a, "worker": 3.0, "broker": 2.0}
    busy = {**dict.fromkeys(ROLES, 0.0), "worker": 0.5, "broker": 0.25, "total": 0.75}
    assert cores(a, b, 4.0) == busy
    assert cores({}, b, 4.0) == {}
    assert cores(a, b, 0.0) == {}
