"""Migrations, SQLite settings and schema checks (the deployment files: test_deploy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.storage.db import Database, SchemaNotCurrent, open_database
from tests.conftest import make_settings


def test_migrations_reach_head_and_match_the_tables(database_url: str) -> None:
    database = Database(database_url)
    config = database.alembic_config()
    command.upgrade(config, "head")
    command.check(config)  # raises if the tables and migrations differ
    assert database.schema_problem() is None
    command.downgrade(config, "base")
    assert "python -m service migrate" in database.schema_problem()
    database.dispose()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'p.db'}")
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    database.dispose()


def test_processes_refuse_a_schema_behind_head(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    with pytest.raises(SchemaNotCurrent, match="python -m service migrate"):
        open_database(url, auto_migrate=False)
    open_database(url, auto_migrate=True).dispose()

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json() == {"status": "ok"}
        command.downgrade(Database(settings.database_url).alembic_config(), "base")
        response = client.get("/readyz")
        assert response.status_code == 503 and "migrate" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_sqlite_rows_keep_their_blobs_last(tmp_path: Path) -> None:
    """SQLite reads a column after a large value by walking its overflow pages: a migration
    that adds a column to a table with a blob must move the blob back to the end (see
    migrations/versions/20261129_0010_blobs_last.py), or reading the row's small columns
    costs a read of the blob."""
    from sqlalchemy import LargeBinary

    from service.storage.tables import Base

    database = Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.upgrade()
    with database.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            blobs = [c.name for c in table.columns if isinstance(c.type, LargeBinary)]
            if not blobs:
                continue
            rows = connection.exec_driver_sql(f"PRAGMA table_info({table.name})").all()
            stored = [row[1] for row in rows]
            assert sorted(stored[-len(blobs) :]) == sorted(blobs), (table.name, stored)
    database.dispose()
