"""`python -m service`: what a person sees on the first screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run(tmp_path: Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": "",
        "API_KEY": "",
        "LOG_LEVEL": "INFO",
        **environment,
    }
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=tmp_path,  # away from any .env file
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_prints_one_line_not_library_chatter(tmp_path: Path) -> None:
    result = run(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("schema at 0"), lines

    loud = run(tmp_path, "migrate", LOG_LEVEL="debug")
    assert "alembic" in loud.stderr  # the setting turns the libraries' lines back on


def test_a_bad_setting_is_one_line_naming_it_and_exit_status_2(tmp_path: Path) -> None:
    result = run(tmp_path, "migrate", API_KEY="too-short")
    assert result.returncode == 2
    assert result.stdout == ""
    # A secret is named, never shown: the line ends up in terminals and CI logs.
    assert result.stderr.strip().splitlines() == [
        "error: setting API_KEY: API_KEY must be at least 16 characters"
    ]

    result = run(tmp_path, "worker", MAX_PREDICT_FILES="many")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: setting MAX_PREDICT_FILES: ") and "'many'" in line


def test_no_secret_setting_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate` names the database without its password; a DATABASE_URL SQLAlchemy cannot
    read is named, not quoted (its own message quotes it whole)."""
    from service import __main__ as cli
    from service.config import get_settings
    from service.storage import db

    class Migrated:
        def __init__(self, url: str) -> None:
            self.url = url

        def upgrade(self) -> None:
            pass

        def current_revision(self) -> str:
            return "0012"

    monkeypatch.setattr(db, "Database", Migrated)
    monkeypatch.chdir(tmp_path)  # away from any .env file
    for url, status in (
        ("postgresql+psycopg://transfer:hunter2@db.internal:5432/transfer", 0),
        ("postgresql+psycopg://transfer:hunter2@db.internal:port/transfer", 2),
        ("hunter2 is no URL", 2),
    ):
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            assert cli.main(["migrate"]) == status, url
        finally:
            get_settings.cache_clear()
        printed = capsys.readouterr()
        assert "hunter2" not in printed.out + printed.err, printed
        assert ("db.internal" in printed.out) is (status == 0)
        assert status == 0 or "setting DATABASE_URL" in printed.err


def test_the_demo_trains_by_transfer_where_imagenet_weights_can_be_had() -> None:
    from service.demo import job_body
    from service.training.spec import JobSpec

    online = JobSpec.model_validate(job_body("d_1", 3, offline_reason=None))
    assert online.backbone.weights == "imagenet" and online.freeze.mode == "backbone"
    assert [stage.freeze.mode for stage in online.stages] == ["backbone", "partial"]
    assert online.stages[1].learning_rate < online.stages[0].learning_rate
    offline = JobSpec.model_validate(job_body("d_1", 3, offline_reason="no network"))
    assert offline.backbone.weights is None and offline.freeze.mode == "none"


def test_the_demo_writes_one_line_per_epoch_where_its_output_is_no_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import httpx

    from service.demo import follow_events

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    stream = event("status", {"status": "running"})
    for epoch in (1, 2, 3):
        for step in range(1, 101):
            stream += event("progress", {"epoch": epoch, "epochs": 3, "step": step, "steps": 100})
        row = {"epoch": epoch, "stage": 1, "loss": 0.5, "accuracy": 0.25 * epoch}
        stream += event("epoch", row)
    stream += event("status", {"status": "succeeded"})
    answer = httpx.MockTransport(lambda request: httpx.Response(200, text=stream))
    with httpx.Client(transport=answer, base_url="http://demo") as client:
        follow_events(client, "j_1")
    written = capsys.readouterr().out
    assert "\r" not in written
    lines = written.splitlines()
    assert len(lines) == 3, lines
    assert all(f"epoch {n}/3" in line for n, line in enumerate(lines, start=1))
    assert "accuracy 0.750" in lines[2]
