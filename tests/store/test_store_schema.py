"""The schema exists only through the migrations: they must agree with the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.store.db import get_engine
from backend.store.migrate import upgrade
from backend.store.models import Base
from tests.imports import imported_after


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
    store = ["access", "migrate", "queries", "results", "writes"]
    modules = ["backend.settings", *(f"backend.store.{name}" for name in store)]
    assert imported_after(modules, ["fastapi", "torch"]) == []
