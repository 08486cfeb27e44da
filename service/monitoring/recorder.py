"""The API process's capture: which predicted images to keep, kept off the request's path.

A request only draws, for each image, whether its model's policy keeps it (one random number
against the rate, read from memory) and hands the kept ones to a single background thread.
That thread downscales each image (its longer side at most twice the model's input size,
as a JPEG), writes the captures and deletes what the policy no longer keeps. The policies
are read from the database every `refresh_seconds` by the same thread, never by a request;
a PUT or DELETE through this process is seen at once, one through another process within
`refresh_seconds`. When the thread falls behind by MAX_PENDING images, later ones are
dropped and counted (`dropped`): capture never slows serving.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from service.ml import review
from service.ml.images import UndecodableImage, thumbnail
from service.monitoring.captures import Policy, active_policies, delete_expired, store
from service.storage.db import Database
from service.storage.tables import Capture, new_id

log = logging.getLogger(__name__)

MAX_PENDING = 256  # images waiting for the thread, at most
SCORE_DECIMALS = 6


@dataclass(frozen=True)
class Offered:
    """One image a model answered, as capture needs it."""

    filename: str
    data: bytes
    probabilities: np.ndarray  # [classes]
    ood_score: float | None
    unknown: bool | None


@dataclass(frozen=True)
class Answer:
    """What every image of one answer shares: the model, its classes and input size, its
    thresholds (a multi-label model's), the request."""

    model_id: str
    classes: list[str]
    input_size: int
    thresholds: Sequence[float] | None
    request_id: str | None


class CaptureRecorder:
    def __init__(
        self, database: Database, *, refresh_seconds: float = 5.0, seed: int | None = None
    ) -> None:
        self.database = database
        self.refresh_seconds = refresh_seconds
        self._policies: dict[str, Policy] = {}
        self._read_at = -float("inf")
        self._refreshing = False
        self._pending = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
        self.stored = 0
        self.dropped = 0

    def capturing(self, model_id: str) -> bool:
        """Whether the model has a policy (as last read: a stale read is renewed in the
        background)."""
        self._refresh_if_stale()
        return model_id in self._policies

    def offer(
        self,
        model_id: str,
        classes: Sequence[str],
        input_size: int,
        images: Sequence[Offered],
        request_id: str | None,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        """Keep a random share of `images` if the model captures: from the request, in
        microseconds; the storing happens on the capture thread. `thresholds`: a multi-label
        model's, per label, which its captures' margins are measured from."""
        policy = self._policies.get(model_id)
        if policy is None:
            return
        kept = [image for image in images if self._random.random() < policy.rate]
        if not kept:
            return
        with self._lock:
            if self._pending + len(kept) > MAX_PENDING:
                self.dropped += len(kept)
                return
            self._pending += len(kept)
        answer = Answer(model_id, list(classes), input_size, thresholds, request_id)
        self._thread.submit(self._store, answer, kept, policy)

    def refresh(self, session: Session | None = None) -> None:
        """Read the policies now. Through `session`: a request that has just changed one, its
        own write seen before it commits (should that transaction fail, the next periodic
        read puts things right). Else in transactions of its own, which also delete the
        captures the policies have outlived, so that captures expire with no traffic too."""
        if session is not None:
            self._policies = active_policies(session)
            self._read_at = time.monotonic()
            return
        with self.database.session() as own:
            policies = active_policies(own)
        if policies:  # a write only where there may be something to delete
            with self.database.session(write=True) as own:
                delete_expired(own, policies)
        self._policies = policies
        self._read_at = time.monotonic()

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._read_at < self.refresh_seconds or self._refreshing:
            return
        self._refreshing = True
        self._thread.submit(self._refresh_in_background)

    def _refresh_in_background(self) -> None:
        try:
            self.refresh()
        except Exception:  # the database away for a moment: keep the policies read last
            log.exception("capture policies could not be read; keeping the last ones")
            self._read_at = time.monotonic()
        finally:
            self._refreshing = False

    def _store(self, answer: Answer, images: list[Offered], policy: Policy) -> None:
        try:
            captures = [capture for image in images if (capture := _capture(answer, image))]
            if captures:
                with self.database.session(write=True) as session:
                    store(session, captures, policy)
                self.stored += len(captures)
        except Exception:  # a capture lost is logged; serving goes on
            log.exception("captures of model %s could not be stored", answer.model_id)
        finally:
            with self._lock:
                self._pending -= len(images)

    def background(self, task: Callable[..., None], *args: Any) -> None:
        """Run `task` on the capture thread (a write a request must not wait for)."""

        def run() -> None:
            try:
                task(*args)
            except Exception:
                log.exception("monitoring: %s failed", getattr(task, "__name__", task))

        self._thread.submit(run)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until what was offered so far is stored (tests, shutdown)."""
        self._thread.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def _capture(answer: Answer, image: Offered) -> Capture | None:
    try:
        jpeg = thumbnail(image.data, 2 * answer.input_size, enlarge=False)
    except UndecodableImage:  # it was classified, so decodable; never mind if not
        return None
    width, height = PILImage.open(io.BytesIO(jpeg)).size
    probabilities = image.probabilities.astype(float)
    top = int(np.argmax(probabilities))
    return Capture(
        id=new_id("c"),
        model_id=answer.model_id,
        request_id=answer.request_id,
        filename=image.filename[:255],
        label=answer.classes[top],
        score=float(probabilities[top]),
        # As the review queue ranks: a multi-label model's, the label nearest its threshold.
        margin=float(review.margins(probabilities[None, :], answer.thresholds)[0]),
        ood_score=image.ood_score,
        unknown=image.unknown,
        scores=[round(float(p), SCORE_DECIMALS) for p in probabilities],
        media_type="image/jpeg",
        width=width,
        height=height,
        image=jpeg,
    )
