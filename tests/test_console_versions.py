"""Fixing a dataset in the console: in a real browser (system Chromium) against a real server,
images selected in the dataset page's grid (click, shift-click) are relabelled with a digit
key and deleted with Delete, each as one edit; the versions list and a diff show them, and
`GET /datasets/{id}/versions` answers exactly those versions. Without a browser: the console's
edit routes answer as the API does (the spec's 422 words, the 409 of a stale page, nothing
written on a refusal); a health finding's action shown, then applied as one version; the
confusion matrix's relabel and remove in place; the job form's version choice. Any JavaScript
error or failed request fails the browser test; screenshots are written (SCREENSHOTS_DIR)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import LiveService, PageProblems
from tests.conftest import Service, class_zip, colour_images, make_zip, stored_model
from tests.test_console import sign_in

HTMX = {"HX-Request": "true"}


def text(response: Any) -> str:
    """A console answer as a person reads it (quotes and ampersands unescaped)."""
    return html.unescape(response.text)


def words(response: Any) -> str:
    """A console fragment's words, without its tags."""
    return re.sub(r"<[^>]+>", "", text(response))


def versions_of(client: Any, dataset_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/datasets/{dataset_id}/versions")
    assert response.status_code == 200, response.text
    return response.json()


def image_ids(client: Any, dataset_id: str, **query: Any) -> list[int]:
    response = client.get(f"/datasets/{dataset_id}/images", params={"limit": 500, **query})
    assert response.status_code == 200, response.text
    return [image["id"] for image in response.json()]


def counts(version: dict[str, Any]) -> dict[str, int]:
    return {entry["name"]: entry["count"] for entry in version["classes"]}


# -- in a browser: select, relabel with a key, delete, read the versions ----------------------


def upload(live: LiveService) -> str:
    """blue, green and red, 4 images each: 12 images, blue's first in upload order."""
    with live.client() as client:
        response = client.post(
            "/datasets",
            files={"file": ("colours.zip", class_zip(colour_images(4)), "application/zip")},
            data={"name": "colours"},
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.slow
@pytest.mark.browser
def test_select_relabel_and_delete_in_the_grid(
    browser: Any, live: LiveService, screenshots: Path
) -> None:
    dataset_id = upload(live)
    with live.client() as client:
        ids = image_ids(client, dataset_id)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())  # the delete's confirm
    problems = PageProblems(page, live.url)
    sign_in(page, live)
    page.goto(f"{live.url}/console/datasets/{dataset_id}")
    picks = page.locator("#image-grid button.pick")
    expect(picks).to_have_count(12)
    picks.nth(1).click()
    picks.nth(4).click(modifiers=["Shift"])  # images 2 to 5: three blue, one green
    expect(page.locator("#selection-count")).to_have_text("4 selected")
    expect(page.locator('#image-grid button.pick[aria-pressed="true"]')).to_have_count(4)
    page.screenshot(path=str(screenshots / "1-selected.png"), full_page=True)
    page.keyboard.press("3")  # the third class: red
    expect(page.locator("#version-2")).to_contain_text("4 relabelled")
    expect(picks.nth(1).locator(".label")).to_have_text("red")

    page.locator("#image-grid button.pick").nth(0).click()
    page.keyboard.press("Delete")  # confirmed
    expect(page.locator("#version-3")).to_contain_text("1 removed")
    expect(picks).to_have_count(11)
    rows = page.locator("#version-list tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("(latest)")

    page.get_by_role("button", name="Changes from version 1 to 2").click()
    diff = page.locator("#version-diff")
    expect(diff.locator("h3")).to_have_text("Version 1 → 2: 0 added, 0 removed, 4 relabelled")
    expect(diff.locator("#diff-relabelled figure")).to_have_count(4)
    expect(diff.locator("#diff-relabelled")).to_contain_text("green → red")
    page.screenshot(path=str(screenshots / "2-versions.png"), full_page=True)

    with live.client() as client:
        listed = versions_of(client, dataset_id)
        assert image_ids(client, dataset_id, label="red") == sorted([*ids[1:5], *ids[8:]])
        assert ids[0] not in image_ids(client, dataset_id)
    assert [(v["number"], v["source"], v["message"]) for v in listed] == [
        (1, "upload", ""),
        (2, "edit", "4 relabelled"),
        (3, "edit", "1 removed"),
    ]
    assert counts(listed[1]) == {"blue": 1, "green": 3, "red": 8}
    assert counts(listed[2]) == {"green": 3, "red": 8}  # the last blue image gone
    problems.check()
    page.close()


# -- without a browser: the console's routes against the JSON ones ----------------------------


def test_a_refused_edit_says_what_the_api_says_and_changes_nothing(service: Service) -> None:
    client = service.client
    dataset_id = service.upload(colour_images(3))["id"]
    ids = image_ids(client, dataset_id)
    edits = f"/console/datasets/{dataset_id}/edits"
    form = {"base_version": "1", "action": "relabel", "new_label": "a/b", "image": [str(ids[0])]}
    refused = client.post(edits, data=form, headers=HTMX)
    api = client.post(
        f"/datasets/{dataset_id}/edits",
        json={"relabel": [{"image_id": ids[0], "label": "a/b"}], "base_version": 1},
    )
    assert api.status_code == refused.status_code == 422
    [error] = api.json()["detail"]
    assert f"relabel.0.label: {error['msg']}" in text(refused)
    assert 'role="alert"' in refused.text

    nothing = client.post(edits, data={"base_version": "1", "action": "delete"}, headers=HTMX)
    assert nothing.status_code == 422
    assert "an edit relabels, deletes or labels at least one image" in text(nothing)
    whole = {"base_version": "1", "action": "delete", "image": [str(i) for i in ids[:6]]}
    too_much = client.post(edits, data=whole, headers=HTMX)  # blue and green gone: one class
    assert too_much.status_code == 422 and "at least 2" in text(too_much)
    assert [v["number"] for v in versions_of(client, dataset_id)] == [1]

    done = client.post(edits, data={**form, "new_label": "", "label": "red"}, headers=HTMX)
    assert done.status_code == 204 and done.headers["HX-Refresh"] == "true"
    stale = client.post(edits, data={**form, "new_label": "teal"}, headers=HTMX)
    assert stale.status_code == 409
    assert "made against version 1" in text(stale) and "latest is now 2" in text(stale)
    [_, second] = versions_of(client, dataset_id)
    assert (second["source"], second["message"]) == ("edit", "1 relabelled")
    assert counts(second) == {"blue": 2, "green": 3, "red": 4}


def test_the_dataset_page_lists_versions_and_diffs(service: Service) -> None:
    client = service.client
    dataset_id = service.upload(colour_images(3))["id"]
    ids = image_ids(client, dataset_id)
    client.post(f"/datasets/{dataset_id}/edits", json={"delete": [ids[0]], "message": "blurry"})
    shown = text(client.get(f"/console/datasets/{dataset_id}"))
    assert re.findall(r'<tr id="version-(\d+)">', shown) == ["2", "1"]
    assert "blurry" in shown and "(latest)" in shown
    assert 'name="base_version" value="2"' in shown
    assert len(re.findall(r'class="pick"', shown)) == 8
    diff = text(client.get(f"/console/datasets/{dataset_id}/versions/1/diff/2", headers=HTMX))
    assert "Version 1 → 2: 0 added, 1 removed, 0 relabelled" in diff
    assert f'data-image="{ids[0]}"' in diff
    missing = client.get(f"/console/datasets/{dataset_id}/versions/1/diff/9", headers=HTMX)
    assert missing.status_code == 404 and "has no version 9" in text(missing)
    red = text(client.get(f"/console/datasets/{dataset_id}/images?version=1&label=red"))
    assert len(re.findall(r'class="pick"', red)) == 3


def test_a_health_action_is_shown_then_applied_as_one_version(service: Service) -> None:
    client = service.client
    images = colour_images(3)
    files = {
        f"{label}/{n}.png": data for label, items in images.items() for n, data in enumerate(items)
    }
    files["red/copy.png"] = images["red"][0]  # an exact copy, in the same class
    response = client.post(
        "/datasets", files={"file": ("d.zip", make_zip(files), "application/zip")}
    )
    dataset_id = response.json()["id"]
    page = text(client.get(f"/console/datasets/{dataset_id}"))
    assert "/actions/remove-duplicates?seed=0&validation_split=0.2&version=1" in page
    # Each copy has its own Remove, in place (and the copy across the split too, at seed 0).
    fixes = {json.loads(values)["image"] for values in re.findall(r"hx-vals='([^']+)'", page)}
    red = image_ids(client, dataset_id, label="red")
    assert fixes == {red[0], red[-1]}  # red/0.png and its copy, uploaded last
    proposal = text(
        client.get(
            f"/console/datasets/{dataset_id}/actions/remove-duplicates?seed=0&version=1",
            headers=HTMX,
        )
    )
    api = client.get(f"/datasets/{dataset_id}/report/actions/remove-duplicates").json()
    [removed] = api["delete"]
    assert f'data-image="{removed}"' in proposal and "Removes 1 image" in proposal
    assert "Apply as version 2" in proposal
    form = {"base_version": "1", "seed": "0", "validation_split": "0.2"}
    applied = client.post(
        f"/console/datasets/{dataset_id}/actions/remove-duplicates", data=form, headers=HTMX
    )
    assert applied.status_code == 204
    again = client.post(
        f"/console/datasets/{dataset_id}/actions/remove-duplicates", data=form, headers=HTMX
    )
    assert again.status_code == 409  # shown for version 1; the dataset is at 2 now
    listed = versions_of(client, dataset_id)
    assert [v["number"] for v in listed] == [1, 2]
    assert listed[1]["message"] == api["message"] and listed[1]["num_images"] == 9
    assert removed not in image_ids(client, dataset_id)


def test_the_confusion_matrix_relabels_and_removes_in_place(service: Service) -> None:
    client = service.client
    dataset_id = service.upload(colour_images(3))["id"]
    blue, *_ = image_ids(client, dataset_id, label="blue")
    green, *_ = image_ids(client, dataset_id, label="green")
    samples = [
        {"image_id": blue, "label": "blue", "predicted": "red", "scores": [0.1, 0.1, 0.8]},
        {"image_id": green, "label": "green", "predicted": "red", "scores": [0.2, 0.1, 0.7]},
    ]
    model = stored_model(
        None,
        dataset_id=dataset_id,
        classes=["blue", "green", "red"],
        evaluation={"samples": samples},
    )
    with service.database.session(write=True) as session:
        session.add(model)
    cell = text(
        client.get(f"/console/models/{model.id}/samples?label=blue&predicted=red", headers=HTMX)
    )
    assert f"/console/models/{model.id}/samples/{blue}/relabel" in cell
    relabelled = client.post(f"/console/models/{model.id}/samples/{blue}/relabel", headers=HTMX)
    assert relabelled.status_code == 200 and "Relabelled as red: version 2 of colours." in words(
        relabelled
    )
    removed = client.post(f"/console/models/{model.id}/samples/{green}/remove", headers=HTMX)
    assert removed.status_code == 200 and "Removed: version 3 of colours." in words(removed)
    gone = client.post(f"/console/models/{model.id}/samples/{green}/remove", headers=HTMX)
    assert gone.status_code == 404 and f"image {green} is not in version 3" in text(gone)
    listed = versions_of(client, dataset_id)
    assert [v["message"] for v in listed] == ["", "1 relabelled", "1 removed"]
    assert counts(listed[2]) == {"blue": 2, "green": 2, "red": 4}


def test_the_job_form_picks_a_version(service: Service) -> None:
    client = service.client
    dataset_id = service.upload(colour_images(3))["id"]
    ids = image_ids(client, dataset_id)
    client.post(f"/datasets/{dataset_id}/edits", json={"delete": [ids[0]]})
    form = text(client.get(f"/console/jobs/new?dataset_id={dataset_id}"))
    options = re.findall(r'<option value="(\d+)" (selected)?>Version', form)
    assert options == [("2", "selected"), ("1", "")]  # newest first, the latest chosen
    chosen = text(client.get(f"/console/jobs/new?dataset_id={dataset_id}&dataset_version=1"))
    assert '<option value="1" selected>' in chosen
    swapped = text(client.get(f"/console/jobs/versions?dataset_id={dataset_id}"))
    assert '<option value="2" selected>' in swapped

    fields = {
        "dataset_id": dataset_id,
        "dataset_version": "1",
        "weights": "none",
        "input_size": "32",
    }
    created = client.post("/console/jobs", data=fields, headers=HTMX)
    assert created.status_code == 204, created.text
    job_id = created.headers["HX-Redirect"].rsplit("/", 1)[1]
    assert client.get(f"/jobs/{job_id}").json()["spec"]["dataset_version"] == 1
    wrong = client.post("/console/jobs", data={**fields, "dataset_version": "7"}, headers=HTMX)
    assert wrong.status_code == 404 and "has no version 7" in text(wrong)
