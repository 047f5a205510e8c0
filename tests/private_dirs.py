"""Private temporary directories for tests that run servers.

A module of its own (not ``tests.pg_support``, a pytest plugin): importing a plugin module
from a test before pytest registers it makes pytest warn that it cannot rewrite its asserts.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["private_dir"]


@contextmanager
def private_dir(prefix: str) -> Iterator[Path]:
    """A temp dir outside pytest's basetemp, removed afterwards.

    A PostgreSQL data dir must not live under pytest's basetemp: another pytest session
    starting on the machine resets that tree to mode 0700, locking the server (which runs as
    an unprivileged user) out of its own data directory.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
