"""Alembic environment for kfac-lab: the store's models are the target, the URL comes from the
settings (or `-x url=...`, or `backend.store.migrate.upgrade(url)`).

SQLite cannot alter tables in place, so its migrations are rendered in batch mode (copy and
move). On PostgreSQL an advisory lock serialises concurrent upgrades, e.g. an API and several
workers starting together: the later ones wait and then find the schema already at head.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.pool import NullPool

from backend.store.db import make_engine, normalise_url
from backend.store.models import Base

MIGRATION_LOCK_KEY = 0x6B666163  # "kfac", any constant shared by every upgrader

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        from backend.settings import get_settings

        url = get_settings().database_url
    return normalise_url(url)


def configure(**kwargs) -> None:
    context.configure(
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=kwargs.pop("dialect_name") == "sqlite",
        **kwargs,
    )


def run_online(connection: Connection) -> None:
    configure(connection=connection, dialect_name=connection.dialect.name)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


if context.is_offline_mode():
    url = database_url()
    configure(url=url, literal_binds=True, dialect_name=url.split(":")[0].split("+")[0])
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run_online(config.attributes["connection"])
else:
    engine = make_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            run_online(connection)
            connection.commit()
    finally:
        engine.dispose()
