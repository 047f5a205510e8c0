"""pytest plugin: one real embedded PostgreSQL per test session (``pytest_plugins``).

Usage in a test module: ``pytest_plugins = ["tests.pg_support"]`` and request ``pg_admin_dsn``
(the server, superuser DSN) or ``source_dsns`` (after ``upgrade_all``: db -> DSN).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.db.migrate import upgrade_all
from app.stack import postgres
from app.stack.ports import free_port
from tests.private_dirs import private_dir


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    with private_dir("loyalty-cdp-pg-") as root:
        data_dir = root / "postgres"
        dsn = postgres.start(data_dir, free_port())  # no binaries -> error, never a skip
        try:
            yield dsn
        finally:
            postgres.stop(data_dir)


@pytest.fixture(scope="session")
def source_dsns(pg_admin_dsn: str) -> dict[str, str]:
    return upgrade_all(pg_admin_dsn)
