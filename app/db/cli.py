"""``loyalty-cdp db ...``: database commands (a typer sub-app mounted by app/cli.py).

The admin DSN comes from ``--dsn``, else ``$LOYALTY_CDP_ADMIN_DSN``. (Discovery from the running
embedded stack's status is wired by app/cli.py.)
"""

from __future__ import annotations

import json
import os

import typer

ENV_ADMIN_DSN = "LOYALTY_CDP_ADMIN_DSN"

app = typer.Typer(name="db", help="Database migrations.", no_args_is_help=True)


@app.callback()
def _db() -> None:
    """Database migrations (keeps ``db`` a command group even with one sub-command)."""


def resolve_admin_dsn(dsn: str | None) -> str:
    """``dsn`` or the environment; a one-line error (exit 2) when neither is given."""
    dsn = dsn or os.environ.get(ENV_ADMIN_DSN)
    if not dsn:
        typer.echo(f"error: no admin DSN: pass --dsn or set {ENV_ADMIN_DSN}", err=True)
        raise typer.Exit(2)
    return dsn


@app.command("upgrade")
def upgrade_cmd(
    dsn: str | None = typer.Option(
        None, "--dsn", help=f"Admin DSN of the server (default: ${ENV_ADMIN_DSN}).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print database -> DSN as JSON."),
) -> None:
    """Create the pos, web, app and cdp databases if missing and migrate each to head."""
    import psycopg
    import sqlalchemy.exc

    from app.db.migrate import current_revision, upgrade_all

    admin = resolve_admin_dsn(dsn)
    try:
        dsns = upgrade_all(admin)
        revisions = {db: current_revision(url) for db, url in dsns.items()}
    except (psycopg.Error, sqlalchemy.exc.SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.echo(f"error: db upgrade failed: {first}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(dsns))
        return
    for db, url in dsns.items():
        typer.echo(f"{db:4} {revisions[db] or '-':10} {url}")
