"""``loyalty-cdp``: the one command-line entry point (typer).

Every failure a user can cause (a taken port, no Java, a bad YAML, a stack that is not up)
ends as one line on stderr and a non-zero exit, never a traceback: :func:`main` turns the
project's error types into that line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer

from app.settings import settings

app = typer.Typer(
    name="loyalty-cdp",
    help="Event-driven customer data platform for loyalty programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

StateDir = typer.Option(
    None,
    "--state-dir",
    help="State directory of the embedded stack"
    " (default: $LOYALTY_CDP_STATE_DIR or ./.loyalty-cdp).",
)


def state_dir_or_default(state_dir: Path | None) -> Path:
    return (state_dir or settings().state_dir).resolve()


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command()
def up(
    state_dir: Path | None = StateDir,
    pg_port: int | None = typer.Option(
        None, help="PostgreSQL port (default: kept from the last up, else free)."
    ),
    broker_port: int | None = typer.Option(None, help="Broker port (default: kept, else free)."),
    api_port: int | None = typer.Option(
        None, help="Worker web/API port (default: kept, else free)."
    ),
    clock: str | None = typer.Option(
        None, help="'wall' (default) or 'manual' (moves only with records and `clock tick`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON when up."),
) -> None:
    """Start the embedded stack (PostgreSQL, broker, Debezium, worker); a no-op if it runs."""
    from app.stack.embedded import status as stack_status
    from app.stack.embedded import up as stack_up

    sd = state_dir_or_default(state_dir)
    if clock not in (None, "wall", "manual"):
        raise typer.BadParameter("must be 'wall' or 'manual'", param_hint="--clock")
    try:
        current = stack_status(sd)
        if all(v == "up" for v in current["components"].values()):
            _say(f"stack already running in {sd}")
            typer.echo(json.dumps(current, indent=2) if as_json else _summary(current))
            return
    except Exception:  # no stack yet, or a partial one: start what is missing
        pass
    t0 = time.monotonic()
    st = stack_up(
        sd, pg_port=pg_port, broker_port=broker_port, api_port=api_port, clock=clock, say=_say
    )
    _say(f"up in {time.monotonic() - t0:.1f}s")
    typer.echo(json.dumps(st, indent=2) if as_json else _summary(st))


def _summary(st: dict[str, object]) -> str:
    lines = [f"{k:8} {v}" for k, v in st["components"].items()]  # type: ignore[attr-defined]
    lines += [f"broker   {st['broker']}", f"api      {st['api']}", f"store    {st['store']}"]
    lines += [f"source   {v}" for v in st["sources"].values()]  # type: ignore[attr-defined]
    return "\n".join(lines)


@app.command()
def down(state_dir: Path | None = StateDir) -> None:
    """Stop every process of the embedded stack (data stays in the state dir)."""
    from app.stack.embedded import down as stack_down

    stopped = stack_down(state_dir_or_default(state_dir), say=_say)
    _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(
    state_dir: Path | None = StateDir,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
) -> None:
    """Show components, DSNs, the broker address, the API URL and lag."""
    from app.stack.embedded import status as stack_status

    st = stack_status(state_dir_or_default(state_dir))
    typer.echo(json.dumps(st, indent=2) if as_json else _summary(st))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    state_dir: Path | None = StateDir,
    broker: str | None = typer.Option(
        None, help="Kafka bootstrap servers host:port[,...] (production)."
    ),
    web_port: int | None = typer.Option(None, help="Port of the health/metrics/API web server."),
    web_host: str = typer.Option("127.0.0.1", help="Bind address of the web server."),
) -> None:
    """Run one stream worker in the foreground (production; `up` starts one for you)."""
    from streams.worker import main as worker_main

    argv: list[str] = ["--web-host", web_host]
    if broker:
        argv += ["--broker", broker]
    if web_port:
        argv += ["--web-port", str(web_port)]
    if not broker:
        argv += ["--state-dir", str(state_dir_or_default(state_dir))]
    sys.argv = [sys.argv[0], "worker", *ctx.args]
    raise typer.Exit(worker_main(argv))


topics_app = typer.Typer(help="Kafka topics of the declared topic plan.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("apply")
def topics_apply(
    state_dir: Path | None = StateDir,
    bootstrap: str | None = typer.Option(
        None, help="Bootstrap servers (default: the embedded broker)."
    ),
    replication_factor: int = typer.Option(1, min=1, help="Replication factor of new topics."),
) -> None:
    """Create the missing topics of config/topics.yaml and of the connectors' change topics."""
    from app.cdc.connectors import load_connectors
    from app.stack.topics import apply_topics, load_plan

    cfg = settings()
    if bootstrap is None:
        bootstrap = _embedded_broker(state_dir)
    plan = load_plan(cfg.topics_file, load_connectors(cfg.connectors_dir))
    for name, result in apply_topics(bootstrap, plan, replication_factor).items():
        typer.echo(f"{result:8} {name}")


def _embedded_broker(state_dir: Path | None) -> str:
    from app.stack.errors import StackError
    from app.stack.state import StackPaths

    st = StackPaths(state_dir_or_default(state_dir)).load()
    if st is None:
        raise StackError("no embedded stack: run `loyalty-cdp up` or pass --bootstrap")
    return st.broker


connectors_app = typer.Typer(
    help="Debezium connectors rendered from connectors/*.yaml.", no_args_is_help=True
)
app.add_typer(connectors_app, name="connectors")


@connectors_app.command("render")
def connectors_render(
    target: str = typer.Option(
        "connect", help="'connect' (Kafka Connect REST config) or 'embedded'."
    ),
    state_dir: Path | None = StateDir,
) -> None:
    """Print the connector configs of every source as JSON."""
    from app.cdc.connectors import load_connectors, render_connect, render_embedded
    from app.stack.postgres import SUPERUSER
    from app.stack.state import StackPaths

    specs = load_connectors(settings().connectors_dir)
    if target == "connect":
        typer.echo(json.dumps([render_connect(s) for s in specs], indent=2))
    elif target == "embedded":
        paths = StackPaths(state_dir_or_default(state_dir))
        st = paths.load()
        port = st.pg_port if st else 5432
        out = {
            s.name: render_embedded(
                s,
                host="127.0.0.1",
                port=port,
                user=SUPERUSER,
                offsets_file=paths.cdc_dir / f"{s.name}.offsets",
            )
            for s in specs
        }
        typer.echo(json.dumps(out, indent=2))
    else:
        raise typer.BadParameter("must be 'connect' or 'embedded'", param_hint="--target")


@connectors_app.command("apply")
def connectors_apply(
    connect_url: str = typer.Option(
        ..., "--connect-url", help="Kafka Connect REST URL, e.g. http://connect:8083."
    ),
) -> None:
    """PUT each rendered config to <connect-url>/connectors/<name>/config."""
    from app.cdc.apply import apply_connectors

    for name, code in apply_connectors(connect_url).items():
        typer.echo(f"{code} {name}")


@app.command("wait")
def wait_cmd(
    caught_up: bool = typer.Option(
        False, "--caught-up", help="Wait until every change committed before the call is applied."
    ),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Give up after S seconds."),
    state_dir: Path | None = StateDir,
) -> None:
    """Block until the pipeline has caught up with the sources (exit 1 on timeout)."""
    from app.stack.pipeline import wait_caught_up

    if not caught_up:
        raise typer.BadParameter("say what to wait for: --caught-up", param_hint="--caught-up")
    phases = wait_caught_up(state_dir_or_default(state_dir), timeout=timeout)
    _say("caught up in " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))


clock_app = typer.Typer(help="The manual clock (`up --clock manual`).", no_args_is_help=True)
app.add_typer(clock_app, name="clock")


@clock_app.command("tick")
def clock_tick(
    to: str = typer.Option(..., "--to", help="ISO-8601 time, e.g. 2026-12-31T00:00:00Z."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1),
    state_dir: Path | None = StateDir,
) -> None:
    """Apply every time-driven effect up to T (expiry, downgrades, lapse risk ...)."""
    from datetime import UTC, datetime

    from app.stack.pipeline import tick

    try:
        at = datetime.fromisoformat(to.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO-8601 time: {to!r}", param_hint="--to") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    n = tick(state_dir_or_default(state_dir), at, timeout=timeout)
    _say(f"clock at {at.astimezone(UTC).isoformat()} on {n} partitions")


profiles_app = typer.Typer(help="Unified profiles in the profile store.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


def _store_dsn(state_dir: Path | None, dsn: str | None) -> str:
    from app.stack.errors import StackError
    from app.stack.postgres import dsn_for
    from app.stack.state import StackPaths

    dsn = dsn or os.environ.get("LOYALTY_CDP_STORE_DSN")
    if dsn:
        return dsn
    st = StackPaths(state_dir_or_default(state_dir)).load()
    if st is None:
        raise StackError("no profile store: run `loyalty-cdp up` or pass --dsn")
    return dsn_for(st.pg_port, "cdp")


def _identifier(ref: str, param_hint: str) -> tuple[str, str]:
    """``M100`` or ``type:value``, parsed and normalised like ``GET /v1/members/{id}``."""
    from streams.api import IdentifierError, parse_member_ref

    try:
        return parse_member_ref(ref)
    except IdentifierError as exc:
        raise typer.BadParameter(str(exc), param_hint=param_hint) from None


DsnOption = typer.Option(None, "--dsn", help="Profile store DSN (default: the stack's).")


@profiles_app.command("export")
def profiles_export(
    out: Path | None = typer.Option(None, "--out", help="Write JSON lines here (default stdout)."),
    identifier: str | None = typer.Option(
        None,
        "--identifier",
        help="Access request (GDPR): only the one profile holding this member number or"
        " type:value (email:a@b.com, phone:..., card_no:...); exit 1 when none does.",
    ),
    dsn: str | None = DsnOption,
    state_dir: Path | None = StateDir,
) -> None:
    """Every profile (members and guests) as JSON lines, with the fields of SPEC section 5."""
    import orjson

    from streams.erasure import ErasureError, access_request
    from streams.store import Store

    ident = _identifier(identifier, "--identifier") if identifier is not None else None
    store = Store(_store_dsn(state_dir, dsn))
    n = 0
    try:
        docs = store.export() if ident is None else iter([access_request(store, *ident)])
        with open(out, "wb") if out else open(sys.stdout.fileno(), "wb", closefd=False) as fh:
            for doc in docs:
                fh.write(orjson.dumps(doc) + b"\n")
                n += 1
    except ErasureError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.dispose()
    _say(f"exported {n} profiles" + (f" to {out}" if out else ""))


ERASE_HELP = (
    "GDPR erasure: remove the person holding IDENTIFIER from the profile store and the"
    " compacted cdp.profiles topic, and audit it (erasure_audit, without PII).\n\n"
    "Erased: the person's records, parked and rejected records, profiles and identifier"
    " index rows, loyalty and offer outbox rows, decisions and contact history; a tombstone"
    " per profile id goes to cdp.profiles and the owning worker drops its cached state.\n\n"
    "NOT erased: topics that are not compacted (the change topics pos|web|app.public.*,"
    " cdp.events, cdp.guest_purchases, loyalty.events, offers.*) keep their messages until"
    " retention, and the source databases are the retailer's systems of record: erase the"
    " person there too (Debezium then captures the deletes). A replay while they still hold"
    " the person brings the profile back."
)


@app.command("erase", help=ERASE_HELP)
def erase_cmd(
    identifier: str = typer.Argument(
        ..., help="Member number (M100) or type:value (email:a@b.com, card_no:C1, phone:...)."
    ),
    yes: bool = typer.Option(
        False, "--yes", help="Do not ask for confirmation (required when stdin is no terminal)."
    ),
    dsn: str | None = DsnOption,
    bootstrap: str | None = typer.Option(
        None, help="Bootstrap servers (default: the embedded broker)."
    ),
    state_dir: Path | None = StateDir,
) -> None:
    """GDPR erasure of one person (help: ERASE_HELP; design: streams/erasure.py)."""
    from streams.erasure import (
        ErasureError,
        announce,
        complete,
        erase,
        holder,
        resolved_partitions,
    )
    from streams.store import Store

    type_, value = _identifier(identifier, "IDENTIFIER")
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("required when stdin is not a terminal", param_hint="--yes")
        typer.confirm(
            f"Erase the person holding this {type_} from the store and cdp.profiles"
            " (cannot be undone)?",
            abort=True,
        )
    store = Store(_store_dsn(state_dir, dsn))
    try:
        with store.tx() as conn:
            holder(conn, type_, value)  # unknown or ambiguous: say so before anything else
        broker = bootstrap or _embedded_broker(state_dir)
        partitions = resolved_partitions(broker)  # before deleting: the broker must answer
        done = erase(store, type_, value, partitions, os.environ.get("USER") or "cli")
        announce(done, broker, partitions)
        complete(store, done)
    except ErasureError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.dispose()
    typer.echo(done.summary())


@app.command("replay")
def replay_cmd(state_dir: Path | None = StateDir) -> None:
    """Reprocess the change topics from their start (results are unchanged: exactly-once)."""
    from app.stack.embedded import replay

    n = replay(state_dir_or_default(state_dir), say=_say)
    _say(f"replaying {n} change-topic partitions from the start")


def _register_optional() -> None:
    """Mount the sub-commands that live in their own modules."""
    from app.db.cli import app as db_app

    app.add_typer(db_app, name="db")
    try:
        from app.simulate_cli import register as register_simulate
    except ImportError:
        pass
    else:
        register_simulate(app)
    try:
        from app.domain_cli import register as register_domain
    except ImportError:
        pass
    else:
        register_domain(app)
    try:
        from app.bench.cli import register as register_bench
    except ImportError:
        pass
    else:
        register_bench(app)  # joins a `bench` group another module mounted, else creates it
    try:
        from app.demo import register as register_demo
    except ImportError:
        pass
    else:
        register_demo(app)


_register_optional()


def main() -> None:
    """Console entry point: user errors are one line and exit 1, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.stack.errors import StackError
    from app.stack.postgres import PostgresError

    try:  # recent typer vendors click; older ones use click itself
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click  # type: ignore[no-redef]
    no_args_is_help = getattr(click, "NoArgsIsHelpError", ())

    try:
        rv = app(standalone_mode=False)  # click errors come back here instead of a rich panel
    except no_args_is_help as exc:  # the help was printed already
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        typer.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    except (StackError, PostgresError, OSError, SQLAlchemyError) as exc:
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit(code) / Ctrl-C (130) return a code


def _one_line(msg: str) -> str:
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


if __name__ == "__main__" or os.environ.get("_LOYALTY_CDP_DEBUG") == "main":
    main()
