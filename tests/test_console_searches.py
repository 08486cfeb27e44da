"""Searches in the console: the dataset page's search form, the list, and the search's page
with its leaderboard, its chart and "Train this". In a real browser (system Chromium) against
a real server and worker: a tiny search asked for from the dataset page, followed to its end,
and one of its trials trained. Without a browser: the form refused with the API's messages,
and a search's page from trials written straight to its table (no worker, no TensorFlow)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from service.storage.tables import Search, SearchTrial
from service.web.search_pages import ranked, score_chart, short_params
from tests.browser import LiveService, PageProblems
from tests.conftest import Service, colour_images
from tests.test_console import TIMEOUT_MS, dataset_zip, sign_in

HTMX = {"HX-Request": "true"}
# The form's fields for a tiny search: MobileNetV2 at 32 px from random weights, a few head
# trials of 3 epochs, one finalist fine-tuned at two depths (tests/test_searches.py's).
TINY = {
    "backbone": "MobileNetV2",
    "weights": "none",
    "input_size": "32",
    "budget_kind": "trials",
    "budget": "3",
    "head_epochs": "3",
    "fine_tune_epochs": "2",
    "finalists": "1",
    "freeze_depths": "0, 20",
    "batch_size": "8",
    "validation_split": "0.25",
}


def text(response: Any) -> str:
    """A console answer as a person reads it (quotes and ampersands unescaped)."""
    return html.unescape(response.text)


@pytest.mark.any_database
def test_the_search_form_is_refused_with_the_apis_words(service: Service) -> None:
    client = service.client
    dataset_id = service.upload(colour_images(per_class=2))["id"]

    def refused(form: dict[str, str], dataset: str = dataset_id) -> tuple[int, str]:
        answer = client.post(f"/console/datasets/{dataset}/searches", data=form, headers=HTMX)
        assert 'role="alert"' in answer.text  # shown under the form
        return answer.status_code, text(answer)

    status, shown = refused(TINY, "d_nope")
    assert status == 404 and "d_nope" in shown
    status, shown = refused({**TINY, "budget": "0"})
    assert status == 422 and "budget.trials" in shown and "greater than or equal to 1" in shown
    status, shown = refused({**TINY, "budget_kind": "seconds", "budget": "soon"})
    assert status == 422 and "budget.seconds" in shown
    status, shown = refused({**TINY, "budget": ""})
    assert status == 422 and "budget.trials" in shown
    status, shown = refused({**TINY, "freeze_depths": "0, -3"})
    assert status == 422 and "space.freeze_depths" in shown
    status, shown = refused({**TINY, "finalists": "99"})
    assert status == 422 and "finalists" in shown
    status, shown = refused({**TINY, "weights": "model:m_x"})
    assert status == 404 and "m_x" in shown
    assert client.get("/searches").json() == []  # nothing was queued

    cursor = client.get("/console/searches", params={"cursor": "garbage"})
    assert cursor.status_code == 422 and "not a cursor this service gave" in cursor.text
    missing = client.get("/console/searches/s_nope")
    assert missing.status_code == 404 and "no search 's_nope'" in text(missing)
    train = client.post("/console/searches/s_nope/trials/0/train", headers=HTMX)
    assert train.status_code == 404 and "no search 's_nope'" in text(train)


def test_a_search_asked_from_the_form_is_the_one_the_api_would_queue(service: Service) -> None:
    client = service.client
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    assert 'id="search-form"' in client.get(f"/console/datasets/{dataset_id}").text
    form = {**TINY, "train_best": "true", "name": "searched"}
    asked = client.post(f"/console/datasets/{dataset_id}/searches", data=form, headers=HTMX)
    assert asked.status_code == 204, asked.text
    search_id = asked.headers["HX-Redirect"].rsplit("/", 1)[1]
    request = client.get(f"/searches/{search_id}").json()["request"]
    assert request["backbone"] == {"name": "MobileNetV2", "weights": None, "input_size": 32}
    assert request["budget"] == {"trials": 3, "seconds": None}
    assert request["space"]["freeze_depths"] == [0, 20]
    assert (request["head_epochs"], request["fine_tune_epochs"], request["finalists"]) == (3, 2, 1)
    assert (request["batch_size"], request["validation_split"]) == (8, 0.25)
    assert request["train_best"] and request["name"] == "searched"

    shown = text(client.get(f"/console/searches/{search_id}"))
    assert 'id="search-status" class="status status-queued"' in shown
    assert 'hx-trigger="every 2s"' in shown  # polls while queued
    assert 'id="no-trials"' in shown and "not run yet" in shown
    listed = text(client.get("/console/searches"))
    assert f'href="/console/searches/{search_id}"' in listed and "3 trials" in listed
    assert 'href="/console/searches" aria-current="page"' in listed  # in the nav
    job_id = client.get(f"/searches/{search_id}").json()["job_id"]
    job_page = text(client.get(f"/console/jobs/{job_id}"))
    assert f'id="job-search">The trials, ranked: <a href="/console/searches/{search_id}"' in (
        job_page
    )
    refused = client.post(f"/console/searches/{search_id}/trials/0/train", headers=HTMX)
    assert refused.status_code == 404 and f"search {search_id} has no trial 0" in text(refused)


def trial_row(search_id: str, number: int, phase: str, **values: Any) -> SearchTrial:
    params = {
        "learning_rate": 0.001 * (number + 1),
        "dropout": 0.1,
        "l2": 1e-5,
        "label_smoothing": 0.05,
        "pooling": "avg",
        "dense": "16" if number % 2 else "",
    }
    if phase == "fine_tune":
        params["freeze_depth"] = values.pop("depth", 0)
    row: dict[str, Any] = {"value": 0.5, "val_loss": 0.7, "state": "complete", **values}
    return SearchTrial(
        search_id=search_id,
        number=number,
        phase=phase,
        params=params,
        scores=[row["value"]],
        reason="completed its 3 epochs",
        seconds=1.5,
        **row,
    )


def test_a_search_page_ranks_its_trials_charts_them_and_trains_one(service: Service) -> None:
    """Trials written as the worker writes them: the leaderboard best first (ties by the
    lower loss), the chart's shapes, the best highlighted with its spec, "Train this" queuing
    the trial's spec as a training job, and the trials a hundred to a page."""
    client = service.client
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    form = {key: value for key, value in TINY.items() if key != "freeze_depths"}
    asked = client.post(f"/console/datasets/{dataset_id}/searches", data=form, headers=HTMX)
    search_id = asked.headers["HX-Redirect"].rsplit("/", 1)[1]
    rows = [
        trial_row(search_id, 0, "head", value=0.6, val_loss=0.9),
        trial_row(search_id, 1, "head", value=0.8, val_loss=0.5),
        trial_row(search_id, 2, "head", value=0.8, val_loss=0.4),  # ties 1, lower loss
        trial_row(search_id, 3, "head", value=0.3, val_loss=1.2, state="pruned"),
        trial_row(search_id, 4, "fine_tune", value=0.7, val_loss=0.6, depth=0),
    ]
    with service.database.session(write=True) as session:
        session.add_all(rows)
        best = {"trial": 4, "spec": {"dataset_id": dataset_id}}
        session.execute(update(Search).where(Search.id == search_id).values(best=best))

    shown = text(client.get(f"/console/searches/{search_id}"))
    board = shown.split('id="leaderboard"')[1]
    assert re.findall(r'<tr id="trial-(\d+)"', board) == ["2", "1", "4", "0", "3"]
    assert '<tr id="trial-4" class="best">' in board
    assert "lr 3.0e-03 · dropout 0.10 · l2 1e-05 · smoothing 0.05 · avg · dense none" in board
    chart = shown.split('id="trials-chart"')[1].split("</figure>")[0]
    drawn = dict(re.findall(r'<g class="trial" data-trial="(\d+)"[^>]*>(.*?)</g>', chart, re.S))
    assert sorted(drawn) == ["0", "1", "2", "3", "4"]
    assert "<rect" in drawn["4"] and "<circle" in drawn["0"]  # fine-tuning square, head circle
    assert 'fill="#ffffff"' in drawn["3"] and 'fill="#ffffff"' not in drawn["0"]  # pruned
    assert [number for number, shape in drawn.items() if 'r="9"' in shape] == ["4"]  # best
    assert 'id="best-spec"' in shown and "Train this: the best, trial 4" in shown

    trained = client.post(f"/console/searches/{search_id}/trials/2/train", headers=HTMX)
    assert trained.status_code == 204, trained.text
    job_id = trained.headers["HX-Redirect"].rsplit("/", 1)[1]
    spec = client.get(f"/jobs/{job_id}").json()["spec"]
    assert spec["dataset_id"] == dataset_id and spec["dataset_version"] == 1
    assert spec["training"]["learning_rate"] == pytest.approx(0.003)
    assert spec["training"]["epochs"] == 3 and spec["training"]["batch_size"] == 8
    assert spec["head"]["dense"] == [] and spec["head"]["l2"] == 1e-5
    assert spec["fine_tune"] == []  # a head trial: the backbone stays frozen
    assert client.post(f"/console/searches/{search_id}/trials/9/train").status_code == 404

    with service.database.session(write=True) as session:
        session.add_all(trial_row(search_id, number, "head") for number in range(5, 105))
    first = text(client.get(f"/console/searches/{search_id}"))
    assert len(re.findall(r'<tr id="trial-\d+"', first)) == 100
    assert "Trials 0–99 of 105" in first
    assert f'href="/console/searches/{search_id}?after=99"' in first
    later = text(client.get(f"/console/searches/{search_id}", params={"after": 99}))
    assert re.findall(r'<tr id="trial-(\d+)"', later) == ["100", "101", "102", "103", "104"]
    assert "Later trials" not in later and "← the first trials" in later


def test_the_chart_and_the_short_parameters() -> None:
    assert score_chart([], None).points == []
    assert short_params({"freeze_depth": 20, "pooling": "max", "extra": 1}) == (
        "max · last 20 layers · extra 1"
    )
    assert ranked([]) == []


# -- in a browser: a tiny search from the dataset page, followed, one trial trained ---------


@pytest.mark.slow
@pytest.mark.browser
def test_a_search_from_the_dataset_page_to_a_training_job(
    browser: Any, live: LiveService, screenshots: Path, tmp_path: Path
) -> None:
    with live.client() as client:
        upload = client.post(
            "/datasets", files={"file": ("colours.zip", dataset_zip(), "application/zip")}
        )
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]
    live.start_worker(tmp_path / "worker.log")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = PageProblems(page, live.url)
    sign_in(page, live)
    page.goto(f"{live.url}/console/datasets/{dataset_id}#search")
    form = page.locator("#search-form")
    form.get_by_label("Backbone").select_option("MobileNetV2")
    form.get_by_label("Weights").select_option("none")  # no ImageNet download here
    form.get_by_label("Input size (px)").fill("32")
    form.get_by_label("Budget", exact=True).fill("3")
    form.locator("summary").click()  # the advanced fields
    # The finalist fine-tuned at depth 0 alone (the head as a job): the least the page needs.
    advanced = {**TINY, "freeze_depths": "0"}
    for field, value in advanced.items():
        if field not in ("backbone", "weights", "input_size", "budget", "budget_kind"):
            form.locator(f"[name={field}]").fill(value)
    form.get_by_role("button", name="Find the best spec").click()
    page.wait_for_url(re.compile(r"/console/searches/s_"))
    search_id = page.url.rsplit("/", 1)[1]

    # The page polls until the search is done, then shows the API's ranking and best.
    expect(page.locator("#search-status")).to_have_text("succeeded", timeout=TIMEOUT_MS)
    with live.client() as client:
        done = client.get(f"/searches/{search_id}").json()
    assert live.worker is not None
    live.worker.terminate()  # idle now: the training job below is only queued, not run
    live.worker.wait(timeout=30)
    trials = done["trials"]
    expected = [str(t["number"]) for t in ranked_dicts(trials)]
    rows = page.locator("#leaderboard tbody tr")
    expect(rows).to_have_count(len(trials))
    assert [row.get_attribute("id") for row in rows.all()] == [f"trial-{n}" for n in expected]
    expect(page.locator("#trials-chart g.trial")).to_have_count(len(trials))
    best = done["best"]["trial"]
    expect(page.locator(f"#trial-{best}")).to_have_class("best")
    expect(page.locator("#range-test")).to_contain_text(f"{done['range_test']['picked']:.2e}")
    page.screenshot(path=str(screenshots / "search.png"), full_page=True)

    page.locator(f"#trial-{best}").get_by_role("button", name="Train this").click()
    page.wait_for_url(re.compile(r"/console/jobs/j_"))
    job_id = page.url.rsplit("/", 1)[1]
    with live.client() as client:
        job = client.get(f"/jobs/{job_id}").json()
    assert job["kind"] == "train" and job["spec"] == done["best"]["spec"]
    expect(page.locator("#job-status")).to_have_text("queued")
    problems.check()
    page.close()  # its event streams too, so the server stops at once


def ranked_dicts(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The API's trials best first: by value, ties by the lower loss, then by number."""
    return sorted(
        trials,
        key=lambda t: (
            t["value"] is None,
            -(t["value"] or 0.0),
            t["val_loss"] if t["val_loss"] is not None else float("inf"),
            t["number"],
        ),
    )
