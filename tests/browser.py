"""A real browser against a real server: headless Chromium from the system's packages, driven
by Playwright (`executable_path`, nothing downloaded), and the app served by uvicorn on
loopback with a real worker beside it: the loop `python -m service worker` runs (claims, lease,
webhook deliverer) on a thread of the test process, where TensorFlow is already imported; a
fresh worker process would spend most of a browser test starting. The tests of the worker as a
process (signals, kills, several processes) are test_worker.py's, test_reliability.py's and
test_resume.py's.

Any JavaScript error or failed request in a page fails the test that opened it. Screenshots
go to `SCREENSHOTS_DIR` (default: the test's temporary folder).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.api.app import create_app
from service.config import Settings
from service.storage.db import Database
from tests.conftest import make_settings, migrated

API_KEY = "console-test-key-0123456789"


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveWorker:
    """The worker loop of `python -m service worker` (service.jobs.runner.run_worker: the
    loop and its webhook deliverer) on a thread of this process, its log lines (the service's
    loggers, INFO and up) written to `log`. Stopped as the process is by SIGTERM: it finishes
    the current step and releases its job; `terminate` and `wait` answer as Popen's do."""

    def __init__(self, settings: Settings, log: Path) -> None:
        # TensorFlow imported here, before the worker thread starts: the thread imports it
        # when it finds its devices, and the API's threads when they first load a model, and
        # two threads importing it at once can see it half-initialised (a circular-import
        # error that ends the worker thread).
        import tensorflow  # noqa: F401

        from service import webhooks
        from service.job_kinds import KINDS
        from service.jobs.runner import Worker

        self.database = Database(settings.database_url)
        self.handler = logging.FileHandler(log)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger = logging.getLogger("service")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.loop = Worker(self.database, settings, KINDS)
        self.deliverer = webhooks.Deliverer(self.database, settings).start()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-worker")
        self.thread.start()
        self.returncode: int | None = None

    def terminate(self) -> None:
        self.loop.request_shutdown()

    def wait(self, timeout: float | None = None) -> int:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise subprocess.TimeoutExpired("live-worker", timeout or 0)
        if self.returncode is None:
            self.deliverer.stop()
            self.database.dispose()
            self.logger.removeHandler(self.handler)
            self.logger.setLevel(self.level)
            self.handler.close()
            self.returncode = 0
        return self.returncode


@dataclass
class LiveService:
    """uvicorn serving the app in a thread, and (when started) a worker beside it."""

    settings: Settings
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    worker: LiveWorker | None = None

    def start_worker(self, log: Path) -> None:
        self.worker = LiveWorker(self.settings, log)

    def client(self, *, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(timeout=120)
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_live_service(data_dir: Path, **overrides: Any) -> LiveService:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "poll_seconds": 0.05,  # the worker's wait between claims: a queued job starts at once
        "progress_seconds": 0.2,
        "events_poll_seconds": 0.1,
    }
    settings = make_settings(data_dir, **{**values, **overrides})
    migrated(settings.database_url).dispose()
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    return LiveService(settings, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveService]:
    running = start_live_service(tmp_path / "data")
    yield running
    running.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Per test: Playwright's sync API keeps an event loop running in this thread while it
    lives, which would break the tests after it that run their own (asyncio.run)."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no system Chromium (apt-get install chromium); browser tests skipped")
    from playwright.sync_api import expect, sync_playwright

    # A console request can wait seconds behind a model build on a busy two-core CI machine;
    # Playwright's 5 s default then fails a page that is only slow.
    expect.set_options(timeout=15_000)

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


class PageProblems:
    """What went wrong in a page: JavaScript errors, console errors, failed requests."""

    def __init__(self, page: Any, origin: str) -> None:
        self.errors: list[str] = []
        self.expected: list[str] = []  # substrings of console errors a test provokes
        self.origin = origin
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)
        page.on("requestfailed", self._failed)
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(text in message.text for text in self.expected):
            self.errors.append(f"console: {message.text}")

    def _failed(self, request: Any) -> None:
        failure = request.failure or ""
        # A request the page itself gives up (a stream closed on leaving, a preview replaced
        # by a newer one) is not a failure.
        if "ERR_ABORTED" in failure and request.resource_type in ("eventsource", "fetch", "xhr"):
            return
        self.errors.append(f"request failed: {request.method} {request.url} {failure}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.origin, "data:", "blob:")):
            self.errors.append(f"request left the service: {request.url}")

    def expect(self, text: str) -> None:
        self.expected.append(text)

    def check(self) -> None:
        assert not self.errors, "\n".join(self.errors)


@pytest.fixture
def screenshots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR", tmp_path / "screenshots"))
    folder = folder / request.node.name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
