"""The schema exists only through the migrations: they must agree with the models."""

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.store.db import get_engine
from backend.store.migrate import upgrade
from backend.store.models import Base


def test_migrations_match_models(db_url: str) -> None:
    with get_engine(db_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    upgrade(db_url)  # already at head: nothing to do, nothing fails
    tables = set(inspect(get_engine(db_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_the_store_imports_neither_fastapi_nor_torch() -> None:
    """Workers and the API both import the store; it must stay light (see DESIGN.md)."""
    code = (
        "import sys, backend.settings, backend.store.access, backend.store.migrate, "
        "backend.store.queries, backend.store.results, backend.store.writes; "
        "print(sorted({'fastapi', 'torch'} & set(sys.modules)))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
