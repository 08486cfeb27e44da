"""The console shows what an error answer says as text, never as markup: a 422 echoes the
input it refuses, and a message may quote a file name. In a real browser (system Chromium),
one page, no training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import PageProblems, start_live_service
from tests.test_console import sign_in

# Sets a flag if it ever runs (no quotes: JSON escaping leaves it intact); an <img> in the
# page would show it became markup even where a Content-Security-Policy stops the script.
ECHO = "<img src=x onerror=window.__injected=1>"
# Any words but the upload's own while it runs: the answer has been shown, one way or another.
SETTLED = re.compile(r"^(\s*|Uploading.*|Sending.*)$")


def injected(page: Any, selector: str) -> tuple[Any, int]:
    return page.evaluate("window.__injected"), page.locator(f"{selector} img").count()


@pytest.mark.browser
def test_echoed_input_in_an_error_answer_is_shown_as_text(
    browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    live = start_live_service(tmp_path / "data", import_root=tmp_path)
    try:
        page = browser.new_page()
        problems = PageProblems(page, live.url)
        problems.expect("the server responded with a status of")
        sign_in(page, live)
        page.goto(f"{live.url}/console/datasets")

        # The upload: the service's own 422 (a name over 200 characters) echoes the name.
        page.eval_on_selector("#upload-name", "input => input.removeAttribute('maxlength')")
        page.fill("#upload-name", ECHO + "a" * 200)
        upload = {"name": "a.zip", "mimeType": "application/zip", "buffer": b"PK"}
        page.set_input_files("#upload-file", files=[upload])
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#upload-status")).not_to_have_text(SETTLED)
        assert injected(page, "#upload-status") == (None, 0)
        assert "name: String should have at most 200 characters" in page.inner_text(
            "#upload-status .error"
        )

        # An answer whose message quotes the input is shown with it, as text.
        def echoing(route: Any) -> None:
            body = json.dumps({"detail": f"bad name {ECHO}"})
            route.fulfill(status=400, content_type="application/json", body=body)

        page.route("**/console/datasets", echoing)
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#upload-status")).to_contain_text("bad name")
        assert injected(page, "#upload-status") == (None, 0)
        assert page.inner_text("#upload-status") == f"bad name {ECHO}"
        page.unroute("**/console/datasets")

        # An htmx form: the import's path over 4000 characters is FastAPI's JSON 422.
        page.eval_on_selector("#import-path", "input => input.removeAttribute('maxlength')")
        page.fill("#import-path", ECHO + "a" * 4000)
        page.get_by_role("button", name="Import").click()
        expect(page.locator("#import-errors")).not_to_be_empty()
        assert injected(page, "#import-errors") == (None, 0)
        assert "path: String should have at most 4000 characters" in page.inner_text(
            "#import-errors .error"
        )
        page.screenshot(path=str(screenshots / "echoed-error.png"))
        problems.check()
    finally:
        live.stop()
