"""``loyalty-cdp bench ...``: the benchmark commands (figures on stdout, progress on stderr).

:func:`register` mounts the ``bench`` group on the main app, or adds ``cdc`` to a ``bench``
group another module already mounted (e.g. ``bench domain``), so there is one group.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

bench_app = typer.Typer(help="Benchmarks: figures, never pass/fail.", no_args_is_help=True)


def bench_group(main_app: typer.Typer) -> typer.Typer:
    """The ``bench`` sub-app of ``main_app``, created and mounted if it is not there yet."""
    for group in main_app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    main_app.add_typer(bench_app, name="bench")
    return bench_app


def register(main_app: typer.Typer) -> None:
    group = bench_group(main_app)
    group.command("cdc")(bench_cdc)
    group.command("pipeline")(bench_pipeline)
    group.command("api")(bench_api)


def bench_cdc(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with all figures."),
    rows: int = typer.Option(
        100_000, "--rows", min=0, help="Rows of the max-throughput phase (0 skips it)."
    ),
    rate: list[int] = typer.Option(
        [1_000, 10_000], "--rate", min=1, help="Steady write rates of the latency phases."
    ),
    duration: float = typer.Option(
        10.0, "--duration", min=1.0, help="Seconds of writing per latency phase."
    ),
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        help="An empty/new state dir to run in (default: a fresh temp dir, removed after).",
    ),
) -> None:
    """Measure `up` cold/warm, CDC latency p50/p99 at steady rates and max rows/s end to end.

    Starts its own embedded stack and tears it down at the end, also on Ctrl-C.
    """
    from app.bench.cdc import format_table, run_cdc_bench

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(desc: str, done: int, total: int) -> None:
            phase = desc.split(" (")[0]
            if phase not in tasks:
                tasks[phase] = bar.add_task(desc, total=total)
            bar.update(tasks[phase], description=desc, completed=done, total=total)

        def say(msg: str) -> None:
            bar.console.print(f"[dim]{msg}[/dim]")

        result = run_cdc_bench(
            state_dir.resolve() if state_dir else None,
            rows=rows,
            rates=rate,
            duration=duration,
            say=say,
            progress=progress,
        )
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_table(result))


def bench_pipeline(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with all figures."),
    members: int = typer.Option(2_000, "--members", min=1, help="Members of the throughput phase."),
    events: int = typer.Option(20_000, "--events", min=1, help="Canonical events to push through."),
    rate: int = typer.Option(1_000, "--rate", min=1, help="Source rows/s of the latency phase."),
    duration: float = typer.Option(
        10.0, "--duration", min=1.0, help="Seconds of the latency phase."
    ),
    warmup: float = typer.Option(
        5.0, "--warmup", min=0.0,
        help="Seconds of the same traffic before the latency phase, not measured (the CDC"
        " runner's JVM and the stages' code paths warm, as in a running deployment).",
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="An empty/new state dir (default: a fresh temp dir)."
    ),
    scale_bursts: int = typer.Option(
        6, "--scale-bursts", min=0,
        help="Bursts of --members new members through a second stack with small caches, for"
        " rss_bytes_per_member_at_scale (what a member costs once the caches are full);"
        " 0 skips it.",
    ),
) -> None:
    """Measure the stream topology: events/s vs a bare confluent-kafka loop, latency, memory.

    Starts its own embedded stack (manual clock) and tears it down at the end; then, unless
    --scale-bursts 0, a second one for the memory per member at scale.
    """
    from app.bench.pipeline import run_pipeline_bench

    console = Console(stderr=True)
    result = run_pipeline_bench(
        state_dir, members=members, events=events, rate=rate, duration=duration, warmup=warmup,
        scale_bursts=scale_bursts, say=lambda m: console.print(f"[dim]{m}[/dim]"),
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for k, v in result.to_dict().items():
        if k != "machine":
            typer.echo(f"{k:28} {v}")


def bench_api(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with all figures."),
    members: int = typer.Option(500, "--members", min=1, help="Seeded card members."),
    rate: int = typer.Option(500, "--rate", min=1, help="Steady request rate (req/s)."),
    duration: float = typer.Option(10.0, "--duration", min=1.0, help="Seconds per phase."),
    concurrency: int = typer.Option(32, "--concurrency", min=1, help="Saturation clients."),
    events: int = typer.Option(5_000, "--events", min=1, help="Loyalty moments for the agent."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="An empty/new state dir (default: a fresh temp dir)."
    ),
) -> None:
    """Measure POST /v1/decisions (p50/p99, req/s at a steady rate and at saturation) and
    offers/s through the decisioning agent. Starts its own embedded stack."""
    from app.bench.api import format_table, run_api_bench

    console = Console(stderr=True)
    result = run_api_bench(
        state_dir, members=members, rate=rate, duration=duration, concurrency=concurrency,
        events=events, say=lambda m: console.print(f"[dim]{m}[/dim]"),
    )
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_table(result))
