"""The console on a multi-label dataset, in a real browser (system Chromium) against a real
server: label sets edited from the dataset page's image grid (a label added to a selection,
one taken away), and a model's Review page labelling pool images with sets from the
keyboard, saved as one new version. The model is trained in this process beforehand, on the
same database, so the browser waits on no worker. Any JavaScript error or failed request
fails the test; screenshots are written (SCREENSHOTS_DIR keeps them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import LiveService, PageProblems, start_live_service
from tests.conftest import LIGHT, Service, job_body, make_settings, make_zip, post_zip
from tests.test_console import TIMEOUT_MS, sign_in
from tests.test_multilabel import halves
from tests.test_multilabel_service import labelled_zip


def labels_of(live: LiveService, dataset_id: str) -> dict[int, set[str]]:
    """Each image of the dataset's latest version: its labels."""
    with live.client() as client:
        images = client.get(f"/datasets/{dataset_id}/images", params={"limit": 500}).json()
    return {image["id"]: set(filter(None, image["label"].split(";"))) for image in images}


@pytest.mark.slow
@pytest.mark.browser
def test_label_sets_from_the_grid_and_the_review_page(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    service = Service(make_settings(data))
    try:
        dataset_id = post_zip(service, labelled_zip(halves(24, seed=0))).json()["id"]
        job = service.train(job_body(dataset_id, backbone=LIGHT, training={"epochs": 1}))
        pool = {f"pool/{n}.png": image for n, image in enumerate(halves(3, seed=7).images)}
        added = service.client.post(
            f"/datasets/{dataset_id}/pool", files={"file": ("pool.zip", make_zip(pool))}
        )
        assert added.status_code == 200, added.text
    finally:
        service.close()
    live = start_live_service(data)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        problems = PageProblems(page, live.url)
        sign_in(page, live)
        edit_in_the_grid(page, live, dataset_id, screenshots)
        review_with_sets(page, live, job["model_id"], dataset_id, screenshots)
        problems.check()
    finally:
        page.close()
        live.stop()


def edit_in_the_grid(page: Any, live: LiveService, dataset_id: str, folder: Path) -> None:
    """Two images selected get a new label, each keeping its others; one loses it again."""
    page.goto(f"{live.url}/console/datasets/{dataset_id}")
    picks = page.locator("#image-grid button.pick")
    first, second = (int(picks.nth(n).get_attribute("data-image")) for n in range(2))
    before = labels_of(live, dataset_id)
    picks.nth(0).click()
    picks.nth(1).click()
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    page.locator("#edit-new-label").fill("violet")
    page.get_by_role("button", name="Add label").click()
    expect(page.locator("#edit-label option", has_text="violet")).to_have_count(
        1, timeout=TIMEOUT_MS
    )  # the page reloaded on the new version, which has the label
    added = labels_of(live, dataset_id)
    assert added[first] == before[first] | {"violet"}
    assert added[second] == before[second] | {"violet"}
    page.screenshot(path=str(folder / "dataset-label-sets.png"), full_page=True)
    page.locator(f'#image-grid button.pick[data-image="{first}"]').click()
    page.locator("#edit-label").select_option("violet")
    page.get_by_role("button", name="Remove label").click()
    expect(page.locator(f'#image-grid button.pick[data-image="{first}"]')).not_to_contain_text(
        "violet", timeout=TIMEOUT_MS
    )
    removed = labels_of(live, dataset_id)
    assert removed[first] == before[first] and removed[second] == added[second]


def review_with_sets(
    page: Any, live: LiveService, model_id: str, dataset_id: str, folder: Path
) -> None:
    """From the keyboard: 1 takes the first label out of (or into) the first image's
    suggested set and Enter keeps it; 0 gives the second no label; / types a new label into
    the third's set; w saves the three as one version."""
    with live.client() as client:
        classes = client.get(f"/models/{model_id}").json()["classes"]
        version = client.get(f"/datasets/{dataset_id}").json()["version"]
    page.goto(f"{live.url}/console/models/{model_id}/review")
    cards = page.locator(".review-item")
    expect(cards).to_have_count(3)
    expect(page.locator("#review-multi-label")).to_be_visible()
    keys = [cards.nth(n).get_attribute("data-key") for n in range(3)]
    suggested = [
        set(filter(None, cards.nth(n).get_attribute("data-suggestion").split(";")))
        for n in range(3)
    ]
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.keyboard.press("0")
    page.keyboard.press("/")
    page.keyboard.type("violet")
    page.keyboard.press("Enter")
    expect(cards.nth(1).locator(".decision")).to_have_text("→ no label")
    expect(page.locator("#review-pending")).to_have_text("3")
    page.screenshot(path=str(folder / "review-label-sets.png"), full_page=True)
    page.keyboard.press("w")
    expect(page.locator("#review-labelled")).to_have_text("3", timeout=TIMEOUT_MS)
    with live.client() as client:
        assert client.get(f"/datasets/{dataset_id}").json()["version"] == version + 1
    labelled = labels_of(live, dataset_id)
    ids = [int(str(key).removeprefix("image:")) for key in keys]
    assert labelled[ids[0]] == suggested[0] ^ {classes[0]}
    assert labelled[ids[1]] == set()
    assert labelled[ids[2]] == suggested[2] | {"violet"}
