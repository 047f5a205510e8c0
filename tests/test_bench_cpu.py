"""The bench's CPU-by-role reading (app/bench/cpu.py) on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from app.bench.cpu import ROLES, cpu_by_role, per_event_ms

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")

# burn ``s`` CPU seconds, then stay alive (a process that has exited loses its time)
_BURN = (
    "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
    "time.sleep(30)\n"
)


def _burn(seconds: float, *tag: str) -> subprocess.Popen[bytes]:
    # the tag lands in the child's command line, which is how roles are told apart
    return subprocess.Popen([sys.executable, "-c", _BURN.format(s=seconds), *tag])


def test_children_of_the_worker_are_split_by_what_they_run() -> None:
    before = cpu_by_role({"worker": os.getpid()})
    api = _burn(0.4, "streams.api_server")
    child = _burn(0.6, "spawn_main")
    time.sleep(0.3)
    after_start = time.monotonic()
    while time.monotonic() - after_start < 10:
        now = cpu_by_role({"worker": os.getpid()})
        if now["api"] >= 0.35 and now["decisions"] >= 0.55:
            break
        time.sleep(0.05)
    for p in (api, child):
        p.kill()
        p.wait()
    assert set(now) == set(ROLES)
    assert now["api"] - before["api"] >= 0.35
    assert now["decisions"] - before["decisions"] >= 0.55
    assert now["worker"] >= before["worker"]  # the parent's own time stays "worker"
    assert now["postgres"] == now["broker"] == now["cdc"] == 0.0


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
