"""A model's exports and the registry in the console: in a real browser (system Chromium) against
a real server and worker, a tflite export requested from the model page, followed on its job
page, its parity figures as `GET /models/{id}/exports` answers them and its file downloaded;
aliases set, moved and removed on the registry page, and the 409 that keeps an aliased version;
the two versions compared on the comparisons page. Without a browser: the pages against the
JSON routes, ONNX's 501 reason and the errors of the writes. Any JavaScript error or failed
request fails a browser test; screenshots are written (SCREENSHOTS_DIR keeps them)."""

from __future__ import annotations

import html
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from service.exports import service as exports
from tests.browser import LiveService, PageProblems
from tests.conftest import LIGHT, colour_images, job_body, make_zip
from tests.test_console import TIMEOUT_MS, dataset_zip, sign_in

NAME = "colours-net"
HTMX = {"HX-Request": "true"}


def train_versions(live: LiveService, versions: int, log: Path) -> list[str]:
    """`versions` tiny models of one name (1 epoch, frozen random MobileNet at 32 px),
    trained through the live service's API by its worker; their ids, version 1 first."""
    with live.client() as client:
        upload = client.post(
            "/datasets", files={"file": ("colours.zip", dataset_zip(), "application/zip")}
        )
        assert upload.status_code == 201, upload.text
        body = job_body(upload.json()["id"], name=NAME, backbone=LIGHT, freeze={"mode": "backbone"})
        job_ids = []
        for _ in range(versions):
            queued = client.post("/jobs", json=body)
            assert queued.status_code == 202, queued.text
            job_ids.append(queued.json()["id"])
        live.start_worker(log)
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        finished: list[dict[str, Any]] = []
        while len(finished) < versions:
            assert time.monotonic() < deadline, "the training jobs did not finish"
            time.sleep(0.1)
            finished = [client.get(f"/jobs/{job_id}").json() for job_id in job_ids]
            finished = [job for job in finished if job["status"] not in ("queued", "running")]
        assert all(job["status"] == "succeeded" for job in finished), finished
        model_ids = [job["model_id"] for job in finished]
        versions_stored = [client.get(f"/models/{m}").json()["version"] for m in model_ids]
        assert versions_stored == list(range(1, versions + 1))
    return model_ids


def fraction(number: float) -> str:
    """A probability difference as the page writes it: 0.0123, or 3.1e-07 when tiny."""
    return f"{number:.4f}" if number == 0 or abs(number) >= 5e-5 else f"{number:.1e}"


def api_export(live: LiveService, model_id: str, format: str) -> dict[str, Any]:
    with live.client() as client:
        listed = client.get(f"/models/{model_id}/exports")
    assert listed.status_code == 200, listed.text
    [found] = [entry for entry in listed.json() if entry["format"] == format]
    return found


def export_from_the_model_page(page: Any, live: LiveService, model_id: str, folder: Path) -> None:
    page.goto(f"{live.url}/console/models/{model_id}")
    expect(page.locator("#model-registry")).to_contain_text(f"Version 1 of {NAME}")
    expect(page.locator("#export-tflite .export-status")).to_have_text("not exported")
    page.get_by_role("button", name="Export tflite", exact=True).click()
    page.wait_for_url(re.compile(r"/console/jobs/j_"))
    expect(page.locator("main")).to_contain_text(f"export of model {model_id} to tflite")
    expect(page.locator("#epochs")).to_have_count(0)  # no epochs, no charts
    page.wait_for_function(
        "() => document.querySelector('#job-status').innerText === 'succeeded'", timeout=TIMEOUT_MS
    )
    expect(page.locator("#job-error")).to_be_hidden()
    page.screenshot(path=str(folder / "1-export-job.png"), full_page=True)
    page.locator("#job-export").get_by_role("link").click()
    page.wait_for_url(f"{live.url}/console/models/{model_id}#exports")


def check_parity_and_download(page: Any, live: LiveService, model_id: str, folder: Path) -> None:
    found = api_export(live, model_id, "tflite")
    assert found["status"] == "ready", found
    parity, row = found["report"]["parity"], page.locator("#export-tflite")
    expect(row.locator(".export-status")).to_have_text("ready")
    expect(row.locator(".agreement")).to_have_text(f"{100 * parity['agreement']:.2f} %")
    expect(row.locator(".images")).to_have_text(str(parity["images"]))
    expect(row.locator(".bar-figure")).to_have_text(f"{100 * parity['bar']:.1f} %")
    expect(row.locator(".difference")).to_have_text(fraction(parity["max_abs_difference"]))
    expect(row.locator(".dtypes")).to_have_text("float32 → float32")
    assert parity["passed"] and parity["bar"] == 0.999
    with page.expect_download() as download:
        row.get_by_role("link", name="Download the tflite export").click()
    data = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == f"{model_id}-tflite.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        model_file = archive.read(found["report"]["file"])
        labels = archive.read(found["report"]["labels_file"]).decode().split()
    assert model_file[4:8] == b"TFL3"  # the FlatBuffer's file identifier
    assert labels == found["report"]["classes"]
    with live.client() as client:
        assert client.get(f"/models/{model_id}/exports/tflite").content == data
    page.locator("#exports").screenshot(path=str(folder / "2-exports.png"))


def set_alias(page: Any, alias: str, version: int) -> None:
    form = page.locator("#alias-form")
    form.get_by_label("Alias").fill(alias)
    form.get_by_label("Version").select_option(str(version))
    form.get_by_role("button", name="Set alias").click()


def api_alias(live: LiveService, alias: str) -> int | None:
    with live.client() as client:
        answer = client.get(f"/registry/{NAME}/aliases/{alias}")
    return answer.json()["version"] if answer.status_code == 200 else None


def alias_production(page: Any, live: LiveService, model_ids: list[str], folder: Path) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Registry").click()
    page.wait_for_url(f"{live.url}/console/registry")
    row = page.locator("#registry tbody tr", has_text=NAME)
    expect(row.locator("td").nth(0)).to_have_text("2")  # versions
    expect(row.get_by_role("link", name="version 2")).to_have_attribute(
        "href", f"/console/models/{model_ids[1]}"
    )
    row.get_by_role("link", name=NAME).click()
    page.wait_for_url(f"{live.url}/console/registry/{NAME}")
    for version, model_id in zip((1, 2), model_ids, strict=True):
        expect(page.locator(f"#version-{version}").get_by_role("link")).to_have_text(model_id)
    set_alias(page, "Prod!", 1)
    expect(page.locator("#alias-errors")).to_contain_text("'Prod!' is not an alias")
    set_alias(page, "production", 1)
    expect(page.locator("#alias-production .alias-version")).to_have_text("1")
    expect(page.locator("#version-1 .aliases")).to_have_text("production")
    assert api_alias(live, "production") == 1
    page.screenshot(path=str(folder / "3-registry.png"), full_page=True)


def refused_delete(page: Any, live: LiveService, model_id: str) -> None:
    """Version 1 has an alias: deleting its model is refused with the API's 409."""
    page.locator("#version-1").get_by_role("link").click()
    page.wait_for_url(f"{live.url}/console/models/{model_id}")
    expect(page.locator("#model-registry")).to_contain_text("alias production")
    page.get_by_role("button", name="Delete", exact=True).click()  # hx-confirm: accepted
    expect(page.locator("#model-errors .error")).to_contain_text(
        f"model {model_id} is version 1 of '{NAME}', and alias 'production' points to it"
    )
    with live.client() as client:
        assert client.get(f"/models/{model_id}").status_code == 200


def move_and_remove(page: Any, live: LiveService) -> None:
    page.locator("#model-registry").get_by_role("link", name=NAME).click()
    page.wait_for_url(f"{live.url}/console/registry/{NAME}")
    set_alias(page, "production", 2)
    expect(page.locator("#alias-production .alias-version")).to_have_text("2")
    expect(page.locator("#version-2 .aliases")).to_have_text("production")
    expect(page.locator("#version-1 .aliases")).to_have_text("—")
    assert api_alias(live, "production") == 2
    page.get_by_role("button", name="Remove alias production").click()  # confirmed
    expect(page.locator("#no-aliases")).to_be_visible()
    assert api_alias(live, "production") is None


def compare_in_the_console(
    page: Any, live: LiveService, model_ids: list[str], folder: Path
) -> None:
    """Version 1 against version 2 on their dataset, asked on the comparisons page: the page
    follows the job and shows the API's figures, and offers "promote" only on evidence."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Comparisons").click()
    page.select_option("#compare-a", model_ids[0])
    page.select_option("#compare-b", model_ids[1])
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_url(re.compile(r"/console/comparisons/c_"))
    comparison_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#verdict")).to_be_visible(timeout=TIMEOUT_MS)
    with live.client() as client:
        figures = client.get(f"/comparisons/{comparison_id}").json()
    assert figures["status"] == "succeeded", figures
    verdict = figures["verdict"]
    expect(page.locator("#verdict")).to_contain_text(verdict[0].upper() + verdict[1:])
    expect(page.locator("#difference")).to_have_text(f"{figures['difference']['estimate']:+.3f}")
    rows = page.locator("#per-class tbody tr")
    expect(rows).to_have_count(len(figures["per_class"]))
    if figures["b_is_better"]:
        expect(page.locator("#promote-form")).to_be_visible()
    else:
        expect(page.locator("#no-promotion")).to_contain_text("Not offered")
    page.screenshot(path=str(folder / "comparison.png"), full_page=True)


def review_in_the_console(page: Any, live: LiveService, model_id: str, folder: Path) -> None:
    """The Review page from the keyboard: images captured from /predict and a zip added to
    the pool, one labelled with key 1, one marked unknown with u, the rest accepted and saved
    with one click: one new dataset version, as the API then lists."""
    with live.client() as client:
        assert client.put(f"/models/{model_id}/capture", json={"rate": 1.0}).status_code == 200
        sent = [d for row in colour_images(per_class=1, seed=21).values() for d in row]
        files = [("files", (f"sent-{n}.png", data, "image/png")) for n, data in enumerate(sent)]
        assert client.post("/predict", data={"model_id": model_id}, files=files).is_success
        deadline = time.monotonic() + 30
        while len(client.get(f"/models/{model_id}/captures").json()) < len(sent):
            assert time.monotonic() < deadline, "the captures were not stored"
            time.sleep(0.1)
        dataset_id = client.get(f"/models/{model_id}").json()["dataset_id"]
        before = client.get(f"/datasets/{dataset_id}").json()["version"]
    page.goto(f"{live.url}/console/models/{model_id}")
    page.get_by_role("link", name="Review what it doubts and label it").click()
    pool = {f"new/{n}.png": d for n, d in enumerate(colour_images(per_class=1, seed=22)["red"])}
    page.set_input_files(
        "#pool-file",
        files=[{"name": "pool.zip", "mimeType": "application/zip", "buffer": make_zip(pool)}],
    )
    page.get_by_role("button", name="Add to the pool").click()
    cards = page.locator(".review-item")
    expect(cards).to_have_count(len(sent) + len(pool), timeout=TIMEOUT_MS)
    keys = [cards.nth(n).get_attribute("data-key") for n in range(cards.count())]
    grid = page.locator("#review-grid .review-item")
    in_grid = {grid.nth(n).get_attribute("data-key") for n in range(grid.count())}
    # Key 1 labels the first card, u marks the second, the button accepts the grid's others.
    labelled = {keys[0]} | (in_grid - {keys[0], keys[1]})
    page.keyboard.press("1")
    page.keyboard.press("u")
    expect(page.locator("#review-pending")).to_have_text("2")
    page.screenshot(path=str(folder / "review.png"), full_page=True)
    page.get_by_role("button", name="Accept every suggestion and save").click()
    expect(page.locator("#review-labelled")).not_to_have_text("0", timeout=TIMEOUT_MS)
    with live.client() as client:
        version = client.get(f"/datasets/{dataset_id}").json()["version"]
        queue = client.get(f"/models/{model_id}/review").json()
    assert version == before + 1
    expect(page.locator("#review-labelled")).to_have_text(str(queue["labelled_since_model"]))
    assert queue["labelled_since_model"] == len(labelled)
    marked = [item for item in queue["unknowns"] if item["reason"].startswith("marked")]
    kind, _, value = str(keys[1]).partition(":")
    assert [str(item[f"{kind}_id"]) for item in marked] == [value]


@pytest.mark.slow
@pytest.mark.browser
def test_exports_and_aliases_in_a_browser(
    browser: Any, live: LiveService, screenshots: Path, tmp_path: Path
) -> None:
    model_ids = train_versions(live, 2, tmp_path / "worker.log")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("dialog", lambda dialog: dialog.accept())
    problems = PageProblems(page, live.url)
    problems.expect("status of 422")  # the alias refused, shown under the form
    problems.expect("status of 409")  # the aliased version's delete, refused
    sign_in(page, live)
    export_from_the_model_page(page, live, model_ids[0], screenshots)
    check_parity_and_download(page, live, model_ids[0], screenshots)
    alias_production(page, live, model_ids, screenshots)
    refused_delete(page, live, model_ids[0])
    move_and_remove(page, live)
    compare_in_the_console(page, live, model_ids, screenshots)
    review_in_the_console(page, live, model_ids[1], screenshots)
    problems.check()
    page.close()  # its event streams too, so the server stops at once


# -- without a browser: the pages against the JSON routes ---------------------------------------


def text(response: Any) -> str:
    """A console answer as a person reads it (quotes and ampersands unescaped)."""
    return html.unescape(response.text)


def test_the_console_shows_the_exports_and_the_registry_the_api_answers(
    small_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client: TestClient = small_model["service"].client
    model = client.get(f"/models/{small_model['job']['model_id']}").json()
    name, quoted = model["name"], quote(model["name"])  # as the templates' urlencode
    shown = text(client.get(f"/console/models/{model['id']}"))
    assert f'href="/console/registry/{quoted}">{name}</a>' in shown
    for format in ("keras", "tflite", "tflite-fp16", "tflite-int8", "onnx"):
        assert f'id="export-{format}"' in shown

    reason = "ONNX export needs tf2onnx >= 1.17 with TensorFlow < 2.22"
    monkeypatch.setattr(exports, "onnx_unsupported", lambda: reason)
    shown = text(client.get(f"/console/models/{model['id']}/exports"))
    assert f"Not available here: {reason}" in shown
    assert f"/console/models/{model['id']}/exports/onnx" not in shown  # no Export button
    refused = client.post(f"/console/models/{model['id']}/exports/onnx", headers=HTMX)
    assert refused.status_code == 501 and reason in text(refused)
    unknown = client.post(f"/console/models/{model['id']}/exports/zip", headers=HTMX)
    assert unknown.status_code == 422
    assert "format: Input should be 'keras'" in text(unknown)

    check_a_queued_export(client, model["id"])

    listed = [entry["name"] for entry in client.get("/registry").json()]
    shown = text(client.get("/console/registry"))
    assert re.findall(r'<th scope="row"><a href="/console/registry/[^"]+">([^<]+)</a>', shown) == (
        listed
    )
    named = client.get(f"/registry/{name}").json()
    shown = text(client.get(f"/console/registry/{quoted}"))
    versions = [str(entry["version"]) for entry in named["versions"]]
    assert re.findall(r'id="version-(\d+)"', shown) == versions


def check_a_queued_export(client: TestClient, model_id: str) -> None:
    """An export waiting for a worker: its row polls, its job page says what it exports and
    links back, and the console's delete cancels it as DELETE /models/{id}/exports does."""
    made = {entry["format"] for entry in client.get(f"/models/{model_id}/exports").json()}
    format = next((f for f in ("keras", "tflite-fp16", "tflite") if f not in made), None)
    if format is None:  # another test exported them all from the session's model
        return
    queued = client.post(f"/models/{model_id}/exports", json={"format": format}).json()
    try:
        fragment = text(client.get(f"/console/models/{model_id}/exports"))
        assert 'hx-trigger="every 3s"' in fragment  # polls while it converts
        row = fragment.split(f'id="export-{format}"')[1].split("</tr>")[0]
        assert ">queued<" in row and f'href="/console/jobs/{queued["job_id"]}"' in row
        job_page = text(client.get(f"/console/jobs/{queued['job_id']}"))
        assert f'export of model <a href="/console/models/{model_id}">' in job_page
        assert 'data-kind="export"' in job_page and 'id="epochs"' not in job_page
        assert f'href="/console/models/{model_id}#exports"' in job_page
    finally:
        deleted = client.post(f"/console/models/{model_id}/exports/{format}/delete")
    assert deleted.status_code == 204 and deleted.headers["HX-Refresh"] == "true"
    job = client.get(f"/jobs/{queued['job_id']}").json()
    assert job["status"] == "cancelled"
    assert "hx-trigger" not in client.get(f"/console/models/{model_id}/exports").text


def test_alias_writes_answer_as_the_api_does(small_model: dict[str, Any]) -> None:
    client: TestClient = small_model["service"].client
    model = client.get(f"/models/{small_model['job']['model_id']}").json()
    aliases = f"/console/registry/{quote(model['name'])}/aliases"
    version = str(model["version"])

    def post(path: str, **form: str) -> Any:
        return client.post(path, data=form, headers=HTMX)

    bad = post(aliases, alias="Prod!", version=version)
    assert bad.status_code == 422 and "'Prod!' is not an alias" in text(bad)
    assert 'role="alert"' in bad.text
    missing = post(aliases, alias="console-check", version="999")
    assert missing.status_code == 404 and "has no version 999" in text(missing)
    assert post(aliases, alias="console-check", version="x").status_code == 422
    unknown = post("/console/registry/no-such-name/aliases", alias="a", version="1")
    assert unknown.status_code == 404 and "no model named 'no-such-name'" in text(unknown)
    done = post(aliases, alias="console-check", version=version)
    try:
        assert done.status_code == 204 and done.headers["HX-Refresh"] == "true"
        answer = client.get(f"/registry/{model['name']}/aliases/console-check").json()
        assert answer["model_id"] == model["id"]
        refused = post(f"/console/models/{model['id']}/delete")
        assert refused.status_code == 409
        assert "alias 'console-check' points to it" in text(refused)
    finally:
        removed = post(f"{aliases}/console-check/delete")
    assert removed.status_code == 204
    again = post(f"{aliases}/console-check/delete")
    assert again.status_code == 404 and "has no alias 'console-check'" in text(again)
