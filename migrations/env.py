"""Alembic environment: the URL comes from the caller's config, else from the settings."""

from alembic import context

from service.config import get_settings
from service.storage.db import make_engine
from service.storage.tables import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # Batch mode recreates a table (copy, DROP, rename); with foreign keys on, the DROP
            # cascades into the tables that reference it. Off, before the transaction begins
            # (SQLite ignores the pragma inside one); the connection is discarded afterwards.
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
