"""Alembic environment of the `pos` database (see app/db/alembic_env.py)."""

from app.db.alembic_env import run_migrations

run_migrations()
