"""No request waits for a model to load: a restarted API loads the models its first requests
will name before it says it is ready, and an alias moved to a version not yet loaded keeps
answering with the one before until the new one is loaded."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy.orm import undefer

from service.predictions.warmup import Warmup
from service.storage.tables import TrainedModel, new_id
from tests.conftest import SMALL_IMAGES, Service, small_model_copy


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_alias_moved_to_a_version_not_loaded_keeps_answering_with_the_old_one_meanwhile(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """No request waits for the new version to load: until it has, the alias answers with the
    version before (each answer whole from one of them), and from then on with the new."""
    service, state = small_model_copy(tmp_path_factory)
    try:
        first = service.client.get(f"/models/{state['job']['model_id']}").json()
        second = another_version_of(service, first["id"])
        alias = f"/registry/{first['name']}/aliases/production"
        fields = {"name": first["name"], "alias": "production"}

        def answered_by() -> str:
            files = {"files": ("r.png", SMALL_IMAGES["red"][0])}
            answer = service.client.post("/predict", data=fields, files=files)
            assert answer.status_code == 200, answer.text
            return answer.json()["model_id"]

        assert service.client.put(alias, json={"version": first["version"]}).is_success
        assert answered_by() == first["id"]  # loaded by this request: nothing else to answer
        assert service.client.put(alias, json={"version": second["version"]}).is_success
        cache = service.client.app.state.model_cache
        assert answered_by() == first["id"]  # the new version loads in the background
        deadline = time.monotonic() + 60
        while cache.peek(second["id"]) is None:
            assert time.monotonic() < deadline, "the new version never loaded"
            time.sleep(0.05)
        assert answered_by() == second["id"]
        assert cache.loads == 2
    finally:
        service.close()


def another_version_of(service: Service, model_id: str) -> dict[str, Any]:
    """The model stored again as its name's next version (the same SavedModel: what a
    rollout needs is a version no process has loaded)."""
    with service.database.session(write=True) as session:
        row = session.get(TrainedModel, model_id, options=[undefer("*")])
        copy = TrainedModel(
            **{
                column.key: getattr(row, column.key)
                for column in TrainedModel.__table__.columns
                if column.key not in ("id", "version", "job_id", "created_at")
            },
            id=new_id("m"),
            version=row.version + 1,
        )
        session.add(copy)
        session.flush()
        copy_id = copy.id
    return service.client.get(f"/models/{copy_id}").json()
