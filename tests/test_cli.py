"""`python -m service`: what a person sees on the first screen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
    assert result.stderr.strip().splitlines() == [
        "error: setting API_KEY: API_KEY must be at least 16 characters (got 'too-short')"
    ]

    result = run(tmp_path, "worker", MAX_PREDICT_FILES="many")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: setting MAX_PREDICT_FILES: ") and "'many'" in line


def test_the_demo_trains_by_transfer_where_imagenet_weights_can_be_had() -> None:
    from service.demo import job_body
    from service.spec import JobSpec

    online = JobSpec.model_validate(job_body("d_1", 3, offline_reason=None))
    assert online.backbone.weights == "imagenet" and online.freeze.mode == "backbone"
    assert [stage.freeze.mode for stage in online.stages] == ["backbone", "partial"]
    assert online.stages[1].learning_rate < online.stages[0].learning_rate
    offline = JobSpec.model_validate(job_body("d_1", 3, offline_reason="no network"))
    assert offline.backbone.weights is None and offline.freeze.mode == "none"
