"""Dynamic batching: concurrent requests for one model run as one batch, in one lane.

Each model has a lane: a queue and up to `threads` threads, each of which runs what is
waiting through the model in one call (up to `max_batch` images) and hands each request its
own rows. Requests that arrive while the batches run gather into the next one, so under load
batches fill by themselves and a request alone is not held back. `max_wait` > 0 also waits
that long for a batch to fill, trading latency for larger batches.

Threads rather than tasks on the event loop: the next batch starts the moment a thread is
free, not when the loop next gets to it between parsing requests and writing answers. How
many run at once is the caller's choice (the API's: one per CPU core, as TensorFlow Serving's
batching guide advises for CPUs, each op on one core; measured in docs/scaling.md). A thread
ends after `idle_seconds` with nothing to do, and later requests start others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Waiting:
    pixels: np.ndarray
    predict: Predict
    answer: Future[np.ndarray]


@dataclass
class _Lane:
    ready: threading.Condition
    waiting: deque[_Waiting] = field(default_factory=deque)
    images: int = 0
    threads: int = 0  # running
    idle: int = 0  # of them, waiting for work


class Batcher:
    def __init__(
        self,
        *,
        max_batch: int,
        max_wait: float,
        threads: int = 1,
        on_batch: Callable[[int], None] | None = None,
        idle_seconds: float = 30.0,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.threads = threads
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._closed = False
        self.batches = 0  # how many model calls were made, for tests and benchmarks
        # Told each model call's image count (the API's metrics), without importing them.
        self.on_batch = on_batch

    async def predict(self, key: str, predict: Predict, pixels: np.ndarray) -> np.ndarray:
        """`predict(pixels)` for this request, run together with others for the same key."""
        return await asyncio.wrap_future(self.submit(key, predict, pixels))

    def submit(self, key: str, predict: Predict, pixels: np.ndarray) -> Future[np.ndarray]:
        """`predict`'s future rows for `pixels`, queued in the key's lane; from any thread."""
        answer: Future[np.ndarray] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(threading.Condition(self._lock))
            lane.waiting.append(_Waiting(pixels, predict, answer))
            lane.images += len(pixels)
            if lane.idle or self.max_wait > 0:  # or one waiting for its batch to fill
                lane.ready.notify_all()
            if not lane.idle and lane.threads < self.threads:
                lane.threads += 1
                name = f"lane-{key}-{lane.threads}"
                thread = threading.Thread(target=self._run, args=(key, lane), name=name)
                thread.daemon = True
                thread.start()
        return answer

    def close(self) -> None:
        """Let every lane finish what it holds and end; later submissions are refused."""
        with self._lock:
            self._closed = True
            for lane in self._lanes.values():
                lane.ready.notify_all()

    def _run(self, key: str, lane: _Lane) -> None:
        while (batch := self._next_batch(key, lane)) is not None:
            if not batch:
                continue  # every request of it was cancelled (its client went)
            pixels = np.concatenate([waiting.pixels for waiting in batch])
            try:
                probabilities = batch[0].predict(pixels)
            except Exception as error:
                for waiting in batch:
                    waiting.answer.set_exception(error)
                continue
            with self._lock:  # the lane's threads count together
                self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(pixels))
            start = 0
            for waiting in batch:
                end = start + len(waiting.pixels)
                waiting.answer.set_result(probabilities[start:end])
                start = end

    def _next_batch(self, key: str, lane: _Lane) -> list[_Waiting] | None:
        """The next batch, once there is one; None when this thread has been idle long enough
        (or the batcher is closed) and has ended, the lane's last one taking the lane along."""
        with self._lock:
            while not lane.waiting:
                lane.idle += 1
                woken = not self._closed and lane.ready.wait(self.idle_seconds)
                lane.idle -= 1
                if not woken and not lane.waiting:
                    lane.threads -= 1
                    if not lane.threads:
                        del self._lanes[key]
                    return None
            if self.max_wait > 0:
                deadline = time.monotonic() + self.max_wait
                while lane.images < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    lane.ready.wait(left)
            return self._take(lane)

    def _take(self, lane: _Lane) -> list[_Waiting]:
        """The oldest requests up to `max_batch` images (always at least one request), less
        those whose caller has stopped waiting."""
        taken: list[_Waiting] = []
        images = 0
        while lane.waiting and (
            images == 0 or images + len(lane.waiting[0].pixels) <= self.max_batch
        ):
            waiting = lane.waiting.popleft()
            images += len(waiting.pixels)
            if waiting.answer.set_running_or_notify_cancel():
                taken.append(waiting)
        lane.images -= images
        return taken
