"""Dynamic batching: concurrent requests for one model run as one batch.

A request's images join the model's lane. The lane's drainer runs what is waiting through
the model in one call on a worker thread (up to `max_batch` images) and hands each request
its own rows. Requests that arrive while a batch runs gather into the next one, so under
load batches fill by themselves and a request alone is not held back. `max_wait` > 0 also
waits that long for a batch to fill before running it, trading latency for larger batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Waiting:
    pixels: np.ndarray
    answer: asyncio.Future[np.ndarray]


@dataclass
class _Lane:
    waiting: list[_Waiting] = field(default_factory=list)
    images: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)
    drainer: asyncio.Task[None] | None = None


class Batcher:
    def __init__(
        self,
        *,
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._lanes: dict[str, _Lane] = {}
        self.batches = 0  # how many model calls were made, for tests and benchmarks
        # Told each model call's image count (the API's metrics), without importing them.
        self.on_batch = on_batch

    async def predict(self, key: str, predict: Predict, pixels: np.ndarray) -> np.ndarray:
        """`predict(pixels)` for this request, run together with others for the same key."""
        lane = self._lanes.setdefault(key, _Lane())
        answer: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        lane.waiting.append(_Waiting(pixels, answer))
        lane.images += len(pixels)
        if lane.images >= self.max_batch:
            lane.full.set()
        if lane.drainer is None or lane.drainer.done():
            lane.drainer = asyncio.create_task(self._drain(key, lane, predict))
        return await answer

    async def _drain(self, key: str, lane: _Lane, predict: Predict) -> None:
        loop = asyncio.get_running_loop()
        while lane.waiting:
            if self.max_wait > 0 and lane.images < self.max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.full.wait(), self.max_wait)
            batch = self._take(lane)
            pixels = np.concatenate([waiting.pixels for waiting in batch])
            try:
                probabilities = await loop.run_in_executor(None, predict, pixels)
            except Exception as error:
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(error)
                continue
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(pixels))
            start = 0
            for waiting in batch:
                end = start + len(waiting.pixels)
                if not waiting.answer.done():  # the client may have gone
                    waiting.answer.set_result(probabilities[start:end])
                start = end
        if self._lanes.get(key) is lane and not lane.waiting:
            del self._lanes[key]

    def _take(self, lane: _Lane) -> list[_Waiting]:
        """The oldest requests up to `max_batch` images (always at least one request)."""
        taken: list[_Waiting] = []
        images = 0
        while lane.waiting and (
            not taken or images + len(lane.waiting[0].pixels) <= self.max_batch
        ):
            waiting = lane.waiting.pop(0)
            taken.append(waiting)
            images += len(waiting.pixels)
        lane.images -= images
        if lane.images < self.max_batch:
            lane.full.clear()
        return taken
