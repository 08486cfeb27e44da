"""Fixtures: a real database migrated by Alembic, the real app, the real worker loop.

Every test gets its own database: a SQLite file, and where TEST_POSTGRES_URL names a
PostgreSQL server (`.ci/run` starts one) also a fresh PostgreSQL database, so the
database-facing tests run on both. A `Service`'s new SQLite file is a copy of one the
migrations built once per session (`migrated`); tests of the migrations run them themselves.
Models that many tests read are trained once per test run
(`built_once`: by one pytest process, the others copying its folder), by the worker, through
the API: `small_model` for tests that need any stored model, `trained` for those that need one
that has learned.

The app and the worker (and so TensorFlow) are imported only when a test starts a `Service`:
the pure unit tests (ingest, spec) run without them.
"""

from __future__ import annotations

import atexit
import fcntl
import gc
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The test processes share the cores: one thread each inside an op, for them and the
    # workers and benches they start, instead of a pool per core in every process spinning
    # against the others'. (Inter-op pools stay: collectives across logical devices need
    # more than one.) A value set outside wins.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import ColumnElement, create_engine, func, make_url, select

from service.config import Settings
from service.security import COOKIE, CSRF_HEADER, csrf_token, new_session
from service.storage.db import Database
from service.storage.tables import Base, Dataset, DatasetImage, TrainedModel, new_id

if TYPE_CHECKING:
    import httpx

# Compiled modules are cached even where PYTHONDONTWRITEBYTECODE is set (CI images set it):
# the suite starts about a hundred Python processes (workers, servers, benches, xdist's), and
# each would compile the service's modules again, as pytest would rewrite the test modules.
# Collecting the suite took 13 s in each process without the cache, 8 s with it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the processes the tests start
sys.dont_write_bytecode = False  # and for this one

# The browser and live-server fixtures, for every test module that drives a page; and the
# order in which xdist's workers get the tests (longest first, blocks of equal seconds).
pytest_plugins = ["tests.browser", "tests.schedule"]

COLOURS = {"blue": 2, "green": 1, "red": 0}
SIZE = 32
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(not POSTGRES_URL, reason="TEST_POSTGRES_URL is not set"),
    ),
]
# For a test that needs a database, but none of PostgreSQL's own behaviour (claims, locks,
# migrations, blobs, pages, types): one that trains or measures a model and asserts what the
# model does. It runs on SQLite alone instead of training twice.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# The fast lane (`-m "not slow"`) leaves out every test that trains a model, runs worker
# processes or drives a browser: one that asks for a trained model or a browser is slow
# whether or not it is marked so.
SLOW_FIXTURES = frozenset({"small_model", "trained", "browser", "live"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # PostgreSQL runs the tests of what the database itself does (claims, locks, migrations,
    # blobs, pages, transactions); a request refused before any query is the same on both.
    elsewhere = [item for item in items if _postgres_variant_of_any_database_test(item)]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        dropped = {id(item) for item in elsewhere}
        items[:] = [item for item in items if id(item) not in dropped]


_modules_frozen = 0  # how many modules were imported when this process last froze


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a test, once earlier tests imported more modules (TensorFlow's and Keras's,
    mostly), or a test handed the frozen objects back: what this process holds is kept out of
    the collector's full scans (gc.freeze), as the API does after a model load. Keras's
    `clear_session`, which every training job and layer preview calls, runs a full collection,
    and each one rescanned it all: a fifth to a quarter of a test process's time."""
    global _modules_frozen
    if len(sys.modules) > _modules_frozen or not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
        _modules_frozen = len(sys.modules)


def _postgres_variant_of_any_database_test(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    on_postgres = callspec is not None and callspec.params.get("database_url") == "postgresql"
    return on_postgres and item.get_closest_marker("any_database") is not None


def png_bytes(pixels: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


def colour_image(channel: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """Noise with one dominant colour channel: learnable in an epoch or two."""
    pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    pixels[..., channel] += 140
    return pixels


def colour_images(per_class: int, seed: int = 0) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    return {
        name: [png_bytes(colour_image(channel, rng)) for _ in range(per_class)]
        for name, channel in COLOURS.items()
    }


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def class_zip(images: dict[str, list[bytes]], top: str = "") -> bytes:
    return make_zip(
        {
            f"{top}{label}/{number:03d}.png": data
            for label, items in images.items()
            for number, data in enumerate(items)
        }
    )


# The cheapest backbone to build and trace: MobileNet has 86 layers to MobileNetV2's 155, and
# a small job on it costs about 40 % less CPU (28 % with the backbone frozen). For tests of
# queues, processes, storage, streaming and resumption, which assert what the service does
# with a model, not what a particular network is or learns: `job_body(..., backbone=LIGHT)`.
LIGHT = {"name": "MobileNet"}


def job_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    """A tiny, fast job: MobileNetV2 at 32 px from random weights."""
    body: dict[str, Any] = {
        "dataset_id": dataset_id,
        "backbone": {"name": "MobileNetV2", "weights": None, "input_size": SIZE},
        "head": {"pooling": "avg", "dense": [], "dropout": 0.0},
        "freeze": {"mode": "none"},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 0.001, "seed": 0},
    }
    for key, value in overrides.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) else value
    return body


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": "",
        "api_key": None,
        "lease_seconds": 30,
        "poll_seconds": 0.1,
        "progress_seconds": 0.1,
        # Off unless a test is about it: a background load would race the tests' own.
        "warm_models": False,
        # Off unless a test is about it: a test process loads many models in turn, and what
        # one froze in cycles would stay until its app closed.
        "freeze_loaded_models": False,
    }
    return Settings(_env_file=None, **{**values, **overrides})


T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 180, what: str = "", interval: float = 0.1
) -> T:
    """Poll `condition` until it answers something truthy, and answer that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


FINISHED = ("succeeded", "failed", "cancelled")


def wait_for_job(
    service: Service, job_id: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 180
) -> dict[str, Any]:
    """The job once its status is one of `statuses` (by default: once it has ended)."""

    def reached() -> dict[str, Any] | None:
        job = service.client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(reached, timeout, what=f"job {job_id} to be {' or '.join(statuses)}")


def post_zip(service: Service, content: bytes, filename: str = "up.zip") -> httpx.Response:
    return service.client.post("/datasets", files={"file": (filename, content, "application/zip")})


def count_rows(service: Service, table: type[Base], *where: ColumnElement[bool]) -> int:
    with service.database.session() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where)) or 0


def stored_rows(service: Service) -> tuple[int, int]:
    """(datasets, dataset images) stored: both 0 after every refused upload."""
    return count_rows(service, Dataset), count_rows(service, DatasetImage)


def stored_model(job_id: str | None, **overrides: Any) -> TrainedModel:
    """A model row with placeholder contents, for tests of the queue rather than of Keras."""
    model_id = new_id("m")
    values: dict[str, Any] = {
        "id": model_id,
        "name": f"placeholder-{model_id}",
        "version": 1,
        "job_id": job_id,
        "dataset_id": None,
        "backbone": "MobileNetV2",
        "input_size": SIZE,
        "classes": ["a", "b"],
        "metrics": {},
        "evaluation": None,
        "trainable_params": 0,
        "non_trainable_params": 0,
        "size_bytes": 1,
        "savedmodel_sha256": "0" * 64,
        "savedmodel": b"m",
        "backbone_weights": b"w",
    }
    return TrainedModel(**{**values, **overrides})


_MIGRATED_SQLITE: Path | None = None


def migrated(url: str) -> Database:
    """The database at `url`, its schema at head. A SQLite file not there yet starts as a copy
    of one Alembic migrated earlier in this session: running the migrations costs about a
    second on SQLite (a commit each), and a test starts one or more services."""
    global _MIGRATED_SQLITE
    target = make_url(url)
    if target.get_backend_name() == "sqlite" and target.database:
        path = Path(target.database)
        if not path.exists():
            if _MIGRATED_SQLITE is None:
                folder = Path(tempfile.mkdtemp(prefix="migrated-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
                template = Database(f"sqlite:///{folder / 'service.db'}")
                template.upgrade()
                template.dispose()  # the last connection checkpoints the WAL into the file
                _MIGRATED_SQLITE = folder / "service.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_MIGRATED_SQLITE, path)
    database = Database(url)
    database.upgrade()  # at head already when copied: Alembic only reads the version
    return database


class Service:
    """The API (in-process) and a worker loop over one database."""

    def __init__(self, settings: Settings) -> None:
        # Imported here, not at the top: they bring TensorFlow, which pure unit tests skip.
        from fastapi.testclient import TestClient

        from service.api.app import create_app
        from service.job_kinds import KINDS
        from service.jobs.runner import Worker

        self.settings = settings
        self.database = migrated(settings.database_url)
        self.client = TestClient(create_app(settings))
        self.client.__enter__()
        if settings.api_key is None:
            # The console's writes need a session's CSRF token, key or no key. Made here as a
            # page makes them (tests/test_access.py takes them from a page, as a browser
            # does): a first request to a new app builds every route it is matched against
            # (FastAPI builds an included router's routes at its first match), 0.1-0.3 s for
            # the console's, which a test of the JSON API alone never asks for.
            session, cookie = new_session(settings)
            self.client.cookies.set(COOKIE, cookie)
            self.client.headers[CSRF_HEADER] = csrf_token(settings, session)
        self.worker = Worker(self.database, settings, KINDS)

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.database.dispose()

    def upload(self, images: dict[str, list[bytes]], name: str = "colours") -> dict[str, Any]:
        response = self.client.post(
            "/datasets",
            files={"file": (f"{name}.zip", class_zip(images), "application/zip")},
            data={"name": name},
        )
        assert response.status_code == 201, response.text
        return response.json()

    def train(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue the job, let the worker run it, answer the finished job."""
        response = self.client.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert self.worker.run_until_idle() >= 1
        job = self.client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        return job


def console_token(client: Any) -> str:
    """The CSRF token of a console page, its session cookie kept in `client`'s jar."""
    page = client.get("/console").text
    found = re.search(r'name="csrf-token" content="([^"]*)"', page)
    assert found is not None and found.group(1), page[:500]
    return found.group(1)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of its own: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
        return
    assert POSTGRES_URL is not None
    name = f"test_{os.urandom(6).hex()}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[Service]:
    running = Service(make_settings(tmp_path, database_url=database_url))
    yield running
    running.close()


def built_once(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    build: Callable[[Service], dict[str, Any]],
) -> tuple[Service, dict[str, Any]]:
    """A service with what `build` made in it (its answer: JSON), built once per test run: the
    first pytest process to ask builds it in a folder all of xdist's processes share (the
    parent of their base temp folders), under a lock; each then serves its own copy."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared = root / f"built-{name}"
    with (root / f"built-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "state.json").exists():
            builder = Service(make_settings(shared / "data"))
            try:
                state = build(builder)
            finally:
                builder.close()  # its last connection checkpoints SQLite's WAL into the file
            (shared / "state.json").write_text(json.dumps(state))
    mine = tmp_path_factory.mktemp(name) / "data"
    shutil.copytree(shared / "data", mine)
    return Service(make_settings(mine)), json.loads((shared / "state.json").read_text())


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One model trained end to end: fine-tuned MobileNetV2, BN layers trained."""
    images = colour_images(per_class=24)

    def build(service: Service) -> dict[str, Any]:
        dataset = service.upload(images)
        training = {"epochs": 5, "batch_size": 8, "validation_split": 0.25}
        job = service.train(job_body(dataset["id"], training=training))
        return {"dataset": dataset, "job": job}

    running, state = built_once(tmp_path_factory, "trained", build)
    yield {"service": running, "images": images, **state}
    running.close()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One epoch of feature extraction (backbone frozen, random weights) on a few images.

    Several times quicker than `trained`: most of a first epoch is compiling the training
    step, and with the backbone frozen that step holds no gradients through it.
    """
    running, state = small_model_copy(tmp_path_factory)
    yield {"service": running, "images": SMALL_IMAGES, **state}
    running.close()


SMALL_IMAGES = colour_images(per_class=4)


def small_model_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Service, dict[str, Any]]:
    """A copy of `small_model`'s service of its own, for a test that changes its data."""

    def build(service: Service) -> dict[str, Any]:
        dataset = service.upload(SMALL_IMAGES)
        training = {"validation_split": 0.25}
        body = job_body(dataset["id"], freeze={"mode": "backbone"}, training=training)
        return {"dataset": dataset, "job": service.train(body)}

    return built_once(tmp_path_factory, "small", build)
