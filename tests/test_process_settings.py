"""The stream processes' settings from the environment (app/stack/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.settings import worker_tuning
from app.stack.errors import StackError
from app.stack.process import decisions_nice, stream_nice


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAM_NICE", "DECISIONS_NICE"):
        monkeypatch.delenv(f"LOYALTY_CDP_{name}", raising=False)
    assert (stream_nice(), decisions_nice()) == (10, 5)


def test_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_CDP_DECISIONS_NICE", " 0 ")
    assert decisions_nice() == 0


@pytest.mark.parametrize("raw", ["-1", "20", "low", "1.5"])
def test_bad_decisions_nice(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("LOYALTY_CDP_DECISIONS_NICE", raw)
    with pytest.raises(StackError, match="LOYALTY_CDP_DECISIONS_NICE"):
        decisions_nice()


def test_worker_tuning_defaults_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("PROFILE_CHUNK", "STAGE_BATCH", "FAUST_BATCHED_DRAIN", "MALLOC_TRIM_MB")
    for name in (*names, "PROFILE_PROCESS"):
        monkeypatch.delenv(f"LOYALTY_CDP_{name}", raising=False)
    t = worker_tuning()
    assert (t.profile_chunk, t.stage_batch, t.faust_batched_drain, t.malloc_trim_mb) == (
        250, 5000, True, 16
    )
    assert t.profile_process is True
    monkeypatch.setenv("LOYALTY_CDP_PROFILE_CHUNK", "40")
    monkeypatch.setenv("LOYALTY_CDP_FAUST_BATCHED_DRAIN", "0")
    monkeypatch.setenv("LOYALTY_CDP_MALLOC_TRIM_MB", "0")
    t = worker_tuning()
    assert (t.profile_chunk, t.faust_batched_drain, t.malloc_trim_mb) == (40, False, 0)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("LOYALTY_CDP_HOT_STATES", "0"),
        ("LOYALTY_CDP_PROFILE_CHUNK", "lots"),
        ("LOYALTY_CDP_STREAM_BUFFER", "8"),
        ("LOYALTY_CDP_BATCH_WITHIN_MS", "-5"),
        ("LOYALTY_CDP_FETCH_MAX_WAIT_MS", "1.5"),
        ("LOYALTY_CDP_INTERNAL_WEB_PORT", "70000"),
        ("LOYALTY_CDP_PROFILE_PROCESS", "maybe"),
    ],
)
def test_bad_worker_tuning(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(StackError, match=f"^{name}: "):
        worker_tuning()


def test_the_worker_refuses_a_bad_tuning_value_in_one_line() -> None:
    """Before anything starts (no broker or store is reachable here): exit 2, one line."""
    env = {**os.environ, "LOYALTY_CDP_STAGE_BATCH": "many", "LOYALTY_CDP_STORE_DSN": "x"}
    res = subprocess.run(
        [sys.executable, "-m", "streams.worker", "--broker", "127.0.0.1:1", "--web-port", "1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        res.stderr.strip()
    ] and res.stderr.startswith("error: LOYALTY_CDP_STAGE_BATCH: "), res.stderr
