"""A model's review queue over HTTP (service/review/): the images most worth labelling, and
marking those that fit none of its classes."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query

from service.api.deps import ServingDep, SessionDep
from service.review import service as reviews
from service.review.schemas import MAX_REVIEW_LIMIT, ReviewMarked, ReviewMarks, ReviewQueue

router = APIRouter(prefix="/models/{model_id}/review", tags=["review"])


@router.get(
    "",
    response_model=ReviewQueue,
    summary="The images most worth labelling, and the unknowns",
    description="Among the model's newest captured predictions not yet labelled into its "
    f"dataset and the newest images of the dataset's unlabelled pool ({reviews.MAX_CANDIDATES} "
    "of each), scored by the model now: the `limit` most worth a label, by the smallest "
    "margin between the top two scores, spread by greedy k-center on the backbone's features "
    "so near-identical images do not fill the page (`method` says it whole); each with the "
    "model's `suggestion` and the `reason` it was chosen. Images past the model's unknown "
    "threshold, or marked unknown, are listed apart in `unknowns`. Label them with "
    "`POST /datasets/{dataset_id}/edits` (`label` entries).",
    responses={
        404: {"description": "Unknown model"},
        409: {"description": "The model's dataset was deleted"},
    },
)
async def review_queue(
    serving: ServingDep,
    model_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_REVIEW_LIMIT, description="Images to list")] = 24,
) -> ReviewQueue:
    return await anyio.to_thread.run_sync(reviews.review_queue, serving, model_id, limit)


@router.post(
    "/marks",
    response_model=ReviewMarked,
    summary="Mark images of the queue unknown: they fit none of the model's classes",
    description="They leave the queue and are listed with the `unknowns` (perhaps a new "
    "class: label them with it when there are enough). 422 names the first entry that is "
    "neither an unlabelled capture of the model nor an image of its dataset's pool.",
    responses={
        404: {"description": "Unknown model"},
        409: {"description": "The model's dataset was deleted"},
    },
)
def mark_unknown(session: SessionDep, model_id: str, body: ReviewMarks) -> ReviewMarked:
    return ReviewMarked(marked=reviews.mark_unknown(session, model_id, body.unknown))
