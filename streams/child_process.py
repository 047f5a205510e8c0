"""What the worker's child processes (the profile stage, decisioning) share.

Each is started with ``spawn`` (the worker has threads: forking them is unsafe): the
profile stage as a one-process pool that serves its calls in order (:func:`spawn_pool`),
decisioning as a process that consumes its own input. A child ignores Ctrl-C (the worker
shuts it down), names itself for ``ps``/``top`` and exits when the worker dies (a SIGKILL
included), so no orphan keeps store connections or advisory locks.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["RestartBudget", "become_child", "name_process", "spawn_pool"]


class RestartBudget:
    """How often a dead child may be replaced: at most ``limit`` times in ``window`` seconds.

    A child that keeps dying has a cause a new one will not fix (a bad setting, a store that
    refuses it); the worker then crashes loudly instead of looping, and its restart resumes
    from the committed offsets and the store."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self.times: list[float] = []  # monotonic times of the replacements in the window

    def recent(self) -> list[float]:
        """The replacements within the window (monotonic times)."""
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < self.window]
        return self.times

    def spend(self) -> bool:
        """Count one replacement now; False when the budget is used up (do not replace)."""
        if len(self.recent()) >= self.limit:
            return False
        self.times.append(time.monotonic())
        return True


def spawn_pool(initializer: Callable[..., None], *initargs: Any) -> ProcessPoolExecutor:
    """A one-process ``spawn`` pool; ``initializer`` gets ``initargs`` and the worker's pid."""
    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=(*initargs, os.getpid()),
    )


def become_child(
    parent: int, name: str, orphaned: threading.Event | None = None, grace: float = 0.0
) -> None:
    """In the child's initializer: ignore Ctrl-C, take ``name``, exit with the worker.

    ``orphaned`` (with ``grace`` seconds): a child that can stop cleanly (the decisioning
    process leaves its consumer group) is told first and exits by itself; the watchdog
    ends it ``grace`` seconds later if it has not."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process(name)
    threading.Thread(target=_watch_parent, args=(parent, orphaned, grace), daemon=True).start()


def name_process(name: str) -> None:
    """Set this process's name as ``ps``, ``top`` and ``/proc/<pid>/comm`` show it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _watch_parent(parent: int, orphaned: threading.Event | None, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    if orphaned is not None:
        orphaned.set()
        time.sleep(grace)
    os._exit(0)  # the worker is gone: its replacement re-delivers what was not committed
