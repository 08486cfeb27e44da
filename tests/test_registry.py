"""Named models: versions in store order, aliases set and moved atomically, the 409 that keeps
an aliased version, and predicting by name, version or alias over /predict and TF Serving's
paths. The registry's rules run on placeholder rows (on SQLite and PostgreSQL); predicting
uses copies of the session's small trained model as versions of a fresh name."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from alembic import command
from sqlalchemy import delete, func, insert, select

from service import jobs
from service.models import registry
from service.models.registry import ModelRef
from service.storage.db import Database
from service.storage.tables import ModelAlias, ModelLayer, TrainedModel, new_id, utcnow
from service.training.task import store_model
from tests.conftest import Service, colour_images, count_rows, job_body, stored_model


def store(service: Service, name: str) -> str:
    """A placeholder model stored as the worker stores one: numbered in its transaction."""
    with service.database.session(write=True) as session:
        model = stored_model(None, name=name)
        model.version = registry.next_version(session, name)
        session.add(model)
    return model.id


def put_alias(client: Any, name: str, alias: str, version: int) -> httpx.Response:
    return client.put(f"/registry/{name}/aliases/{alias}", json={"version": version})


# -- versions ---------------------------------------------------------------------------------


def test_versions_count_per_name_in_the_order_models_were_stored(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    names = ["flowers", "flowers", "birds", "flowers"]
    for _ in names:
        assert service.client.post("/jobs", json=job_body(dataset_id)).status_code == 202
    stored = []
    for name in names:  # completed through the queue, as the worker stores a model
        claim = jobs.claim_next_job(
            service.database, worker_id="w", lease_seconds=30, max_attempts=1
        )
        assert claim is not None
        model = stored_model(claim.job_id, name=name, version=99)  # numbered on storing
        assert jobs.complete(service.database, claim, store_model(model, []))
        stored.append(model.id)

    flowers = service.client.get("/models", params={"name": "flowers", "limit": 2})
    assert [(m["id"], m["version"]) for m in flowers.json()] == [(stored[3], 3), (stored[1], 2)]
    assert 'rel="next"' in flowers.headers["Link"] and "name=flowers" in flowers.headers["Link"]
    assert service.client.get(f"/models/{stored[2]}").json()["version"] == 1

    listing = {entry["name"]: entry for entry in service.client.get("/registry").json()}
    assert listing["flowers"]["versions"] == 3 and listing["flowers"]["latest_version"] == 3
    assert listing["flowers"]["latest_model_id"] == stored[3]
    assert listing["birds"]["latest_model_id"] == stored[2]
    named = service.client.get("/registry/flowers").json()
    assert [(v["version"], v["model_id"]) for v in named["versions"]] == [
        (3, stored[3]),
        (2, stored[1]),
        (1, stored[0]),
    ]


def test_the_migration_numbers_stored_models_per_name_in_store_order(database_url: str) -> None:
    """Models stored before versions existed are numbered by when they were stored, per name,
    and keep their layers (SQLite rebuilds the table to add the constraint)."""
    database = Database(database_url)
    command.upgrade(database.alembic_config(), "0005")
    table, start = TrainedModel.__table__, datetime(2026, 1, 1, tzinfo=UTC)
    # Ids out of store order, so the numbering must follow created_at.
    stored = [("m_c", "a", 0), ("m_b", "a", 1), ("m_z", "b", 2), ("m_a", "a", 3)]
    with database.session(write=True) as session:
        for model_id, name, minute in stored:
            model = stored_model(None, id=model_id, name=name)
            values = {c.name: getattr(model, c.key) for c in table.columns}
            values.update(version=None, created_at=start + timedelta(minutes=minute))
            session.execute(
                insert(table).values({k: v for k, v in values.items() if v is not None})
            )
        layer = {"model_id": "m_b", "index": 0, "name": "d", "path": "d", "class_name": "D"}
        counts = {"trainable": True, "trainable_params": 1, "non_trainable_params": 0}
        session.execute(insert(ModelLayer.__table__).values(**layer, **counts))
    command.upgrade(database.alembic_config(), "head")
    with database.session() as session:
        numbered = dict(session.execute(select(TrainedModel.id, TrainedModel.version)).all())
        assert numbered == {"m_c": 1, "m_b": 2, "m_a": 3, "m_z": 1}
        assert session.scalar(select(func.count()).select_from(ModelLayer)) == 1
        assert registry.next_version(session, "a") == 4
    database.dispose()


def test_concurrent_stores_of_one_name_take_turns_for_a_number(service: Service) -> None:
    """On PostgreSQL the counter row `next_version` upserts is what keeps two stores apart (the
    pause between reading the highest number and writing makes a race certain without it);
    SQLite takes its one write lock up front."""
    stores = 6
    barrier = threading.Barrier(stores)
    errors: list[BaseException] = []

    def store_one() -> None:
        try:
            barrier.wait()
            with service.database.session(write=True) as session:
                model = stored_model(None, name="raced")
                model.version = registry.next_version(session, "raced")
                time.sleep(0.05)
                session.add(model)
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=store_one) for _ in range(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with service.database.session() as session:
        assert registry.versions_of(session, "raced") == list(range(stores, 0, -1))


# -- aliases ----------------------------------------------------------------------------------


def test_an_alias_is_set_read_moved_and_removed(service: Service) -> None:
    client = service.client
    ids = [store(service, "pets") for _ in range(3)]
    created = put_alias(client, "pets", "production", 1)
    assert created.status_code == 200, created.text
    assert created.json() == {
        "name": "pets",
        "alias": "production",
        "version": 1,
        "model_id": ids[0],
        "updated_at": created.json()["updated_at"],
    }
    moved = put_alias(client, "pets", "production", 2).json()
    assert (moved["version"], moved["model_id"]) == (2, ids[1])
    assert moved["updated_at"] >= created.json()["updated_at"]
    assert client.get("/registry/pets/aliases/production").json() == moved
    assert count_rows(service, ModelAlias, ModelAlias.name == "pets") == 1

    assert put_alias(client, "pets", "staging.v2-rc_1", 3).status_code == 200
    named = client.get("/registry/pets").json()
    assert named["aliases"] == {"production": 2, "staging.v2-rc_1": 3}
    assert {v["version"]: v["aliases"] for v in named["versions"]} == {
        3: ["staging.v2-rc_1"],
        2: ["production"],
        1: [],
    }
    (entry,) = [e for e in client.get("/registry").json() if e["name"] == "pets"]
    assert entry["aliases"] == {"production": 2, "staging.v2-rc_1": 3}

    assert client.delete("/registry/pets/aliases/staging.v2-rc_1").status_code == 204
    gone = client.get("/registry/pets/aliases/staging.v2-rc_1")
    assert gone.status_code == 404 and "staging.v2-rc_1" in gone.json()["detail"]
    assert client.get(f"/models/{ids[2]}").status_code == 200  # the version stays


def test_a_deleted_version_number_is_never_given_again(service: Service) -> None:
    """As MLflow does: a client that cached "version 2" never gets a different model by it."""
    first, second = store(service, "kept"), store(service, "kept")
    assert service.client.delete(f"/models/{second}").status_code == 204
    third = store(service, "kept")
    assert service.client.get(f"/models/{third}").json()["version"] == 3
    listed = service.client.get("/registry/kept").json()["versions"]
    assert [(v["version"], v["model_id"]) for v in listed] == [(3, third), (1, first)]
    assert service.client.get(f"/models/{first}").json()["version"] == 1


def test_readers_see_the_old_version_or_the_new_while_an_alias_moves(service: Service) -> None:
    """Each move is one upsert: a reader resolving the alias concurrently finds one of the two
    versions every time, never none."""
    for _ in range(2):
        store(service, "swing")
    put_alias(service.client, "swing", "live", 1)
    moving = True
    seen: list[int] = []
    errors: list[BaseException] = []

    live = ModelRef(name="swing", alias="live")

    def read() -> None:
        while moving:
            try:
                with service.database.session() as session:
                    seen.append(registry.resolve(session, live).version)
            except BaseException as error:
                errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for move in range(30):
        assert put_alias(service.client, "swing", "live", 2 - move % 2).status_code == 200
    moving = False
    for thread in readers:
        thread.join()
    assert errors == [] and seen and set(seen) <= {1, 2}


def test_an_aliased_version_cannot_be_deleted(service: Service) -> None:
    client = service.client
    first, second = store(service, "kept"), store(service, "kept")
    put_alias(client, "kept", "production", 1)
    put_alias(client, "kept", "canary", 1)
    refused = client.delete(f"/models/{first}")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "'canary', 'production'" in detail and "version 1 of 'kept'" in detail
    assert client.get(f"/models/{first}").status_code == 200
    assert count_rows(service, ModelAlias, ModelAlias.model_id == first) == 2

    put_alias(client, "kept", "production", 2)
    client.delete("/registry/kept/aliases/canary")
    assert client.delete(f"/models/{first}").status_code == 204
    assert client.get("/registry/kept/aliases/production").json()["model_id"] == second


@pytest.mark.any_database
def test_bad_alias_text_is_422(service: Service) -> None:
    store(service, "strict")
    for alias in ["Production", "123", "-x", "_x", "a b", "é", "x" * 65]:
        for method in ("PUT", "GET", "DELETE"):
            response = service.client.request(
                method, f"/registry/strict/aliases/{alias}", json={"version": 1}
            )
            assert response.status_code == 422, (method, alias, response.text)
            assert response.json()["detail"][0]["loc"] == ["path", "alias"]
    for body in [{"version": 0}, {"version": "one"}, {}, {"version": 1, "model_id": "m"}]:
        response = service.client.put("/registry/strict/aliases/ok", json=body)
        assert response.status_code == 422, (body, response.text)
    assert put_alias(service.client, "strict", "1x", 1).status_code == 200  # digits, not only


@pytest.mark.any_database
def test_unknown_name_version_and_alias_are_404_naming_them(service: Service) -> None:
    client = service.client
    store(service, "known")
    put_alias(client, "known", "production", 1)
    cases = [
        ("GET", "/registry/unheard-of", None, "'unheard-of'"),
        ("PUT", "/registry/unheard-of/aliases/prod", {"version": 1}, "'unheard-of'"),
        ("PUT", "/registry/known/aliases/prod", {"version": 7}, "no version 7"),
        ("GET", "/registry/known/aliases/ghost", None, "'ghost'"),
        ("DELETE", "/registry/known/aliases/ghost", None, "'ghost'"),
        ("GET", "/v1/models/unheard-of", None, "'unheard-of'"),
        ("GET", "/v1/models/known/versions/7", None, "no version 7"),
        ("GET", "/v1/models/known/labels/ghost", None, "'ghost'"),
    ]
    for method, path, body, named in cases:
        response = client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert named in response.json()["detail"], (path, response.text)
    image = {"b64": base64.b64encode(b"not looked at").decode()}
    for fields, named in [
        ({"name": "unheard-of"}, "'unheard-of'"),
        ({"name": "known", "version": 7}, "no version 7"),
        ({"name": "known", "alias": "ghost"}, "'ghost' (its aliases: production)"),
        ({"model_id": "m_missing"}, "'m_missing'"),
    ]:
        response = client.post("/predict", json={**fields, "instances": [image]})
        assert response.status_code == 404 and named in response.json()["detail"], response.text
    for path in ["/v1/models/unheard-of:predict", "/v1/models/known/versions/7:predict"]:
        assert client.post(path, json={"instances": [image]}).status_code == 404


@pytest.mark.any_database
def test_predict_takes_the_model_exactly_one_way(service: Service) -> None:
    image = base64.b64encode(b"never decoded").decode()
    cases = [
        ({"model_id": "m_1", "name": "n"}, "name", "conflicts with model_id"),
        ({"model_id": "m_1", "alias": "prod"}, "alias", "conflicts with model_id"),
        ({"name": "n", "version": 2, "alias": "prod"}, "alias", "conflicts with version"),
        ({"version": 2}, "name", "version needs name"),
        ({"alias": "prod"}, "name", "alias needs name"),
        ({}, "model_id", "name + alias"),
        ({"name": "n", "alias": "Prod"}, "alias", "not an alias"),
        ({"name": "n", "version": 0}, "version", "greater than or equal to 1"),
    ]
    for fields, field, message in cases:
        as_json = service.client.post("/predict", json={**fields, "instances": [{"b64": image}]})
        as_form = service.client.post(
            "/predict",
            data={key: str(value) for key, value in fields.items()},
            files=[("files", ("a.png", b"never decoded", "image/png"))],
        )
        for response in (as_json, as_form):
            assert response.status_code == 422, (fields, response.text)
            (error,) = response.json()["detail"]
            assert error["loc"] == ["body", field] and message in error["msg"], error


@pytest.mark.any_database
def test_tf_serving_model_status(service: Service) -> None:
    client = service.client
    ids = [store(service, "served") for _ in range(3)]
    put_alias(client, "served", "stable", 2)

    def versions(path: str) -> list[str]:
        response = client.get(path)
        assert response.status_code == 200, response.text
        statuses = response.json()["model_version_status"]
        assert all(
            s["state"] == "AVAILABLE" and s["status"] == {"error_code": "OK", "error_message": ""}
            for s in statuses
        )
        return [s["version"] for s in statuses]

    assert versions("/v1/models/served") == ["3", "2", "1"]
    assert versions(f"/v1/models/{ids[0]}") == ["1"]  # a model id: that one version
    assert versions("/v1/models/served/versions/2") == ["2"]
    assert versions("/v1/models/served/labels/stable") == ["2"]
    assert client.get("/v1/models/served/labels/Stable").status_code == 422
    assert client.get("/v1/models/served/versions/0").status_code == 422


# -- predicting by name, version and alias with a real model ----------------------------------


@pytest.fixture
def named(small_model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Two versions of a fresh name, each a copy of the small model's row (so the same
    SavedModel under its own id), with `production` on version 1; removed afterwards."""
    service = small_model["service"]
    name = f"registry-{os.urandom(4).hex()}"
    table = TrainedModel.__table__
    source = small_model["job"]["model_id"]
    ids = [new_id("m"), new_id("m")]
    with service.database.session(write=True) as session:
        row = dict(session.execute(select(table).where(table.c.id == source)).mappings().one())
        for version, model_id in enumerate(ids, start=1):
            copy = {"id": model_id, "name": name, "version": version, "job_id": None}
            session.execute(insert(table).values({**row, **copy, "created_at": utcnow()}))
    assert put_alias(service.client, name, "production", 1).status_code == 200
    yield {"service": service, "name": name, "ids": ids, "images": small_model["images"]}
    with service.database.session(write=True) as session:
        session.execute(delete(ModelAlias).where(ModelAlias.name == name))
        session.execute(delete(TrainedModel).where(TrainedModel.name == name))
    for model_id in ids:
        service.client.app.state.model_cache.evict(model_id)


def predict_form(client: Any, images: list[bytes], **fields: Any) -> httpx.Response:
    return client.post(
        "/predict",
        data={key: str(value) for key, value in fields.items()},
        files=[("files", (f"{n}.png", data, "image/png")) for n, data in enumerate(images)],
    )


def scores_by_label(prediction: dict[str, Any]) -> dict[str, float]:
    return {score["label"]: score["score"] for score in prediction["top"]}


def test_predict_by_name_version_and_alias_answers_as_by_id(named: dict[str, Any]) -> None:
    client, name, (first, latest) = named["service"].client, named["name"], named["ids"]
    images = [named["images"]["red"][0], named["images"]["blue"][1]]
    encoded = [{"b64": base64.b64encode(image).decode()} for image in images]
    by_id = predict_form(client, images, model_id=first, top_k=3).json()["predictions"]
    ways = [({"name": name}, latest), ({"name": name, "version": 1}, first)]
    ways += [({"name": name, "alias": "production"}, first), ({"model_id": latest}, latest)]
    for fields, expected in ways:
        as_form = predict_form(client, images, top_k=3, **fields)
        as_json = client.post("/predict", json={**fields, "instances": encoded, "top_k": 3})
        for response in (as_form, as_json):
            assert response.status_code == 200, (fields, response.text)
            assert response.json()["model_id"] == expected, fields
            for got, want in zip(response.json()["predictions"], by_id, strict=True):
                # By label, not by rank: this barely trained model's scores nearly tie.
                assert scores_by_label(got) == pytest.approx(scores_by_label(want), abs=1e-6)

    reference = client.post(f"/v1/models/{first}:predict", json={"instances": encoded})
    assert reference.status_code == 200, reference.text
    for path in [
        f"/v1/models/{name}:predict",
        f"/v1/models/{name}/versions/1:predict",
        f"/v1/models/{name}/versions/2:predict",
        f"/v1/models/{name}/labels/production:predict",
    ]:
        served = client.post(path, json={"instances": encoded})
        assert served.status_code == 200, (path, served.text)
        np.testing.assert_allclose(
            served.json()["predictions"], reference.json()["predictions"], atol=1e-6
        )
    missing = client.post(f"/v1/models/{name}/versions/3:predict", json={"instances": encoded})
    assert missing.status_code == 404 and "no version 3" in missing.json()["detail"]


def test_an_alias_moving_under_load_switches_requests_cleanly(named: dict[str, Any]) -> None:
    """Requests resolve the alias once: while it moves back and forth every answer comes
    from one of the two versions and none fails; after the last move, the next request
    answers from the version it was moved to."""
    service, name, ids = named["service"], named["name"], named["ids"]
    image = named["images"]["green"][0]
    app = service.client.app

    async def load() -> tuple[list[httpx.Response], list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

            async def predict(turn: int) -> httpx.Response:
                await asyncio.sleep(0.004 * turn)
                return await http.post(
                    "/predict",
                    data={"name": name, "alias": "production"},
                    files=[("files", ("g.png", image, "image/png"))],
                )

            async def move(turn: int) -> httpx.Response:
                await asyncio.sleep(0.01 * turn)  # spread over the predictions
                path = f"/registry/{name}/aliases/production"
                return await http.put(path, json={"version": 2 - turn % 2})

            predictions = [predict(turn) for turn in range(24)]
            moves = [move(turn) for turn in range(9)]
            answers = await asyncio.gather(*predictions, *moves)
        return answers[:24], answers[24:]

    predictions, moves = asyncio.run(load())
    assert all(move.status_code == 200 for move in moves)
    assert all(answer.status_code == 200 for answer in predictions), [
        answer.text for answer in predictions if answer.status_code != 200
    ]
    assert {answer.json()["model_id"] for answer in predictions} <= set(ids)
    assert put_alias(service.client, name, "production", 2).json()["model_id"] == ids[1]
    # Once the version moved to is loaded (a rollout loads it in the background while the
    # version before answers: docs/scaling.md), the next request answers from it.
    deadline = time.monotonic() + 60
    while app.state.model_cache.peek(ids[1]) is None:
        assert time.monotonic() < deadline, "the version moved to never loaded"
        predict_form(service.client, [image], name=name, alias="production")
        time.sleep(0.05)
    after = predict_form(service.client, [image], name=name, alias="production")
    assert after.json()["model_id"] == ids[1]
