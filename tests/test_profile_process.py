"""The profile stage's process handle (streams/profile_process.py) with real child processes.

The calls here are small module functions, not the stage (the stage in its child is covered
by the integration tests, tests/integration/test_profiles_pipeline.py, which also SIGKILL
the child mid-stream): what is tested is the handle's own contract. A child that dies is
replaced, told the partitions the worker holds before the call is made again, and the
figures the worker shows add up across children without ever going back.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import weakref
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from app.bench.cpu import PROFILES_NAME
from streams.gc_freeze import GcFreezer
from streams.profile_process import PROCESS_NAME, ProfileHandle, ProfileHost
from streams.profiles import COUNTS
from streams.topics import LOYALTY


def _report(notes: int, types: dict[str, int]) -> dict[str, Any]:
    counts = dict.fromkeys(COUNTS, 0)
    counts["notes"] = notes
    return {
        "counts": counts,
        "published": {LOYALTY: sum(types.values())},
        "types": types,
        "batch_seconds": [0.25],
    }


def _log(d: Path, line: str) -> None:
    with open(d / "calls.log", "a") as f:
        f.write(f"{os.getpid()} {line}\n")


def _assign(d: Path, parts: list[int]) -> dict[str, Any]:
    _log(d, f"assign {sorted(parts)}")
    return _report(0, {})


def _process(d: Path, n: int) -> dict[str, Any]:
    """Dies on the calls listed in ``die`` (one name per death), else counts ``n`` notes."""
    deaths = (d / "die").read_text().split() if (d / "die").exists() else []
    done = (d / "died").read_text().split() if (d / "died").exists() else []
    if len(done) < len(deaths):
        with open(d / "died", "a") as f:
            f.write("x ")
        os._exit(1)  # as a SIGKILL: no exception reaches the parent, the pool breaks
    _log(d, f"process {n}")
    return _report(n, {"tier_upgraded": n})


def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def _handle(d: Path, *, restart: bool = True) -> ProfileHandle:
    calls = {"assign": functools.partial(_assign, d), "process": functools.partial(_process, d)}
    return ProfileHandle(_pool(), calls, restart=_pool if restart else None)


def _calls(d: Path) -> list[tuple[int, str]]:
    lines = (d / "calls.log").read_text().splitlines()
    return [(int(pid), rest) for pid, rest in (line.split(" ", 1) for line in lines)]


async def test_a_dead_child_is_replaced_told_its_partitions_and_the_call_made_again(
    tmp_path: Path,
) -> None:
    h = _handle(tmp_path)
    seen: list[tuple[list[float], Counter[str]]] = []
    h.listeners.append(lambda report, new: seen.append((report["batch_seconds"], new)))
    await h.call("assign", [3, 1])
    await h.call("process", 5)
    (tmp_path / "die").write_text("x")
    await h.call("process", 7)  # the child dies on it; a new one runs it
    calls = _calls(tmp_path)
    assert [c for _, c in calls] == ["assign [1, 3]", "process 5", "assign [1, 3]", "process 7"]
    assert calls[0][0] == calls[1][0] != calls[2][0] == calls[3][0]  # a new process
    # what the worker shows adds up over both children, and the counters only go up
    assert h.counts["notes"] == 12
    assert h.published[LOYALTY] == 12
    assert h.types == Counter({"tier_upgraded": 12})
    assert [new for _, new in seen] == [  # assign, process 5, process 7 (the replay: none)
        Counter(), Counter({"tier_upgraded": 5}), Counter({"tier_upgraded": 7})
    ]
    assert len(h.budget.times) == 1
    h.executor.shutdown()


async def test_revoked_partitions_are_not_given_to_a_replacement(tmp_path: Path) -> None:
    h = _handle(tmp_path)
    h.calls["revoke"] = functools.partial(_assign, tmp_path)  # logs its argument as well
    await h.call("assign", [0, 1, 2])
    await h.call("revoke", [1])
    (tmp_path / "die").write_text("x")
    await h.call("process", 1)
    assert [c for _, c in _calls(tmp_path)][-2:] == ["assign [0, 2]", "process 1"]
    h.executor.shutdown()


async def test_a_child_that_keeps_dying_crashes_the_worker(tmp_path: Path) -> None:
    h = _handle(tmp_path)
    (tmp_path / "die").write_text("x " * (ProfileHandle.MAX_RESTARTS + 1))
    with pytest.raises(BrokenProcessPool, match="too often"):
        await h.call("process", 1)
    assert len(h.budget.times) == ProfileHandle.MAX_RESTARTS
    h.executor.shutdown()


async def test_without_restart_a_dead_child_raises(tmp_path: Path) -> None:
    h = _handle(tmp_path, restart=False)
    (tmp_path / "die").write_text("x")
    with pytest.raises(BrokenProcessPool):
        await h.call("process", 1)


class _Outbox:
    def __init__(self) -> None:
        self.published: Counter[str] = Counter()

    def publish(self, rows: list[Any]) -> None:
        self.published.update(r.topic for r in rows)


class _Row:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


class _Stage:
    """Stands in for ProfileStage: its counters and outbox, a batch that publishes."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTS, 0)
        self.outbox = _Outbox()

    def process(self, notes: list[tuple[int, bytes]]) -> None:
        self.counts["notes"] += len(notes)
        self.outbox.publish(
            [
                _Row(LOYALTY, b'{"id":"1","type":"loyalty.points_earned","data":{}}'),
                _Row(LOYALTY, b'{"id":"2","type":"loyalty.tier_upgraded","data":{}}'),
                _Row("cdp.guest_purchases", b'{"id":"3","type":"cdp.purchase.completed"}'),
            ]
        )


def test_the_host_reports_counts_published_types_and_durations() -> None:
    trims: list[int] = []
    stage = _Stage()
    host = ProfileHost(stage, trim=lambda: trims.append(1))  # type: ignore[arg-type]
    report = host.process([(0, b"{}"), (1, b"{}")])
    assert report["counts"]["notes"] == 2
    assert report["published"] == {LOYALTY: 2, "cdp.guest_purchases": 1}
    assert report["types"] == {"points_earned": 1, "tier_upgraded": 1}
    assert len(report["batch_seconds"]) == 1 and report["batch_seconds"][0] >= 0
    assert host.report()["batch_seconds"] == []  # each duration is reported once
    assert trims  # the child gives freed memory back after its calls
    full = host.report()["counts"]["gc_full"]
    gc.collect()
    assert host.report()["counts"]["gc_full"] == full + 1  # the collector's work is counted
    # on a thread of the worker the worker's own counters cover the process: not twice
    other = _Stage()
    ProfileHost(other, gc_counts=False)  # type: ignore[arg-type]
    gc.collect()
    assert "gc_full" not in other.counts


def test_the_process_name_is_the_one_the_bench_looks_for() -> None:
    assert PROCESS_NAME == PROFILES_NAME  # what bench pipeline's CPU reading looks for


class _Cycle:
    def __init__(self) -> None:
        self.me = self


class _CyclingStage(_Stage):
    """A batch that leaves one object in a reference cycle (garbage) and keeps one alive."""

    def __init__(self) -> None:
        super().__init__()
        self.garbage: list[weakref.ref[_Cycle]] = []
        self.kept: list[_Cycle] = []

    def process(self, notes: list[tuple[int, bytes]]) -> None:
        super().process(notes)
        self.garbage.append(weakref.ref(_Cycle()))
        self.kept.append(_Cycle())


def test_the_child_freezes_what_survives_a_batch_and_collects_young_cycles() -> None:
    stage = _CyclingStage()
    freezer = GcFreezer()
    host = ProfileHost(stage, freezer=freezer)  # type: ignore[arg-type]
    try:
        host.process([(0, b"{}")])
        assert stage.garbage[0]() is None  # the batch's cycle: collected before the freeze
        assert gc.get_freeze_count() > 0  # the survivors: not walked by collections again
        frozen = stage.kept.pop()  # becomes garbage after it was frozen ...
        ref = weakref.ref(frozen)
        del frozen
        gc.collect()
        assert ref() is not None  # ... so the automatic collections do not see it,
        freezer.full_every_s = 0.0
        host.report()
        assert ref() is None  # but the periodic full collection does
    finally:
        gc.unfreeze()


def test_the_freezer_collects_everything_only_when_its_period_is_up() -> None:
    now = [0.0]
    freezer = GcFreezer(full_every_s=600.0, clock=lambda: now[0])
    full = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        full[0] += phase == "stop" and info["generation"] == 2

    gc.callbacks.append(on_gc)
    gc.disable()  # only the freezer's own collections count
    try:
        freezer.settle()
        now[0] = 599.0
        freezer.settle()
        assert full[0] == 0  # young collections only
        now[0] = 600.0
        freezer.settle()
        assert full[0] == 1 and gc.get_freeze_count() > 0  # one full, then frozen again
    finally:
        gc.enable()
        gc.callbacks.remove(on_gc)
        gc.unfreeze()
