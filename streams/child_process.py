"""What the worker's child processes (the profile stage, decisioning) share.

Each is a one-process pool started with ``spawn`` (the worker has threads: forking them is
unsafe) that serves its calls in order. A child ignores Ctrl-C (the worker shuts it down),
names itself for ``ps``/``top`` and exits when the worker dies (a SIGKILL included), so no
orphan keeps store connections or advisory locks.
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

__all__ = ["become_child", "name_process", "spawn_pool"]


def spawn_pool(initializer: Callable[..., None], *initargs: Any) -> ProcessPoolExecutor:
    """A one-process ``spawn`` pool; ``initializer`` gets ``initargs`` and the worker's pid."""
    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=(*initargs, os.getpid()),
    )


def become_child(parent: int, name: str) -> None:
    """In the child's initializer: ignore Ctrl-C, take ``name``, exit with the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process(name)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def name_process(name: str) -> None:
    """Set this process's name as ``ps``, ``top`` and ``/proc/<pid>/comm`` show it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)  # the worker is gone: its replacement re-delivers what was not committed
