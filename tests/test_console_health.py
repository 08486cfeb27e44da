"""The dataset's health and strategy advice in the console, in a real browser (system Chromium)
against a real server (and, for advice, a real worker): what the page shows is what
`GET /datasets/{id}/report` and `GET /datasets/{id}/advice` answer, the new-job form warns of
copies on both sides of the split before anything trains, and advice leads to a training job
in three clicks. Any JavaScript error or failed request fails the test; screenshots are
written (SCREENSHOTS_DIR keeps them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from tests.browser import LiveService, PageProblems
from tests.conftest import make_zip
from tests.test_console import TIMEOUT_MS, sign_in
from tests.test_report import encoded, noise, noise_files


def planted_zip() -> bytes:
    """cats 30, dogs 10 (3:1): one picture under both labels, and one grayscale image."""
    rng = np.random.default_rng(11)
    shared = encoded(noise(rng))
    files = {
        **noise_files(rng, "cats", 28),
        "cats/dup.png": shared,
        "cats/gray.png": encoded(noise(rng).convert("L")),
        **noise_files(rng, "dogs", 9),
        "dogs/dup.png": shared,
    }
    return make_zip(files)


def clean_zip() -> bytes:
    rng = np.random.default_rng(12)
    return make_zip(noise_files(rng, "cats", 20) | noise_files(rng, "dogs", 20))


def upload(live: LiveService, content: bytes, name: str) -> str:
    with live.client() as client:
        response = client.post(
            "/datasets",
            files={"file": (f"{name}.zip", content, "application/zip")},
            data={"name": name},
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def report(live: LiveService, dataset_id: str, **query: Any) -> dict[str, Any]:
    with live.client() as client:
        response = client.get(f"/datasets/{dataset_id}/report", params=query)
    assert response.status_code == 200, response.text
    return response.json()


def seeds(live: LiveService, dataset_id: str) -> tuple[int, int]:
    """A seed whose split (validation 0.2) puts the copies on both sides, and one that keeps
    them together, as the report finds them."""
    leaks = {seed: report(live, dataset_id, seed=seed)["leakage"]["count"] for seed in range(40)}
    return (
        next(seed for seed, count in leaks.items() if count),
        next(seed for seed, count in leaks.items() if not count),
    )


def loaded(page: Any, selector: str) -> None:
    """The images under `selector` scrolled to (they load lazily) and shown, not broken."""
    for image in page.locator(f"{selector} img").all():
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") > 0


def check_figures(page: Any, selector: str, dataset_id: str, images: list[dict[str, Any]]) -> None:
    """The thumbnails under `selector` are the report's images, with their filenames."""
    figures = page.locator(f"{selector} figure.thumb")
    expect(figures).to_have_count(len(images))
    for figure, image in zip(figures.all(), images, strict=True):
        thumbnail = figure.locator("img")
        expect(thumbnail).to_have_attribute(
            "src", f"/datasets/{dataset_id}/images/{image['id']}?size=96"
        )
        expect(thumbnail).to_have_attribute("alt", image["filename"])
        expect(figure.locator("code")).to_have_text(image["filename"])
    loaded(page, selector)


def check_health(page: Any, live: LiveService, dataset_id: str, folder: Path) -> None:
    found = report(live, dataset_id)  # the page's default: seed 0, validation split 0.2
    page.goto(f"{live.url}/console/datasets/{dataset_id}")
    expect(page.locator("#health-warnings li")).to_have_text(found["warnings"])
    # The balance said once, in the report's words (the page's old note is gone).
    assert page.locator("main").inner_text().count("imbalanced") == 1
    assert any("imbalanced 3:1 (cats 30, dogs 10)" in text for text in found["warnings"])
    [pair] = found["duplicates"]["exact"]
    assert pair["scope"] == "across_classes"
    assert [image["filename"] for image in pair["images"]] == ["cats/dup.png", "dogs/dup.png"]
    check_figures(page, '#duplicates li[data-kind="exact"]', dataset_id, pair["images"])
    [gray] = found["grayscale"]["images"]
    assert gray["filename"] == "cats/gray.png"
    check_figures(page, "#grayscale", dataset_id, [gray])
    expect(page.locator("#no-review")).to_be_visible()  # no advice asked yet
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(folder / "1-health.png"), full_page=True)


def check_health_form(
    page: Any, live: LiveService, dataset_id: str, seed: int, folder: Path
) -> None:
    """Another seed and an input size: the section comes back for them, without a reload."""
    found = report(live, dataset_id, seed=seed, validation_split=0.2, input_size=64)
    form = page.locator("#health-form")
    form.get_by_label("Seed").fill(str(seed))
    form.get_by_label("Input size (px)").fill("64")
    form.get_by_role("button", name="Check").click()
    rows = page.locator("#leakage-pairs tbody tr")
    expect(rows).to_have_count(found["leakage"]["count"])
    for row, pair in zip(rows.all(), found["leakage"]["pairs"], strict=True):
        expect(row.locator("td").nth(0).locator("code")).to_have_text(pair["training"]["filename"])
        expect(row.locator("td").nth(1).locator("code")).to_have_text(
            pair["validation"]["filename"]
        )
    expect(page.locator("#health-warnings li")).to_have_text(found["warnings"])
    shown = min(found["small_images"]["count"], 24)  # 48 px noise, all under 64 px
    expect(page.locator("#small-images figure")).to_have_count(shown)
    expect(page.locator("#small-images + p.hint")).to_contain_text(
        f"and {found['small_images']['count'] - shown} more images"
    )
    assert page.url.endswith(dataset_id)  # the section was swapped, the page kept
    form.get_by_label("Input size (px)").fill("")
    form.get_by_role("button", name="Check").click()
    expect(page.locator("#small-images")).to_have_count(0)
    page.wait_for_load_state("networkidle")  # every thumbnail in
    loaded(page, "#health-report")
    box = page.locator("#health").evaluate(
        "section => { const r = section.getBoundingClientRect();"
        " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; }"
    )
    margin = 16
    page.screenshot(  # the README's picture
        path=str(folder / "2-health-section.png"),
        full_page=True,
        clip={
            "x": box["x"] - margin,
            "y": box["y"] - margin,
            "width": box["width"] + 2 * margin,
            "height": box["height"] + 2 * margin,
        },
    )


def check_leakage_warning(
    page: Any, live: LiveService, datasets: tuple[str, str], seeds: tuple[int, int], folder: Path
) -> None:
    """The new-job form warns of copies across the split, for the dataset and seed chosen."""
    (planted, clean), (seed, together) = datasets, seeds
    page.goto(f"{live.url}/console/jobs/new?dataset_id={planted}")
    page.get_by_text("Training options").click()
    leaked = report(live, planted, seed=seed, validation_split=0.2)["leakage"]
    page.locator("#seed").fill(str(seed))
    page.locator("#seed").press("Tab")  # a change
    warning = page.locator("#leakage-warning")
    expect(warning).to_contain_text(
        f"{leaked['count']} validation image at seed {seed} (validation split 0.2)"
    )
    for pair in leaked["pairs"]:
        expect(warning).to_contain_text(
            f"{pair['validation']['filename']} is a copy of {pair['training']['filename']}"
        )
    page.locator("#seed").fill(str(together))
    page.locator("#seed").press("Tab")
    expect(warning).to_have_count(0)
    page.locator("#seed").fill(str(seed))
    page.locator("#seed").press("Tab")
    expect(warning).to_be_visible()
    page.locator("#job-form .actions.start").screenshot(path=str(folder / "3-leakage.png"))
    page.locator("#dataset_id").select_option(clean)  # no copies at any seed
    expect(warning).to_have_count(0)
    assert report(live, clean, seed=seed)["warnings"] == []


@pytest.mark.browser
def test_the_dataset_health_and_the_leakage_warning(
    browser: Any, live: LiveService, screenshots: Path
) -> None:
    planted = upload(live, planted_zip(), "planted")
    clean = upload(live, clean_zip(), "clean")
    leaking, together = seeds(live, planted)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = PageProblems(page, live.url)
    sign_in(page, live)
    check_health(page, live, planted, screenshots)
    check_health_form(page, live, planted, leaking, screenshots)

    check_label_review(page, live, planted)
    page.goto(f"{live.url}/console/datasets/{clean}")
    expect(page.locator("#health-ok")).to_contain_text("No problems found in 40 images")
    expect(page.locator("#health-warnings")).to_have_count(0)
    page.wait_for_load_state("networkidle")

    check_leakage_warning(page, live, (planted, clean), (leaking, together), screenshots)
    problems.check()


def check_label_review(page: Any, live: LiveService, dataset_id: str) -> None:
    """A label review as the worker stores it: each flagged image with its thumbnail, its
    label and the suggested one."""
    from service.storage.db import Database
    from service.storage.tables import Dataset

    with live.client() as client:
        image = client.get(f"/datasets/{dataset_id}/images", params={"label": "cats"}).json()[0]
    review = {
        "method": "confident learning",
        "features": "MobileNetV2|file:w_x|32|avg",
        "job_id": "j_0123456789abcdef",
        "created_at": "2026-11-29T12:00:00+00:00",
        "images_checked": 40,
        "probe_accuracy": 0.95,
        "issues": [
            {"image_id": image["id"], "filename": image["filename"], "label": "cats",
             "suggested": "dogs", "confidence": 0.97}
        ],
    }  # fmt: skip
    database = Database(live.settings.database_url)
    with database.session(write=True) as session:
        session.get_one(Dataset, dataset_id).label_review = review
    database.dispose()
    page.goto(f"{live.url}/console/datasets/{dataset_id}")
    row = page.locator("#mislabelled tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("cats → dogs")
    expect(row).to_contain_text("97")
    expect(row.locator("img")).to_have_attribute("alt", re.compile(re.escape(image["filename"])))
    page.wait_for_load_state("networkidle")


# -- advice: a worker measures, the page advises, one click trains ----------------------------


def ask_for_advice(page: Any, live: LiveService, dataset_id: str) -> str:
    page.goto(f"{live.url}/console/datasets/{dataset_id}#advice")
    form = page.locator("#advice-form")
    form.get_by_label("Backbone").select_option("Xception")
    form.get_by_label("Weights").select_option("none")  # no ImageNet download here
    form.get_by_label("Input size (px)").fill("64")  # below Xception's minimum: refused
    form.get_by_role("button", name="Ask for advice").click()
    expect(page.locator("#advice-errors")).to_contain_text("below Xception's minimum of 71")
    form.get_by_label("Backbone").select_option("MobileNetV2")
    form.get_by_label("Input size (px)").fill("32")
    form.get_by_label("Images to measure, at most").fill("200")
    form.get_by_role("button", name="Ask for advice").click()
    page.wait_for_url(re.compile(r"/console/jobs/j_"))
    return page.url.rsplit("/", 1)[1]


def follow_advice_job(page: Any, folder: Path) -> None:
    expect(page.locator("main")).to_contain_text("strategy advice")
    expect(page.locator("#epochs")).to_have_count(0)  # no epochs, no charts
    expect(page.locator("#job-advice")).to_be_hidden()
    page.wait_for_function(
        "() => document.querySelector('#job-status').innerText === 'succeeded'", timeout=TIMEOUT_MS
    )
    assert page.locator("#job-progress").evaluate("bar => bar.value") == 1
    page.screenshot(path=str(folder / "4-advice-job.png"), full_page=True)
    page.locator("#job-advice").get_by_role("link").click()
    page.wait_for_url(re.compile(r"/console/datasets/d_[0-9a-f]+#advice$"))


def check_advice(page: Any, live: LiveService, dataset_id: str, job_id: str, folder: Path) -> Any:
    with live.client() as client:
        [advice] = client.get(f"/datasets/{dataset_id}/advice").json()
    assert advice["job_id"] == job_id and advice["status"] == "succeeded"
    result = advice["result"]
    cell = result["quadrant"]
    expect(page.locator("#advice-status")).to_have_text("succeeded")
    expect(page.locator("#advice-strategy")).to_have_text(
        f"Strategy {cell['strategy']}: {cell['summary']}."
    )
    assert cell["strategy"] == 1  # random weights: nothing to transfer
    expect(page.locator("#advice-reasons li")).to_have_text(result["reasons"])
    figures = page.locator("#advice-figures")
    expect(figures).to_contain_text(f"{cell['data']}: the median class has")
    expect(figures).to_contain_text(f"{100 * result['probe']['accuracy']:.1f} %")
    # Random weights' features review no labels: the health section still says how to get one.
    assert report(live, dataset_id)["mislabelled"]["review"] is None
    expect(page.locator("#no-review")).to_be_visible()
    page.locator("#advice").screenshot(path=str(folder / "5-advice.png"))
    page.wait_for_load_state("networkidle")
    return result


@pytest.mark.slow
@pytest.mark.browser
def test_advice_from_the_dataset_page_to_a_training_job(
    browser: Any, live: LiveService, screenshots: Path, tmp_path: Path
) -> None:
    dataset_id = upload(live, planted_zip(), "planted")
    live.start_worker(tmp_path / "worker.log")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = PageProblems(page, live.url)
    problems.expect("status of 422")  # the refused input size, shown in the form
    sign_in(page, live)
    advice_job = ask_for_advice(page, live, dataset_id)
    follow_advice_job(page, screenshots)
    result = check_advice(page, live, dataset_id, advice_job, screenshots)
    assert live.worker is not None
    live.worker.terminate()  # idle now: the training job below is only queued, not run
    live.worker.wait(timeout=30)

    page.get_by_role("button", name="Train with this spec").click()
    page.wait_for_url(re.compile(r"/console/jobs/j_"))
    job_id = page.url.rsplit("/", 1)[1]
    assert job_id != advice_job
    with live.client() as client:
        job = client.get(f"/jobs/{job_id}").json()
    assert job["kind"] == "train" and job["spec"] == result["spec"]
    expect(page.locator("#epochs")).to_have_count(1)  # a training job's page
    expect(page.locator("#job-advice")).to_have_count(0)
    expect(page.locator("#job-status")).to_have_text("queued")
    problems.check()
    page.close()  # its event stream too, so the server stops at once
