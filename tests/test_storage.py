"""Migrations, SQLite settings, schema checks, and the deployment files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from alembic import command
from fastapi.testclient import TestClient

from service.__main__ import build_parser
from service.api.app import create_app
from service.storage.db import Database, SchemaNotCurrent, open_database
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]


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


def test_docker_compose_runs_commands_the_package_provides() -> None:
    """Each compose command parses with the CLI's own parser, to the subcommand its service
    is named for; the API listens on the port compose publishes."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"api", "worker"}
    parser = build_parser()
    parsed = {}
    for name, service in compose["services"].items():
        command_line = service["command"]
        assert command_line[:3] == ["python", "-m", "service"], name
        try:
            parsed[name] = parser.parse_args(command_line[3:])
        except SystemExit:  # argparse exits on arguments it does not know
            pytest.fail(f"{name}: `{' '.join(command_line)}` does not parse")
        assert parsed[name].command == name
        assert any(volume.endswith(":/data") for volume in service["volumes"])
    published = {int(mapping.split(":")[-1]) for mapping in compose["services"]["api"]["ports"]}
    assert published == {parsed["api"].port}
    assert parsed["api"].host == "0.0.0.0"  # reachable from outside the container
    reservation = compose["services"]["worker"]["deploy"]["resources"]["reservations"]
    assert reservation["devices"][0]["driver"] == "nvidia"
