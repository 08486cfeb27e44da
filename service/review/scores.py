"""What a model answered for each review candidate, remembered in the API process.

A model's weights never change and neither do a stored image's bytes, so the answer for
(model id, candidate) holds for good: a Review page reloaded after a save scores only what
is new (400 candidates at 224 px cost about 6 s on a 2-core CPU; answered from here, a few
milliseconds). Bounded (least recently used first out); features kept as float16, which
cosine distances do not notice: 8,192 entries of 1,280 features are about 21 MB.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

CAPACITY = 8192


@dataclass(frozen=True)
class ItemScore:
    features: np.ndarray  # float16
    probabilities: np.ndarray  # float32
    ood_score: float | None


class ScoreCache:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], ItemScore] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_id: str, key: str) -> ItemScore | None:
        with self._lock:
            found = self._items.get((model_id, key))
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end((model_id, key))
            self.hits += 1
            return found

    def put(self, model_id: str, key: str, score: ItemScore) -> None:
        with self._lock:
            self._items[(model_id, key)] = score
            self._items.move_to_end((model_id, key))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


# The API process's: the review queue and the Review page share it.
SCORES = ScoreCache()
