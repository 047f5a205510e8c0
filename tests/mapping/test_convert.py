from __future__ import annotations

import pytest

from app.mapping.convert import epoch_ms_to_timestamp, to_cents, to_timestamp
from app.mapping.errors import MappingError


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("2026-03-01T10:15:00Z", "2026-03-01T10:15:00.000000Z"),
        ("2026-03-01T10:15:00.1Z", "2026-03-01T10:15:00.100000Z"),
        ("2026-03-01T10:15:00.123456Z", "2026-03-01T10:15:00.123456Z"),
        ("2026-03-01T10:15:00.123456789Z", "2026-03-01T10:15:00.123456Z"),
        ("2026-03-01T10:15:00+00:00", "2026-03-01T10:15:00.000000Z"),
        ("2026-03-01 10:15:00.5+00", "2026-03-01T10:15:00.500000Z"),
        ("2026-03-01T11:15:00.25+01:00", "2026-03-01T10:15:00.250000Z"),
        ("2026-03-01T05:45:00-0430", "2026-03-01T10:15:00.000000Z"),
        ("2026-03-01T00:30:00+02:00", "2026-02-28T22:30:00.000000Z"),
    ],
)
def test_timestamp_variants(raw: str, want: str) -> None:
    assert to_timestamp(raw, "t") == want


@pytest.mark.parametrize(
    "raw", ["2026-03-01", "2026-03-01T10:15:00", "2026-13-01T10:15:00+01:00", "x"]
)
def test_bad_timestamps(raw: str) -> None:
    with pytest.raises(MappingError):
        to_timestamp(raw, "t")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("0", 0),
        ("0.00", 0),
        ("12.34", 1234),
        ("12.3", 1230),
        ("12", 1200),
        ("1234567890.99", 123456789099),
        ("5.100", 510),
        ("1E+2", 10000),
        (7, 700),
    ],
)
def test_cents_exact(raw: str | int, want: int) -> None:
    assert to_cents(raw, "c") == want


@pytest.mark.parametrize("raw", ["-0.01", "0.001", "NaN", "Infinity", "", 1.5, True, None])
def test_cents_refused(raw: object) -> None:
    with pytest.raises(MappingError):
        to_cents(raw, "c")


def test_epoch_ms() -> None:
    assert epoch_ms_to_timestamp(1_772_360_100_250, "ts") == "2026-03-01T10:15:00.250000Z"
