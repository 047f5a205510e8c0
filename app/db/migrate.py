"""Create the four databases and bring each to its newest migration (``loyalty-cdp db upgrade``).

Version trees live in ``migrations/<database>/`` (one alembic script directory per database,
each with its own history): ``pos``, ``web``, ``app`` -- the reference source databases of
SPEC section 3 -- and ``cdp``, the profile store. The alembic configuration is built in code,
so nothing depends on the working directory or an ``alembic.ini``. The migrations directory
is the repository's ``migrations/`` (``$LOYALTY_CDP_MIGRATIONS`` overrides it).

DSNs: callers pass and receive libpq URLs (``postgresql://user@host:port/db``), which psycopg,
``psql`` and the Debezium connector config all understand; SQLAlchemy URLs
(``postgresql+psycopg://``) are accepted too. Internally SQLAlchemy uses psycopg 3.

Concurrent runs (two CLIs, a test and the stack) serialise on a PostgreSQL advisory lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from app.db.alembic_env import VERSION_SCHEMA

SOURCE_DATABASES: tuple[str, ...] = ("pos", "web", "app")
STORE_DATABASE = "cdp"
DATABASES: tuple[str, ...] = (*SOURCE_DATABASES, STORE_DATABASE)
ENV_MIGRATIONS = "LOYALTY_CDP_MIGRATIONS"
_LOCK_KEY = 0x6C6F79616C7479  # "loyalty": pg_advisory_lock key for migrations


def migrations_dir() -> Path:
    env = os.environ.get(ENV_MIGRATIONS)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "migrations"


def database_dsn(dsn: str, database: str) -> str:
    """The libpq URL of ``database`` on the server of ``dsn``."""
    url = make_url(dsn).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def _sqlalchemy_url(dsn: str) -> str:
    return make_url(dsn).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def alembic_config(database: str, dsn: str) -> Config:
    """An alembic Config for ``database`` (its own script directory), pointed at ``dsn``."""
    script_location = migrations_dir() / database
    if not (script_location / "env.py").is_file():
        raise FileNotFoundError(f"no migrations for database {database!r} in {script_location}")
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("path_separator", "os")
    # '%' is ConfigParser interpolation syntax: escape it (e.g. percent-encoded passwords).
    cfg.set_main_option("sqlalchemy.url", _sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


def current_revision(dsn: str) -> str | None:
    """The revision ``dsn``'s database is at (None if never migrated)."""
    engine = create_engine(_sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table_schema": VERSION_SCHEMA})
            return ctx.get_current_revision()
    finally:
        engine.dispose()


def ensure_database(admin: psycopg.Connection, name: str) -> bool:
    """CREATE DATABASE ``name`` unless it exists; True if it was created."""
    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        return False
    admin.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8'").format(sql.Identifier(name)))
    return True


def upgrade(database: str, dsn: str, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` of one database (which must exist)."""
    command.upgrade(alembic_config(database, dsn), revision)


def upgrade_all(admin_dsn: str, databases: Iterable[str] = DATABASES) -> dict[str, str]:
    """Create missing databases and upgrade each to head. Idempotent; returns db -> libpq URL.

    ``admin_dsn`` must reach the server as a role allowed to create databases; its database
    part is ignored (the ``postgres`` maintenance database is used).
    """
    admin_url = database_dsn(admin_dsn, "postgres")
    dsns: dict[str, str] = {}
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            for db in databases:
                ensure_database(admin, db)
                dsns[db] = database_dsn(admin_dsn, db)
                upgrade(db, dsns[db])
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return dsns
