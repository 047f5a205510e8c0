"""``loyalty-cdp config validate FILE...`` and ``loyalty-cdp bench domain``.

``config validate`` detects what kind of file it was given from the document's top-level
keys (:data:`KINDS`, first match wins) and prints every error as
``FILE: path.to.key: message``. A missing or unparseable file is one line, never a
traceback. To validate a new kind of file (as the offer catalog does), add a
:class:`FileKind` to :data:`KINDS` with its detector and validator: nothing else changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from app.domain.program import ProgramError, program_errors, read_yaml


@dataclass(frozen=True)
class FileKind:
    name: str
    detect: Callable[[Any], bool]  # parsed YAML document -> is it this kind?
    validate: Callable[[Path, Any], list[str]]  # (path, document) -> "key.path: message"


def _mapping_errors(path: Path, _doc: Any) -> list[str]:
    from app.mapping.config import validate_mapping_file

    return validate_mapping_file(path)


def _offer_errors(path: Path, _doc: Any) -> list[str]:
    from app.decisioning.catalog import validate_offer_file

    return validate_offer_file(path)


def _keys(doc: Any) -> set[str]:
    return set(doc) if isinstance(doc, dict) else set()


KINDS: list[FileKind] = [
    FileKind("mapping", lambda d: {"source", "tables"} <= _keys(d), _mapping_errors),
    FileKind(
        "offer catalog",
        lambda d: bool({"product_offers", "loyalty_offers", "offers"} & _keys(d)),
        _offer_errors,
    ),
    # The program is the fallback: every key is optional, so an empty file is a program.
    FileKind("program", lambda d: True, lambda _p, d: program_errors(d)),
]


def validate_file(path: Path) -> tuple[str | None, list[str]]:
    """(detected kind, errors). Reading/parsing problems are one ``(file): ...`` error."""
    try:
        doc = read_yaml(path)
    except ProgramError as exc:
        return None, exc.errors
    for kind in KINDS:
        if kind.detect(doc):
            return kind.name, kind.validate(path, doc)
    return None, ["(file): unknown kind of configuration file"]  # pragma: no cover


config_app = typer.Typer(help="Configuration files (program, mappings, ...).", no_args_is_help=True)


@config_app.command("validate")
def config_validate(
    files: list[Path] = typer.Argument(..., help="YAML files to validate."),
) -> None:
    """Print every error with the path of the offending key; exit 1 if any file is invalid."""
    bad = False
    for path in files:
        kind, errors = validate_file(path)
        if errors:
            bad = True
            for e in errors:
                typer.echo(f"{path}: {e}", err=True)
        else:
            typer.echo(f"{path}: ok ({kind})")
    if bad:
        raise typer.Exit(1)


def bench_domain(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with all figures."),
    records: int = typer.Option(200_000, "--records", min=1000, help="Records of the rate test."),
    members: int = typer.Option(1000, "--members", min=1, help="Members of the memory test."),
    repeats: int = typer.Option(15, "--repeats", min=1, help="Late records timed (median)."),
    runs: int = typer.Option(3, "--runs", min=1, help="In-order runs (median)."),
) -> None:
    """Records/s in time order (one core), cost of a late record, bytes per member state."""
    import time

    from app.domain.bench import format_figures, run_domain_bench

    figures = run_domain_bench(
        records=records, timer=time.process_time, memory_members=members, late_repeats=repeats,
        runs=runs,
    )
    typer.echo(json.dumps(figures, indent=2) if as_json else format_figures(figures))


def _group(main_app: typer.Typer, name: str, sub: typer.Typer) -> typer.Typer:
    """The ``name`` group of ``main_app``; ``sub`` is mounted if none is there yet."""
    for group in main_app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    main_app.add_typer(sub, name=name)
    return sub


def register(main_app: typer.Typer) -> None:
    """Mount ``config validate`` and ``bench domain`` (joining existing groups if any)."""
    config = _group(main_app, "config", config_app)
    if config is not config_app:
        config.command("validate")(config_validate)
    bench = _group(
        main_app, "bench", typer.Typer(help="Benchmarks: figures, never pass/fail.",
                                       no_args_is_help=True)
    )
    bench.command("domain")(bench_domain)
