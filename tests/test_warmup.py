"""Warm at start: a restarted API loads the models its first requests will name before it
says it is ready, and its first /predict by alias waits for no load."""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.predictions.warmup import Warmup
from tests.conftest import SMALL_IMAGES, Service, small_model_copy


def test_a_restarted_api_loads_its_aliased_model_before_it_says_ready(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cold, state = small_model_copy(tmp_path_factory)
    model = cold.client.get(f"/models/{state['job']['model_id']}").json()
    alias = f"/registry/{model['name']}/aliases/production"
    assert cold.client.put(alias, json={"version": model["version"]}).status_code == 200
    cold.close()

    warm = Service(cold.settings.model_copy(update={"warm_models": True}))
    try:
        answers = readiness(warm)
        assert answers[-1] == (200, {"status": "ok"})
        assert all(status == 503 and body["status"] == "warming" for status, body in answers[:-1])
        cache = warm.client.app.state.model_cache
        assert (cache.loads, len(cache)) == (1, 1)
        fields = {"name": model["name"], "alias": "production"}
        image = SMALL_IMAGES["red"][0]
        answer = warm.client.post("/predict", data=fields, files={"files": ("r.png", image)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_id"] == model["id"]
        assert (cache.loads, cache.hits) == (1, 1)  # the first request found it loaded

        warm.client.app.state.warmup = Warmup(total=4, done=1)
        busy = warm.client.get("/readyz")
        assert busy.status_code == 503
        assert busy.json() == {"status": "warming", "detail": "warming: 1 of 4 models loaded"}
    finally:
        warm.close()


def readiness(service: Service) -> list[tuple[int, Any]]:
    """/readyz's answers until the first 200."""
    answers: list[tuple[int, Any]] = []
    deadline = time.monotonic() + 60
    while not answers or answers[-1][0] != 200:
        assert time.monotonic() < deadline, answers[-3:]
        response = service.client.get("/readyz")
        answers.append((response.status_code, response.json()))
        time.sleep(0.02)
    return answers
