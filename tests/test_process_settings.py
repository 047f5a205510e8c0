"""The stream processes' settings from the environment (app/stack/process.py)."""

from __future__ import annotations

import pytest

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
