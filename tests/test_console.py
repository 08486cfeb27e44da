"""The console in a real browser (system Chromium), against a real server and worker, as a
person would use it: sign in, upload, preview and adjust the freeze, train, watch, inspect,
try. Any JavaScript error or failed request fails the test; screenshots are written."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from service.web import PAGE_MODULES
from service.web.forms import spec_from_form
from tests.browser import API_KEY, LiveService, PageProblems, start_live_service
from tests.conftest import Service, colour_image, colour_images, png_bytes, stored_model

TIMEOUT_MS = 240_000


def dataset_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, images in colour_images(per_class=8).items():
            for number, data in enumerate(images):
                archive.writestr(f"colours/{label}/{number:03d}.png", data)
        archive.writestr("colours/README.txt", "three colours")
    return buffer.getvalue()


def sign_in(page: Any, live: LiveService) -> None:
    page.goto(f"{live.url}/console")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live.url}/console")


def first_paint_ms(page: Any) -> float:
    """The page's first contentful paint, as the browser measured it from navigation start."""
    entry = "performance.getEntriesByName('first-contentful-paint')[0]"
    page.wait_for_function(f"() => {entry} !== undefined")
    return page.evaluate(f"() => {entry}.startTime")


def trainable_total(page: Any) -> str:
    return page.locator("#trainable-total").inner_text()


def wait_for_total_other_than(page: Any, total: str) -> str:
    page.wait_for_function(
        f"() => document.querySelector('#trainable-total').innerText !== '{total}'"
    )
    return trainable_total(page)


def upload_dataset(page: Any, live: LiveService, folder: Path, paints: dict[str, float]) -> str:
    page.get_by_role("link", name="Datasets").first.click()
    page.wait_for_url(f"{live.url}/console/datasets")
    paints["datasets"] = first_paint_ms(page)
    page.set_input_files(
        "#upload-file",
        files=[{"name": "colours.zip", "mimeType": "application/zip", "buffer": dataset_zip()}],
    )
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/console/datasets/d_"))
    paints["dataset"] = first_paint_ms(page)
    for label in ("blue", "green", "red"):
        expect(page.locator("#classes").get_by_text(label, exact=True)).to_be_visible()
    expect(page.locator("#skipped")).to_contain_text("README.txt")
    expect(page.locator("#classes img")).to_have_count(18)  # six thumbnails per class
    page.screenshot(path=str(folder / "1-dataset.png"), full_page=True)
    return page.url.rsplit("/", 1)[1]


def configure_job(page: Any, folder: Path, paints: dict[str, float]) -> None:
    page.get_by_role("link", name="Train a model on it").click()
    page.wait_for_selector("#layer-table")
    paints["new job"] = first_paint_ms(page)
    page.get_by_label("Input size (px)").fill("32")
    page.get_by_label("Weights", exact=True).select_option("none")  # no ImageNet download here
    page.wait_for_function("() => !document.querySelector('#layers.htmx-request')")
    frozen = trainable_total(page)

    page.get_by_role("button", name="Train everything").click()
    everything = wait_for_total_other_than(page, frozen)

    # Freeze everything up to and including block 14: the totals fall again.
    page.locator('.layer-toggle[data-name="block_14_add"]').uncheck()
    partial = int(wait_for_total_other_than(page, everything).replace(",", ""))
    assert page.get_by_label("Train from layer").input_value() == "block_15_expand"
    assert 0 < partial < int(everything.replace(",", ""))
    page.get_by_text("Training options").click()
    page.get_by_label("Epochs", exact=True).fill("2")
    page.get_by_label("Batch size").fill("8")
    page.wait_for_function("() => !document.querySelector('#layers.htmx-request')")
    page.screenshot(path=str(folder / "2-new-job.png"), full_page=True)


def watch_job(page: Any, folder: Path, paints: dict[str, float]) -> str:
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"/console/jobs/j_"))
    paints["job"] = first_paint_ms(page)
    page.wait_for_function(
        "() => document.querySelector('#job-status').innerText === 'succeeded'", timeout=TIMEOUT_MS
    )
    assert page.locator("#live").get_attribute("data-points") == "2"  # one point per epoch
    assert page.locator("#epochs tbody tr").count() == 2
    page.screenshot(path=str(folder / "3-job.png"), full_page=True)
    page.locator("#job-model-link").click()
    page.wait_for_url(re.compile(r"/console/models/m_"))
    paints["model"] = first_paint_ms(page)
    return page.url.rsplit("/", 1)[1]


def inspect_model(page: Any, live: LiveService, model_id: str, folder: Path) -> None:
    with live.client() as client:
        evaluation = client.get(f"/models/{model_id}/evaluation").json()
    assert page.locator("#accuracy").inner_text() == f"{100 * evaluation['accuracy']:.1f} %"
    calibration = evaluation["calibration"]
    # Two epochs on six validation images may answer every one right, and then no temperature
    # is fitted (the likelihood keeps rising as T -> 0): the page must say which case it is.
    if calibration["fitted"]:
        expect(page.locator("#temperature")).to_have_text(f"{calibration['temperature']:.3f}")
        expect(page.locator("#reliability svg")).to_have_count(2)  # before and after
    else:
        reason = f"Scores are not calibrated: {calibration['reason']}"
        expect(page.get_by_text(reason)).to_be_visible()
    unknowns = evaluation["unknowns"]
    expect(page.locator("#unknown-threshold")).to_have_text(f"{unknowns['threshold']:.2f}")
    expect(page.locator("#unknown-flagged")).to_have_text(
        f"{100 * unknowns['flagged_share']:.1f} %"
    )
    matrix = evaluation["confusion_matrix"]
    row, column = next(
        (i, j) for i, line in enumerate(matrix["matrix"]) for j, cell in enumerate(line) if cell
    )
    page.locator("#confusion tbody tr").nth(row).locator("button.cell").nth(column).click()
    page.wait_for_selector("#samples ul.samples")
    assert page.locator("#samples img").count() == matrix["matrix"][row][column]
    page.screenshot(path=str(folder / "4-model.png"), full_page=True)


def try_an_image(page: Any, live: LiveService, model_id: str, folder: Path) -> None:
    image = png_bytes(colour_image(0, np.random.default_rng(7)))
    picked = {"name": "red.png", "mimeType": "image/png", "buffer": image}
    page.set_input_files("#try-files", files=[picked])
    page.get_by_role("button", name="Classify").click()
    page.wait_for_selector(".prediction")
    shown = page.locator(".bars li .label").first.inner_text()
    with live.client() as client:
        files = {"files": ("red.png", image, "image/png")}
        answer = client.post("/predict", data={"model_id": model_id}, files=files).json()
    assert shown == answer["predictions"][0]["top"][0]["label"]
    # Known or unknown, with the strangeness the API answers.
    ood = page.locator(".prediction .ood")
    assert float(ood.get_attribute("data-ood-score")) == pytest.approx(
        answer["predictions"][0]["ood_score"], rel=1e-4, abs=1e-4
    )
    verdict = "Unknown" if answer["predictions"][0]["unknown"] else "Known"
    expect(ood.locator(".badge")).to_have_text(verdict)
    page.locator("#threshold").fill("1")
    assert page.locator(".bars li:visible").count() == 0
    page.locator("#threshold").fill("0")
    # The top label's class activation map over the picture, its opacity under a slider.
    heat = page.locator(".overlay img.heat")
    expect(heat).to_have_count(1)
    expect(page.locator(".overlay img.base")).to_have_attribute("src", re.compile("^blob:"))
    page.locator("#opacity").fill("0.2")
    assert heat.evaluate("img => getComputedStyle(img).opacity") == "0.2"
    page.screenshot(path=str(folder / "5-try.png"), full_page=True)


def watch_production(page: Any, live: LiveService, model_id: str, folder: Path) -> None:
    """Start capturing from the model page; what /predict then answers shows in its grid,
    strangest first; the drift section says how far its window is from a first test."""
    page.locator("#capture-percent").fill("100")
    page.get_by_role("button", name="Start capturing").click()
    expect(page.locator("#capture-policy")).to_contain_text("Keeping 100 %")
    rng = np.random.default_rng(9)
    sent = [png_bytes(colour_image(channel, rng)) for channel in (0, 1)]
    sent.append(png_bytes(np.full((40, 40, 3), 128, dtype=np.uint8)))  # of no class
    with live.client() as client:
        files = [("files", (f"{n}.png", data, "image/png")) for n, data in enumerate(sent)]
        answer = client.post("/predict", data={"model_id": model_id}, files=files).json()
    strangest = max(answer["predictions"], key=lambda prediction: prediction["ood_score"])
    grid = page.locator("#capture-grid li.capture")
    # Stored off the request's path: the grid is asked again until they are there.
    for _ in range(50):
        page.get_by_role("button", name="Strangest").click()
        page.wait_for_selector("#capture-grid[data-sort='unknown']")
        if grid.count() == len(sent):
            break
        page.wait_for_timeout(100)
    expect(grid).to_have_count(len(sent))
    expect(grid.first.locator("img")).to_have_attribute(
        "alt", re.compile(f"^{re.escape(strangest['filename'])},")
    )
    expect(page.locator("#drift-state")).to_contain_text("Not tested yet")
    page.screenshot(path=str(folder / "6-production.png"), full_page=True)
    page.get_by_role("button", name="Stop capturing").click()
    expect(page.locator("#capture-policy")).to_contain_text("Off")


@pytest.mark.slow
@pytest.mark.browser
def test_the_whole_loop_in_a_browser(
    browser: Any, live: LiveService, screenshots: Path, tmp_path: Path
) -> None:
    live.start_worker(tmp_path / "worker.log")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = PageProblems(page, live.url)
    paints: dict[str, float] = {}
    sign_in(page, live)
    paints["overview"] = first_paint_ms(page)
    upload_dataset(page, live, screenshots, paints)
    configure_job(page, screenshots, paints)
    model_id = watch_job(page, screenshots, paints)
    inspect_model(page, live, model_id, screenshots)
    try_an_image(page, live, model_id, screenshots)
    watch_production(page, live, model_id, screenshots)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=str(screenshots / "7-model-phone.png"), full_page=True)
    problems.check()
    (screenshots / "first-paint-ms.json").write_text(json.dumps(paints, indent=2))
    print(f"first paint (ms): {paints}")
    assert all(0 < value < 5000 for value in paints.values()), paints


@pytest.mark.browser
def test_errors_are_shown_to_the_person(browser: Any, tmp_path: Path, screenshots: Path) -> None:
    live = start_live_service(tmp_path / "data", session_seconds=2)
    try:
        page = browser.new_page()
        problems = PageProblems(page, live.url)
        sign_in(page, live)
        page.goto(f"{live.url}/console/datasets")
        problems.expect("status of 400")
        page.set_input_files(
            "#upload-file",
            files=[
                {"name": "notes.zip", "mimeType": "application/zip", "buffer": b"not a zip at all"}
            ],
        )
        page.get_by_role("button", name="Upload").click()
        page.wait_for_selector("#upload-status .error")
        assert "notes.zip: file is not a zip archive" in page.locator("#upload-status").inner_text()
        page.screenshot(path=str(screenshots / "bad-zip.png"))

        problems.expect("status of 404")
        page.goto(f"{live.url}/console/models/m_missing")
        assert "no model 'm_missing'" in page.locator("main").inner_text()

        time.sleep(2.5)  # the session runs out
        page.goto(f"{live.url}/console/jobs")
        page.wait_for_url(re.compile(r"/login\?next=%2Fconsole%2Fjobs&expired=1"))
        assert "session has expired" in page.locator("main").inner_text()
        problems.check()
    finally:
        live.stop()


@pytest.mark.slow
@pytest.mark.browser
def test_a_failed_job_shows_its_reason(browser: Any, live: LiveService, tmp_path: Path) -> None:
    with live.client() as client:
        dataset = client.post(
            "/datasets", files={"file": ("c.zip", dataset_zip(), "application/zip")}
        ).json()
        body = {
            "dataset_id": dataset["id"],
            "backbone": {"name": "MobileNetV2", "weights": "imagenet", "input_size": 32},
        }
        job = client.post("/jobs", json=body).json()
    live.start_worker(tmp_path / "worker.log")
    page = browser.new_page()
    problems = PageProblems(page, live.url)
    sign_in(page, live)
    page.goto(f"{live.url}/console/jobs/{job['id']}")
    page.wait_for_function(
        "() => document.querySelector('#job-status').innerText === 'failed'", timeout=TIMEOUT_MS
    )
    assert "ImageNet weights for MobileNetV2" in page.locator("#job-error").inner_text()
    problems.check()


def test_console_pages_show_what_the_json_api_answers(small_model: dict[str, Any]) -> None:
    client: TestClient = small_model["service"].client
    dataset = client.get(f"/datasets/{small_model['dataset']['id']}").json()
    html = client.get(f"/console/datasets/{dataset['id']}").text
    for entry in dataset["classes"]:
        assert re.search(rf">{entry['name']}</th>\s*<td class=\"num\">{entry['count']}<", html)
    listed = [job["id"] for job in client.get("/jobs").json()]
    html = client.get("/console/jobs").text
    assert re.findall(r'href="/console/jobs/(j_[0-9a-f]+)"', html) == listed
    model_id = small_model["job"]["model_id"]
    evaluation = client.get(f"/models/{model_id}/evaluation").json()
    html = client.get(f"/console/models/{model_id}").text
    for row in evaluation["per_class"]:
        assert f'>{row["label"]}</th><td class="num">{row["precision"]:.3f}<' in html
    layers = client.get(f"/models/{model_id}/layers?trainable=true").json()["layers"]
    fragment = client.get(f"/console/models/{model_id}/layers?trainable=true").text
    assert fragment.count('<tr class="trainable">') == len(layers)


def test_every_console_route_needs_a_session_and_the_api_takes_it(tmp_path: Path) -> None:
    live = start_live_service(tmp_path / "data")
    try:
        routes = [
            route
            for module in PAGE_MODULES
            for router in (module.pages, module.writes)
            for route in router.routes
        ]
        assert len(routes) >= 15
        with live.client(key=None) as anonymous:
            for route in routes:
                concrete = re.sub(r"\{[^}]+\}", "x_1", route.path)
                for method in sorted(route.methods):
                    response = anonymous.request(method, concrete, follow_redirects=False)
                    assert response.status_code == 303, (method, concrete, response.status_code)
                    assert response.headers["location"].startswith("/login?next=")
            signed_in = anonymous.post("/login", data={"api_key": API_KEY}, follow_redirects=False)
            assert signed_in.status_code == 303
            cookie = signed_in.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert anonymous.get("/jobs").status_code == 200  # the API takes the cookie
            refused = anonymous.post("/jobs", json={})
            assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
            page = anonymous.get("/console").text
            token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
            accepted = anonymous.post("/jobs", json={}, headers={"X-CSRF-Token": token})
            assert accepted.status_code == 422  # past auth: the empty spec is what is wrong
            wrong = anonymous.post("/login", data={"api_key": "x" * 20}, follow_redirects=False)
            assert wrong.status_code == 401
    finally:
        live.stop()


@pytest.mark.browser
def test_without_an_api_key_there_is_no_login(browser: Any, tmp_path: Path) -> None:
    live = start_live_service(tmp_path / "data", api_key=None)
    try:
        page = browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        problems = PageProblems(page, live.url)
        page.goto(f"{live.url}/login?next=/console/datasets")
        page.wait_for_url(f"{live.url}/console/datasets")
        expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
        page.set_input_files(
            "#upload-file",
            files=[{"name": "colours.zip", "mimeType": "application/zip", "buffer": dataset_zip()}],
        )
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(re.compile(r"/console/datasets/d_"))
        page.wait_for_function("() => [...document.images].every((image) => image.complete)")
        page.get_by_role("button", name="Delete", exact=True).click()  # hx-confirm: accepted above
        page.wait_for_url(f"{live.url}/console/datasets")
        expect(page.locator("main")).to_contain_text("No datasets yet.")
        problems.check()
    finally:
        live.stop()


# -- the console answers a problem with the API's status for it ---------------------------------


def test_try_it_on_a_model_failing_its_checksum_is_503_naming_it_as_the_api_answers(
    service: Service,
) -> None:
    row = stored_model(None)  # its stored bytes (b"m") are not what its sha256 says
    with service.database.session(write=True) as session:
        session.add(row)
    model_id = row.id
    image = png_bytes(colour_image(0, np.random.default_rng(0)))
    files = [("files", ("red.png", image, "image/png"))]
    api = service.client.post("/predict", data={"model_id": model_id}, files=files)
    assert api.status_code == 503 and model_id in api.json()["detail"]
    tried = service.client.post(
        f"/console/models/{model_id}/predict", files=files, headers={"HX-Request": "true"}
    )
    assert tried.status_code == 503, tried.text
    assert model_id in tried.text and "sha256" in tried.text


@pytest.mark.any_database
def test_a_malformed_cursor_is_a_422_on_every_console_list_as_in_the_api(
    service: Service,
) -> None:
    for listed in ("datasets", "jobs", "models", "predictions"):
        api = service.client.get(f"/{listed}", params={"cursor": "nonsense"})
        assert api.status_code == 422, (listed, api.text)
        shown = service.client.get(f"/console/{listed}", params={"cursor": "nonsense"})
        assert shown.status_code == 422, (listed, shown.status_code)
        assert "not a cursor this service gave" in shown.text


@pytest.mark.any_database
def test_console_writes_naming_what_does_not_exist_are_404_as_in_the_api(
    service: Service,
) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    image = png_bytes(colour_image(0, np.random.default_rng(0)))
    missing_dataset = {"dataset_id": "d_missing", "weights": "none"}
    missing_model = {"dataset_id": dataset_id, "weights": "model:m_missing"}
    for form, what in ((missing_dataset, "d_missing"), (missing_model, "m_missing")):
        spec = spec_from_form({key: [value] for key, value in form.items()})
        for path in ("/jobs", "/jobs/preview"):
            assert service.client.post(path, json=spec).status_code == 404
            answer = service.client.post(f"/console{path}", data=form)
            assert answer.status_code == 404, (path, form, answer.text)
            assert what in answer.text
    files = [("files", ("red.png", image, "image/png"))]
    api = service.client.post("/predict", data={"model_id": "m_missing"}, files=files)
    assert api.status_code == 404
    tried = service.client.post("/console/models/m_missing/predict", files=files)
    assert tried.status_code == 404 and "m_missing" in tried.text
