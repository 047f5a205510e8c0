"""``loyalty-cdp simulate``: the typer command around :mod:`app.simulate`.

DSNs come from ``--dsn-pos/--dsn-web/--dsn-app``, else ``$LOYALTY_CDP_DSN_POS`` etc. (app/cli.py
may resolve them from the running stack and call :func:`run_simulation` directly.)

``--start`` defaults to midnight UTC ``--days`` days ago, so the traffic ends about now (the
program's wall-clock rules then see it as recent); the start used is printed -- pass it back
with ``--start`` and the same ``--seed`` to reproduce the rows exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.simulate import SOURCES, SimulationError, SimulationSummary, simulate

ENV_DSN = {source: f"LOYALTY_CDP_DSN_{source.upper()}" for source in SOURCES}


def stack_source_dsns(state_dir: Path | None) -> dict[str, str] | None:
    """DSNs of the embedded stack's source databases, or None when there is no stack."""
    from app.settings import settings
    from app.stack.postgres import dsn_for
    from app.stack.state import StackPaths

    state = StackPaths((state_dir or settings().state_dir).resolve()).load()
    if state is None:
        return None
    return {s: dsn_for(state.pg_port, s) for s in SOURCES}


def default_start(days: int, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)


def parse_start(value: str) -> datetime:
    """ISO-8601 date or datetime; naive values are UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO-8601 date/time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def run_simulation(dsns: Mapping[str, str], members: int, days: int, rate: float | None,
                   seed: int, start: datetime, console: Console | None = None,
                   show_progress: bool = True) -> SimulationSummary:
    """Run the simulator with a rich progress bar; raises SimulationError."""
    console = console or Console(stderr=True)
    with Progress(
        TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
        TimeElapsedColumn(), console=console, disable=not show_progress, transient=False,
    ) as bar:
        task = bar.add_task("rows", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return simulate(dsns, members, days, rate, seed, start, progress)


def simulate_cmd(
    members: int = typer.Option(100, "--members", min=0, help="Members to enroll."),
    days: int = typer.Option(30, "--days", min=1, help="Days of event time to simulate."),
    rate: float | None = typer.Option(
        None, "--rate", min=0.001, help="Rows/s over all sources (default: as fast as possible)."
    ),
    seed: int = typer.Option(1, "--seed", help="Same seed and start -> identical rows."),
    start: str | None = typer.Option(
        None, "--start", help="Event time of day 0, ISO-8601 (default: midnight UTC DAYS ago)."
    ),
    dsn_pos: str | None = typer.Option(None, "--dsn-pos", help=f"Default ${ENV_DSN['pos']}."),
    dsn_web: str | None = typer.Option(None, "--dsn-web", help=f"Default ${ENV_DSN['web']}."),
    dsn_app: str | None = typer.Option(None, "--dsn-app", help=f"Default ${ENV_DSN['app']}."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Embedded stack whose sources to use when no DSN is given."
    ),
) -> None:
    """Write realistic loyalty traffic into the pos, web and app source databases."""
    given = {"pos": dsn_pos, "web": dsn_web, "app": dsn_app}
    dsns = {s: given[s] or os.environ.get(ENV_DSN[s], "") for s in SOURCES}
    missing = [s for s in SOURCES if not dsns[s]]
    if missing:
        stack = stack_source_dsns(state_dir)
        if stack is None:
            flags = ", ".join(f"--dsn-{s}/${ENV_DSN[s]}" for s in missing)
            typer.echo(
                f"error: no DSN for {', '.join(missing)}: start the stack (`loyalty-cdp up`)"
                f" or pass {flags}",
                err=True,
            )
            raise typer.Exit(2)
        dsns = {s: dsns[s] or stack[s] for s in SOURCES}
    start_at = parse_start(start) if start else default_start(days)
    try:
        summary = run_simulation(dsns, members, days, rate, seed, start_at)
    except SimulationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(summary_dict(summary)))
        return
    typer.echo(
        f"wrote {summary.rows} rows in {summary.elapsed_s:.1f}s ({summary.rows_per_s:.0f} rows/s)"
        f" for {members} members over {days} days from {start_at.isoformat()} (seed {seed})"
    )
    for table, n in sorted(summary.rows_by_table.items()):
        typer.echo(f"  {table:28} {n}")


def summary_dict(summary: SimulationSummary) -> dict[str, object]:
    return {
        "members": summary.members, "days": summary.days, "seed": summary.seed,
        "start": summary.start.isoformat(), "end": summary.end.isoformat(),
        "rows": summary.rows, "elapsed_s": round(summary.elapsed_s, 3),
        "rows_per_s": round(summary.rows_per_s, 1), "rows_by_source": summary.rows_by_source,
        "rows_by_table": summary.rows_by_table, "tags": summary.tags,
    }


app = typer.Typer(add_completion=False)
app.command("simulate")(simulate_cmd)


def register(main_app: typer.Typer) -> None:
    """Mount ``simulate`` on the main CLI."""
    main_app.command("simulate")(simulate_cmd)
