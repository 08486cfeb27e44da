"""Batch prediction in the console: in a real browser (system Chromium) against a real server
and worker, a zip classified from the model page's link, followed on its job page, its CSV
downloaded and equal to what `GET /predictions/{id}/results` answers, its unreadable file
listed. Without a browser: the form's errors and pages against the JSON routes."""

from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from playwright.sync_api import expect

from tests.browser import LiveService, PageProblems
from tests.conftest import colour_images, make_zip
from tests.test_console import TIMEOUT_MS, sign_in
from tests.test_console_registry import train_versions

HTMX = {"HX-Request": "true"}


def holiday_zip() -> bytes:
    images = colour_images(per_class=2, seed=3)
    files = {
        f"trip/{label}-{n}.png": data for label, row in images.items() for n, data in enumerate(row)
    }
    return make_zip({**files, "trip/notes.txt": b"not an image"})


def test_a_batch_from_the_model_page_in_a_browser(
    browser: Any, live: LiveService, screenshots: Path, tmp_path: Path
) -> None:
    (model_id,) = train_versions(live, 1, tmp_path / "worker.log")
    upload = tmp_path / "holiday.zip"
    upload.write_bytes(holiday_zip())
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = PageProblems(page, live.url)
    sign_in(page, live)
    page.goto(f"{live.url}/console/models/{model_id}")
    page.locator("#model-batch").click()
    page.wait_for_url(re.compile(r"/console/predictions\?model_id="))
    expect(page.locator("#batch-model")).to_have_value(model_id)
    page.set_input_files("#batch-file", str(upload))
    page.get_by_label("Labels per image").fill("2")
    page.screenshot(path=str(screenshots / "1-batch-form.png"), full_page=True)
    page.locator("#batch-form").get_by_role("button", name="Classify").click()
    page.wait_for_url(re.compile(r"/console/jobs/j_"))
    expect(page.locator("main")).to_contain_text(f"batch prediction with model {model_id}")
    page.wait_for_function(
        "() => document.querySelector('#job-status').innerText === 'succeeded'", timeout=TIMEOUT_MS
    )
    expect(page.locator("#job-results")).to_be_visible()
    expect(page.locator("#job-progress")).to_have_js_property("value", 1)
    with page.expect_download() as download:
        page.locator("#job-results").get_by_role("link", name="CSV").click()
    data = Path(download.value.path()).read_bytes()
    with live.client() as client:
        (record,) = client.get("/predictions").json()
        assert client.get(f"/predictions/{record['id']}/results?format=csv").content == data
    assert [bad["file"] for bad in record["bad"]] == ["trip/notes.txt"]
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert len(rows) == 7 and sum(1 for row in rows if row["predicted_2"]) == 6

    page.locator("#job-results").get_by_role("link", name="the predictions page").click()
    row = page.locator(f"#{record['id']}")
    expect(row).to_contain_text("succeeded")
    row.locator("summary").click()
    expect(row).to_contain_text("trip/notes.txt")
    page.screenshot(path=str(screenshots / "2-batches.png"), full_page=True)
    problems.check()
    page.close()


def test_the_form_answers_as_the_api_does(small_model: dict[str, Any]) -> None:
    client: TestClient = small_model["service"].client
    model_id, dataset = small_model["job"]["model_id"], small_model["dataset"]
    shown = html.unescape(client.get(f"/console/predictions?model_id={model_id}").text)
    assert f'<option value="{model_id}" selected>' in shown
    assert f'<option value="{dataset["id"]}">' in shown

    neither = client.post("/console/predictions", data={"model_id": model_id}, headers=HTMX)
    assert neither.status_code == 422 and "send the images one way" in neither.text
    unknown = client.post(
        "/console/predictions", data={"model_id": "m_nope", "dataset_id": dataset["id"]}
    )
    assert unknown.status_code == 404 and "m_nope" in unknown.text
    not_zip = client.post(
        "/console/predictions",
        data={"model_id": model_id},
        files={"file": ("x.zip", b"nope", "application/zip")},
    )
    assert not_zip.status_code == 400 and "x.zip: not a zip archive" in not_zip.text

    made = client.post(
        "/console/predictions",
        data={"model_id": model_id, "dataset_id": dataset["id"], "top_k": "1"},
        files={"file": ("", b"", "application/octet-stream")},  # no file chosen
    )
    assert made.status_code == 201, made.text
    job_id = made.headers["X-Location"].rsplit("/", 1)[1]
    record = next(r for r in client.get("/predictions").json() if r["job_id"] == job_id)
    assert record["source"] == "dataset" and record["top_k"] == 1
    job_page = html.unescape(client.get(f"/console/jobs/{job_id}").text)
    assert 'data-kind="predict"' in job_page and 'id="epochs"' not in job_page
    assert f'batch prediction with model <a href="/console/models/{model_id}">' in job_page
    listed = client.get("/console/predictions").text
    assert f'id="{record["id"]}"' in listed and ">queued<" in listed
    assert client.delete(f"/predictions/{record['id']}").status_code == 204
