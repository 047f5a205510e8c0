"""Shared body of the ``env.py`` of every version tree under ``migrations/``.

Each database (``pos``, ``web``, ``app``, ``cdp``) has its own alembic script directory so its
history is versioned on its own; their ``env.py`` files only call :func:`run_migrations`.

The ``alembic_version`` table lives in a schema of its own (:data:`VERSION_SCHEMA`), not in
``public``: the source databases' ``public`` schema then holds exactly the captured tables
(SPEC section 3), so a ``FOR ALL TABLES`` publication or a schema-wide include list never
captures migration bookkeeping.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

VERSION_SCHEMA = "alembic"


def run_migrations() -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(
            url=url, literal_binds=True, version_table_schema=VERSION_SCHEMA,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url or "", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}"))
            conn.commit()
            context.configure(
                connection=conn, version_table_schema=VERSION_SCHEMA,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
