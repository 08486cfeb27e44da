"""Engine, sessions and schema checks. SQLite gets WAL, a busy timeout and foreign keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
BUSY_TIMEOUT_MS = 30_000
# Connections kept open (SQLAlchemy's default is 5, and it closes those it opens above that
# as soon as they are returned): concurrent predictions each read their model in a session of
# their own, and sixteen of them at once otherwise open and close a connection every time.
# A pool opens connections only when they are wanted: a worker keeps the two or three it uses.
POOL_SIZE = 20
# PostgreSQL's largest field: 1 GB (MaxAllocSize, 2^30 - 1 bytes, with its 4-byte header).
POSTGRES_LARGEST_FIELD = (1 << 30) - 1 - 4
# What a row holds beside its one large value (ids, a file name, JSON) stays under this:
# SQLite's length limit bounds the whole row as it is stored, not only each value in it.
ROW_ALLOWANCE = 64 << 10


def largest_value(session: Session) -> int:
    """The most bytes one value (a BLOB, a bytea) may hold in a row, the rest of the row
    allowed for: on SQLite its SQLITE_LIMIT_LENGTH as this connection has it (1,000,000,000
    bytes, SQLITE_MAX_LENGTH, unless built or set otherwise), else PostgreSQL's field limit.
    A larger value fails the INSERT ("string or blob too big" on SQLite)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        limit = connection.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    else:
        limit = POSTGRES_LARGEST_FIELD
    return limit - ROW_ALLOWANCE


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, pool_size=POOL_SIZE
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # pysqlite's own transaction handling would defer BEGIN; we issue it ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # A deferred transaction that reads and then writes fails with SQLITE_BUSY when
        # another writer got in between, busy_timeout or not: writers take the lock up front.
        if connection.get_execution_options().get("write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


class Database:
    """The engine and the two kinds of session: read-only and writing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(write=True), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        factory = self._writer if write else self._reader
        with factory() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------

    def alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return config

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self) -> None:
        command.upgrade(self.alembic_config(), "head")

    def schema_problem(self) -> str | None:
        """None when the schema is at head, else what is wrong and how to fix it."""
        current, head = self.current_revision(), self.head_revision()
        if current == head:
            return None
        return (
            f"database schema is at {current or 'nothing (empty database)'}, "
            f"the code needs {head}: run `python -m service migrate`"
        )


class SchemaNotCurrent(RuntimeError):
    pass


def open_database(url: str, *, auto_migrate: bool) -> Database:
    """The database for a process that serves or trains: its schema must be at head."""
    database = Database(url)
    problem = database.schema_problem()
    if problem and auto_migrate:
        database.upgrade()
        problem = database.schema_problem()
    if problem:
        database.dispose()
        raise SchemaNotCurrent(problem)
    return database
