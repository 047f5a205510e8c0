"""`config validate` and `bench domain` through typer (mounted on a bare app)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from app.domain.program import ProgramError, load_program, validate_program_file
from app.domain_cli import register

REPO = Path(__file__).resolve().parents[2]


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """root"""

    register(app)
    return app


def test_shipped_program_is_valid_and_equals_defaults() -> None:
    assert validate_program_file(REPO / "config" / "program.yaml") == []
    result = CliRunner().invoke(cli(), ["config", "validate", str(REPO / "config/program.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_every_error_with_its_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(
        "tiers:\n  - {name: member, threshold_cents: 0, multiplier: 1}\n"
        "  - {name: silver, threshold_cents: -1, multiplier: 1.25}\n"
        "campaigns:\n  - {name: x, start: 2026-01-02T00:00:00Z, end: 2026-01-01T00:00:00Z,"
        " multiplier: 2}\n"
        "milestones: {thresholds: [5, 1]}\nexpiry: {notice_lead_days: 400}\nfoo: 1\n"
        "identifiers: {fax: {merge: true}}\n"
    )
    errors = validate_program_file(bad)
    assert any(e.startswith("tiers.1.threshold_cents: ") for e in errors), errors
    assert any(e.startswith("campaigns.0: ") and "end must be after start" in e for e in errors)
    assert any(e.startswith("milestones.thresholds: ") for e in errors)
    assert any(e.startswith("expiry: ") for e in errors)
    assert any(e.startswith("foo: ") for e in errors)
    assert any(e.startswith("identifiers: ") and "fax" in e for e in errors)
    result = CliRunner().invoke(cli(), ["config", "validate", str(bad)])
    assert result.exit_code == 1
    assert "tiers.1.threshold_cents" in result.output
    try:
        load_program(bad)
    except ProgramError as exc:
        assert exc.errors == errors
    else:
        raise AssertionError("load_program accepted an invalid file")


def test_missing_and_unparseable_files_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "b.yaml"
    broken.write_text("a: [1,\n")
    result = CliRunner().invoke(cli(), ["config", "validate", str(broken), str(tmp_path / "no")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "not valid YAML" in lines[0] and "cannot read" in lines[1]
    assert "Traceback" not in result.output


def test_other_kinds_are_detected(tmp_path: Path) -> None:
    catalog = tmp_path / "offers.yaml"
    catalog.write_text("loyalty_offers: []\n")
    result = CliRunner().invoke(cli(), ["config", "validate", str(catalog)])
    assert result.exit_code == 1 and "the catalog has no offers" in result.output
    result = CliRunner().invoke(cli(), ["config", "validate", "config/offers.yaml"])
    assert result.exit_code == 0 and "ok (offer catalog)" in result.output


def test_bench_domain_runs_small() -> None:
    args = ["bench", "domain", "--records", "1000", "--members", "5", "--repeats", "1", "--json"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert '"in_order_records_per_cpu_s"' in result.output
    figures = json.loads(result.output)
    # the graph's purchase nodes are most of it: forgetting them must shrink it
    assert (figures["identity_graph_bytes_per_member_purchases_forgotten"]
            < figures["identity_graph_bytes_per_member"] / 2)
