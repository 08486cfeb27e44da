"""Warm at start: the API loads, in the background, the models its first requests will most
likely name, so that no request waits for a model to load (issue: a cold first /predict took
4× a warm one's load and first call, and an alias moved to a version no process had loaded
stalled its users for seconds).

Which models, in order, up to the model cache's size: those registry aliases point to (most
recently moved first), then those this host loaded most recently (the unpacked SavedModels
the cache keeps on disk, by when each was last loaded). Each is loaded as a request would load
it (TensorFlow imported by the first, the graph frozen and checked) and called once, so its
first request finds it ready. /readyz answers 503 "warming" until the warm-up ends, so an
orchestrator sends traffic only to a warm process; /healthz answers at once. A model that
fails to load is logged and skipped: its requests will say why, as they would have.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from service.predictions.serving import Serving
from service.storage.tables import ModelAlias, TrainedModel

log = logging.getLogger(__name__)


@dataclass
class Warmup:
    """Where the warm-up stands, for /readyz: written by its thread, read by requests."""

    total: int = 0
    done: int = 0
    finished: bool = False
    failed: list[str] = field(default_factory=list)

    @property
    def detail(self) -> str:
        return f"warming: {self.done} of {self.total} models loaded"


def finished() -> Warmup:
    """The state of a process that does not warm up: ready at once."""
    return Warmup(finished=True)


def start(serving: Serving, models_dir: Path, capacity: int) -> Warmup:
    """Begin warming in a thread of its own; the state it updates."""
    state = Warmup()
    thread = threading.Thread(
        target=warm_up, args=(serving, models_dir, capacity, state), name="warm-up", daemon=True
    )
    thread.start()
    return state


def warm_up(serving: Serving, models_dir: Path, capacity: int, state: Warmup) -> None:
    try:
        targets = warm_targets(serving, models_dir, capacity)
        state.total = len(targets)
        for model_id in targets:
            try:
                loaded = serving.model(model_id)
                size = loaded.input_size
                loaded.scores(np.zeros((1, size, size, 3), dtype=np.float32))
            except Exception:
                log.exception("warm-up: model %s could not be loaded", model_id)
                state.failed.append(model_id)
            state.done += 1
        log.info("warm-up: %d models loaded (%d failed)", state.done, len(state.failed))
    except Exception:
        log.exception("warm-up: stopped; models will load at their first request")
    finally:
        state.finished = True


def warm_targets(serving: Serving, models_dir: Path, capacity: int) -> list[str]:
    """Aliased models (most recently moved first), then those loaded here most recently."""
    with serving.database.session() as session:
        aliased = session.execute(
            select(ModelAlias.model_id, func.max(ModelAlias.updated_at).label("moved"))
            .group_by(ModelAlias.model_id)
            .order_by(func.max(ModelAlias.updated_at).desc())
        )
        targets = [model_id for model_id, _ in aliased]
        unpacked = sorted(
            (path for path in models_dir.glob("*-*") if (path / "saved_model.pb").exists()),
            key=lambda path: path.stat().st_mtime,
            reverse=True,
        )
        recent = [path.name.rsplit("-", 1)[0] for path in unpacked]
        stored = set(
            session.scalars(select(TrainedModel.id).where(TrainedModel.id.in_(recent[:capacity])))
        )
    targets += [model_id for model_id in recent if model_id in stored]
    return list(dict.fromkeys(targets))[:capacity]
