"""Bring a database's schema to the latest migration from Python (`kfac-lab serve`, tests).

Equivalent to `alembic upgrade head` at the repository root, without needing `alembic.ini`
or the current directory: the migrations are found next to this package.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from backend.store.db import dispose_engines, normalise_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the project's migrations, targeting `url` (default: settings)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = url  # not an ini option: URLs may hold '%' characters
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply every migration up to `revision` to the database at `url` (idempotent)."""
    command.upgrade(alembic_config(url), revision)


@contextmanager
def scratch_database(server_url: str, prefix: str = "kfac_scratch") -> Iterator[str]:
    """A new PostgreSQL database on the server of `server_url`, migrated to head; dropped
    (with any connections left to it) on the way out. For tests and benchmarks."""
    server = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        with server.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = make_url(normalise_url(server_url)).set(database=name)
        try:
            upgrade(url.render_as_string(hide_password=False))
            yield url.render_as_string(hide_password=False)
        finally:
            dispose_engines()
            with server.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        server.dispose()
