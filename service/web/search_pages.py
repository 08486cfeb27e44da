"""The console's searches: asked for from the dataset page, followed live on their own page
(the status, the range test's pick, the leaderboard and a chart of the trials' scores), and
any trial trained with one click ("Train this"), its spec built as the search built it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service.api.deps import SessionDep
from service.problems import Problem
from service.searches import service as searches
from service.searches.schemas import SearchRead, TrialRead
from service.searches.spec import MAX_TRIALS, SearchCreate
from service.searches.trials import FINE_TUNE
from service.storage.pages import Page
from service.storage.tables import Job, Search
from service.training import service as training
from service.web.common import console_routers, failed, form_lists, redirect_to_job
from service.web.forms import search_from_form
from service.web.render import page

pages, writes = console_routers()

LISTED = 25  # searches per page of the list
# The chart's plot area in SVG units; the template adds the margins for the axes' labels.
CHART_WIDTH = 400
CHART_HEIGHT = 200
CHART_TICKS = 5  # trial numbers labelled under the x axis, at most
# A trial's number as `after` (trials_page): the API's bound, so no query overflows.
After = Annotated[int | None, Query(ge=0, le=MAX_TRIALS * 2)]


async def _search_body(request: Request, dataset_id: str) -> dict[str, Any]:
    return search_from_form(dataset_id, await form_lists(request))


@writes.post("/datasets/{dataset_id}/searches", response_class=HTMLResponse)
def search_create(
    request: Request,
    session: SessionDep,
    body: Annotated[dict[str, Any], Depends(_search_body)],
) -> Response:
    """Queue a search on the dataset as POST /searches does, and show its page."""
    try:
        record = searches.request_search(session, SearchCreate.model_validate(body))
    except (ValidationError, Problem) as error:
        return failed(request, error)
    return Response(status_code=204, headers={"HX-Redirect": f"/console/searches/{record.id}"})


@pages.get("/searches", response_class=HTMLResponse)
def search_list(request: Request, session: SessionDep, cursor: str | None = None) -> HTMLResponse:
    """The searches, newest first, each with its status and its best trial's score."""
    listed = searches.list_searches(session, Page(limit=LISTED, cursor=cursor))
    return page(
        request,
        "searches.html",
        rows=[_summary(session, record, job) for record, job in listed.rows],
        next_cursor=listed.next_cursor,
    )


@dataclass(frozen=True)
class Summary:
    search: SearchRead  # without its trials: the list needs their count and the best alone
    best: TrialRead | None


def _summary(session: DbSession, record: Search, job: Job | None) -> Summary:
    found = searches.search_read(session, record, job, [])
    best = _trial(session, record.id, found.best.trial) if found.best else None
    return Summary(found, best)


def _trial(session: DbSession, search_id: str, number: int) -> TrialRead | None:
    rows, _ = searches.trials_page(session, search_id, limit=1, after=number - 1)
    if not rows or rows[0].number != number:
        return None
    return TrialRead.model_validate(rows[0], from_attributes=True)


@pages.get("/searches/{search_id}", response_class=HTMLResponse)
def search_page(
    request: Request, session: SessionDep, search_id: str, after: After = None
) -> HTMLResponse:
    """One search: while it runs, its status and the trials so far (the page polls); the
    range test's pick, the leaderboard of a page of trials (best first) with "Train this" on
    each, the chart of their scores, and once done the best trial and its spec."""
    record, job = searches.get_search(session, search_id)
    rows, next_after = searches.trials_page(session, search_id, after=after)
    found = searches.search_read(session, record, job, rows)
    best = found.best.trial if found.best else None
    return page(
        request,
        "search.html",
        search=found,
        leaderboard=ranked(found.trials),
        chart=score_chart(found.trials, best),
        best=_trial(session, search_id, best) if best is not None else None,
        short=short_params,
        after=after,
        next_after=next_after,
    )


@writes.post("/searches/{search_id}/trials/{number}/train", response_class=HTMLResponse)
def trial_train(
    request: Request,
    session: SessionDep,
    search_id: str,
    number: Annotated[int, Path(ge=0, le=MAX_TRIALS * 2)],
) -> Response:
    """Queue the training job trial `number` describes, as POST /jobs would, and follow it."""
    try:
        job = training.submit(session, searches.trial_spec(session, search_id, number))
    except (ValidationError, Problem) as error:
        return failed(request, error)
    return redirect_to_job(job.id)


# -- what the page shows: the leaderboard, the parameters in short, the chart ----------------


def ranked(trials: list[TrialRead]) -> list[TrialRead]:
    """Best first: by score, ties by the lower validation loss, then in their order; trials
    without a score last."""

    def key(trial: TrialRead) -> tuple[bool, float, float, int]:
        loss = trial.val_loss if trial.val_loss is not None else math.inf
        return (trial.value is None, -(trial.value or 0.0), loss, trial.number)

    return sorted(trials, key=key)


def short_params(params: dict[str, Any]) -> str:
    """A trial's parameters in one short line: "lr 8.0e-04 · dropout 0.21 · l2 1e-05 ·
    smoothing 0.05 · avg · dense 128 · last 20 layers"."""
    shown = {
        "learning_rate": lambda v: f"lr {float(v):.1e}",
        "dropout": lambda v: f"dropout {float(v):.2f}",
        "l2": lambda v: f"l2 {float(v):.0e}",
        "label_smoothing": lambda v: f"smoothing {float(v):.2f}",
        "pooling": str,
        "dense": lambda v: f"dense {v or 'none'}",
        "freeze_depth": lambda v: f"last {v} layers" if v else "backbone frozen",
    }
    parts = [shown[name](params[name]) for name in shown if name in params]
    parts += [f"{name} {value}" for name, value in params.items() if name not in shown]
    return " · ".join(parts)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    trial: TrialRead
    fine_tune: bool  # drawn as a square; a head trial as a circle
    hollow: bool  # pruned
    best: bool


@dataclass(frozen=True)
class Chart:
    """The trials' scores in the plot area's units (y down, as SVG's): x by trial number."""

    points: list[Point]
    ticks: list[tuple[float, int]]  # (x, trial number) under the axis
    fine_tune_from: float | None  # x where the finalists' fine-tuning begins, if shown
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def score_chart(trials: list[TrialRead], best: int | None) -> Chart:
    """Each scored trial at (its number, its score from 0 to 1)."""
    scored = [trial for trial in trials if trial.value is not None]
    if not scored:
        return Chart([], [], None)
    first, last = scored[0].number, scored[-1].number

    def x(number: int) -> float:
        if last == first:  # one trial: the middle
            return CHART_WIDTH / 2
        return CHART_WIDTH * (number - first) / (last - first)

    points = [
        Point(
            x=x(trial.number),
            y=CHART_HEIGHT * (1 - min(max(trial.value or 0.0, 0.0), 1.0)),
            trial=trial,
            fine_tune=trial.phase == FINE_TUNE,
            hollow=trial.state == "pruned",
            best=trial.number == best,
        )
        for trial in scored
    ]
    step = max(1, math.ceil((last - first) / (CHART_TICKS - 1)))
    numbers = sorted({*range(first, last, step), last})
    fine = [point.x for point in points if point.fine_tune]
    # The boundary only where head trials precede it on the chart.
    boundary = min(fine) if fine and not points[0].fine_tune else None
    return Chart(points, [(x(number), number) for number in numbers], boundary)
