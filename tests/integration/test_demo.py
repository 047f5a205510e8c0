"""``loyalty-cdp demo`` smoke test: a bounded run exits 0, prints the live lines and the
summary, and ``down`` leaves no component running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.stack import embedded
from app.stack.state import StackPaths

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: a concurrent pytest run re-privatises (chmod 0700)
    # /tmp/pytest-of-<user>, and the unprivileged PostgreSQL could then not be stopped.
    path = Path(tempfile.mkdtemp(prefix="loyalty-cdp-demo-"))
    yield path / "demo"
    shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_and_stops_cleanly(state_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "demo",
            "--duration",
            "25",
            "--rate",
            "150",
            "--members",
            "50",
            "--state-dir",
            str(state_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=480,
        env={**os.environ},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("t=")]
    assert len(lines) >= 10, out[-3000:]  # not a TTY: a plain line per refresh (~2/s)
    assert "demo summary:" in proc.stdout
    summary = next(ln for ln in proc.stdout.splitlines() if ln.startswith("demo summary:"))
    assert int(re.search(r"(\d+) source rows", summary)[1]) > 0, summary
    assert int(re.search(r"(\d+) canonical events", summary)[1]) > 0, summary
    comps = embedded.status(state_dir)["components"]
    assert set(comps.values()) == {"down"}, comps
    paths = StackPaths(state_dir)
    for name in ("broker", "cdc", "worker"):
        assert not paths.process(name).is_running(), name
