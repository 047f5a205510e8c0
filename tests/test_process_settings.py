"""The stream processes' settings from the environment (app/stack/process.py)."""

from __future__ import annotations

import pytest

from app.stack.errors import StackError
from app.stack.process import decisions_nice, gc_threshold, stream_nice


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAM_NICE", "DECISIONS_NICE", "GC_THRESHOLD"):
        monkeypatch.delenv(f"LOYALTY_CDP_{name}", raising=False)
    assert (stream_nice(), decisions_nice(), gc_threshold()) == (10, 5, (50_000, 20, 20))


def test_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_CDP_DECISIONS_NICE", " 0 ")
    monkeypatch.setenv("LOYALTY_CDP_GC_THRESHOLD", "700,10,10")
    assert decisions_nice() == 0
    assert gc_threshold() == (700, 10, 10)


@pytest.mark.parametrize("raw", ["700", "700,10,0", "a,b,c", "1,2,3,4", "-1,5,5"])
def test_bad_gc_threshold(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("LOYALTY_CDP_GC_THRESHOLD", raw)
    with pytest.raises(StackError, match="LOYALTY_CDP_GC_THRESHOLD"):
        gc_threshold()
