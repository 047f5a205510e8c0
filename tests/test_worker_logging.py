"""The worker's logging: Faust's terminal spinner would set the root logger to DEBUG (so that
it turns on every record), making every ``log.debug`` in aiokafka, Faust and mode build a
record for nothing; ``streams.worker._Worker`` runs without it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from streams.worker import _Worker


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_debug_records_are_not_built_at_warn() -> None:
    app = faust.App("logging-test", broker="kafka://127.0.0.1:1")
    plain = faust.Worker(app, loglevel="warn", quiet=True)
    plain._setup_logging()
    # the premise: a plain Faust worker at WARN turns DEBUG on for every logger
    assert logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
    worker = _Worker(app, loglevel="warn", quiet=True)
    worker._setup_logging()
    assert worker.spinner is None
    for name in ("aiokafka.consumer.fetcher", "faust.transport", "mode", "loyalty_cdp"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
