"""Serving: dynamic batching, JSON and TF Serving request shapes, threshold, the model cache."""

from __future__ import annotations

import asyncio
import base64
import gc
import re
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings, usable_cores
from service.ml.batching import Batcher
from service.ml.model_cache import ModelCache
from service.models.registry import ModelRef
from service.predictions import serving as serving_module
from service.predictions.serving import Image, Serving, model_source
from service.problems import BadContent, NotFound, TooLarge


def test_batcher_gathers_concurrent_requests_and_answers_each_in_order() -> None:
    calls: list[int] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True) * np.ones((1, 3))

    async def run() -> list[np.ndarray]:
        batcher = Batcher(max_batch=16, max_wait=0.05)
        requests = [np.full((1 + n % 3, 2, 2, 3), n, dtype=np.float32) for n in range(20)]
        answers = await asyncio.gather(*(batcher.predict("m", predict, r) for r in requests))
        assert batcher.batches == len(calls)
        return [requests, answers]  # type: ignore[return-value]

    requests, answers = asyncio.run(run())
    for request, answer in zip(requests, answers, strict=True):
        assert answer.shape == (len(request), 3)
        np.testing.assert_array_equal(answer[:, 0], request.reshape(len(request), -1).sum(axis=1))
    assert sum(calls) == sum(len(r) for r in requests)
    assert len(calls) < len(requests) and max(calls) <= 16


def test_batcher_passes_a_failure_to_every_request_of_its_batch() -> None:
    def broken(pixels: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    async def run() -> list[Any]:
        batcher = Batcher(max_batch=8, max_wait=0.01)
        calls = [batcher.predict("m", broken, np.zeros((1, 2, 2, 3))) for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(result, ValueError) for result in asyncio.run(run()))


def test_a_lane_runs_as_many_batches_at_once_as_it_has_threads() -> None:
    both_inside = threading.Barrier(2, timeout=10)  # broken unless two calls overlap

    def predict(pixels: np.ndarray) -> np.ndarray:
        both_inside.wait()
        return pixels * 2

    batcher = Batcher(max_batch=1, max_wait=0, threads=2)
    answers = [batcher.submit("m", predict, np.full((1, 1), n)) for n in range(2)]
    assert [answer.result(timeout=10)[0, 0] for answer in answers] == [0, 2]
    batcher.close()


def test_a_lane_skips_requests_given_up_on_and_ends_its_threads_when_idle() -> None:
    first_running, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        seen.extend(int(v) for v in pixels[:, 0])
        first_running.set()
        release.wait(10)
        return pixels

    batcher = Batcher(max_batch=8, max_wait=0, threads=1, idle_seconds=0.05)
    first = batcher.submit("idle", predict, np.full((1, 1), 1))
    assert first_running.wait(10)
    gone = batcher.submit("idle", predict, np.full((1, 1), 2))
    kept = batcher.submit("idle", predict, np.full((1, 1), 3))
    assert gone.cancel()  # its client went while it waited
    release.set()
    assert first.result(10)[0, 0] == 1 and kept.result(10)[0, 0] == 3
    assert seen == [1, 3]

    def lane_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("lane-idle-")]

    deadline = time.monotonic() + 10
    while lane_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not lane_threads()
    assert batcher.submit("idle", predict, np.full((1, 1), 4)).result(10)[0, 0] == 4  # a new one
    batcher.close()
    with pytest.raises(RuntimeError, match="the batcher is closed"):
        batcher.submit("idle", predict, np.full((1, 1), 5))


def multipart(model_id: str, images: list[bytes], **fields: str) -> dict[str, Any]:
    return {
        "data": {"model_id": model_id, **fields},
        "files": [("files", (f"{n}.png", data, "image/png")) for n, data in enumerate(images)],
    }


def test_concurrent_http_requests_share_batches(
    small_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = small_model["service"].client
    app = client.app
    model_id = small_model["job"]["model_id"]
    images = [data for items in small_model["images"].values() for data in items[:6]]
    alone = [
        client.post("/predict", **multipart(model_id, [image], top_k="3")).json()["predictions"][0]
        for image in images
    ]
    batcher = app.state.batcher
    batches_before = batcher.batches
    # The model calls wait until every request is queued, as a slow first batch would make
    # them: on a busy machine the requests' decoding can otherwise space them out so that
    # each finds the model idle, which is right, but not what is tested here.
    submitted, queued = [], threading.Event()
    submit = batcher.submit

    def held_submit(key: str, predict: Any, pixels: np.ndarray) -> Any:
        def held(batch: np.ndarray) -> np.ndarray:
            assert queued.wait(timeout=60)
            return predict(batch)

        answer = submit(key, held, pixels)
        submitted.append(key)
        if len(submitted) == len(images):
            queued.set()
        return answer

    monkeypatch.setattr(batcher, "submit", held_submit)

    async def together() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(
                *(
                    http.post("/predict", **multipart(model_id, [image], top_k="3"))
                    for image in images
                )
            )
        return [response.json()["predictions"][0] for response in responses]

    concurrent = asyncio.run(together())
    assert batcher.batches - batches_before < len(images)
    for single, shared in zip(alone, concurrent, strict=True):
        assert [s["label"] for s in shared["top"]] == [s["label"] for s in single["top"]]
        for a, b in zip(shared["top"], single["top"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_json_and_tf_serving_shapes_agree_with_multipart(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    model_id = small_model["job"]["model_id"]
    classes = client.get(f"/models/{model_id}").json()["classes"]
    images = [small_model["images"]["red"][0], small_model["images"]["green"][1]]
    encoded = [base64.b64encode(image).decode() for image in images]
    form = client.post("/predict", **multipart(model_id, images, top_k="3")).json()

    as_json = client.post(
        "/predict",
        json={"model_id": model_id, "instances": [{"b64": e} for e in encoded], "top_k": 3},
    )
    assert as_json.status_code == 200, as_json.text
    for by_form, by_json in zip(form["predictions"], as_json.json()["predictions"], strict=True):
        assert by_json["top"] == by_form["top"]

    served = client.post(
        f"/v1/models/{model_id}:predict",
        json={"signature_name": "serving_default", "instances": [{"b64": encoded[0]}]},
    )
    assert served.status_code == 200, served.text
    vector = served.json()["predictions"][0]
    assert len(vector) == len(classes) and sum(vector) == pytest.approx(1.0, abs=1e-5)
    by_label = {s["label"]: s["score"] for s in form["predictions"][0]["top"]}
    assert vector == pytest.approx([by_label[label] for label in classes], abs=1e-6)
    named = client.post(
        f"/v1/models/{model_id}:predict", json={"instances": [{"image_bytes": {"b64": encoded[0]}}]}
    )
    assert named.json()["predictions"] == served.json()["predictions"]


def test_threshold_drops_low_scores_in_every_form(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    model_id = small_model["job"]["model_id"]
    image = small_model["images"]["blue"][0]
    full = client.post("/predict", **multipart(model_id, [image])).json()["predictions"][0]["top"]
    threshold = (full[0]["score"] + full[1]["score"]) / 2  # between the best and the rest
    kept = [s for s in full if s["score"] >= threshold]
    assert 1 <= len(kept) < len(full)
    form = client.post("/predict", **multipart(model_id, [image], threshold=str(threshold)))
    assert form.json()["predictions"][0]["top"] == kept
    body = {
        "model_id": model_id,
        "instances": [{"b64": base64.b64encode(image).decode()}],
        "threshold": threshold,
    }
    assert client.post("/predict", json=body).json()["predictions"][0]["top"] == kept


def test_bad_json_and_tf_serving_requests_are_4xx(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    model_id = small_model["job"]["model_id"]
    cases = [
        ({"model_id": model_id, "instances": [{"b64": "***"}]}, 400, "instances[0].b64"),
        ({"model_id": model_id, "instances": []}, 422, "instances"),
        ({"model_id": model_id, "instances": [{"b64": "aGVsbG8="}]}, 400, "instances[0]"),
        ({"model_id": "m_missing", "instances": [{"b64": "aGVsbG8="}]}, 404, "m_missing"),
        ({"instances": [{"b64": "aGVsbG8="}]}, 422, "model_id"),
    ]
    for body, status, named in cases:
        response = client.post("/predict", json=body)
        assert response.status_code == status, (body, response.text)
        assert named in response.text
    response = client.post(f"/v1/models/{model_id}:predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 400 and "instances[0]" in response.text
    response = client.post(
        "/predict", content=b"model_id=x", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


def test_cache_loads_once_under_concurrent_first_requests(
    small_model: dict[str, Any], tmp_path
) -> None:
    """One load for eight first requests. With `freeze` (FREEZE_LOADED_MODELS, the API's
    default) a full collection no longer scans the loaded model, and an evicted model's memory
    still comes back."""
    service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    cache = ModelCache(tmp_path / "cache", capacity=2, freeze=True)
    source = model_source(service.database, model_id)
    barrier = threading.Barrier(8)
    loaded = []

    def first_request() -> None:
        barrier.wait()
        loaded.append(cache.get(source))

    frozen_before = gc.get_freeze_count()  # the suite's own (tests/conftest.py)
    threads = [threading.Thread(target=first_request) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cache.loads == 1 and len({id(model) for model in loaded}) == 1
        assert gc.get_freeze_count() > frozen_before
        assert not any(thing is loaded[0] for thing in gc.get_objects())  # the scanned ones
        gone = weakref.ref(loaded[0])
        loaded.clear()
        cache.evict(model_id)
        assert not list((tmp_path / "cache").glob(f"{model_id}-*"))
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert gone() is None
        cache.get(source)
        assert cache.loads == 2 and gc.get_freeze_count() > 0
    finally:
        cache.close()
    assert gc.get_freeze_count() == 0


def test_answers_name_each_file_as_sent(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    image = small_model["images"]["red"][0]
    model_id = small_model["job"]["model_id"]
    files = [("files", ("it's.png", image, "image/png")), ("files", ("b.png", image, "image/png"))]
    response = client.post("/predict", data={"model_id": model_id}, files=files)
    assert response.status_code == 200, response.text
    assert [p["filename"] for p in response.json()["predictions"]] == ["it's.png", "b.png"]
    # A part without a file name is not silently dropped.
    files[1] = ("files", ("", image, "image/png"))
    response = client.post("/predict", data={"model_id": model_id}, files=files)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "files", 1]


def test_serving_classifies_without_the_http_layer(small_model: dict[str, Any], tmp_path) -> None:
    service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    data = [small_model["images"]["red"][2], small_model["images"]["blue"][3]]
    serving = Serving(
        database=service.database,
        cache=ModelCache(tmp_path / "cache", capacity=1),
        batcher=Batcher(max_batch=8, max_wait=0),
        max_images=2,
    )
    images = [Image(f"files[{n}] 'x.png'", f"{n}.png", image) for n, image in enumerate(data)]
    result = asyncio.run(serving.classify(model_id, images))
    answer = service.client.post("/predict", **multipart(model_id, data, top_k="2")).json()
    assert result.model_id == model_id and result.probabilities.shape == (2, 3)
    assert [[s.model_dump() for s in top] for top in result.top(2)] == [
        prediction["top"] for prediction in answer["predictions"]
    ]
    bad = [images[0], Image("files[1] 'bad.png'", "bad.png", b"nope")]
    for model, sent, error, message in [
        ("m_missing", images, NotFound, "model_id: no model 'm_missing'"),
        (model_id, images * 2, TooLarge, "4 images sent; at most 2 per request"),
        (model_id, bad, BadContent, "files[1] 'bad.png': "),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            asyncio.run(serving.classify(model, sent))


def test_a_found_model_id_is_read_again_only_after_recheck_seconds_or_an_eviction(
    small_model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    images = [Image("files[0] 'x.png'", "x.png", small_model["images"]["red"][0])]
    reads: list[Any] = []

    def counted(database: Any, model: Any) -> Any:
        reads.append(model)
        return model_source(database, model)

    monkeypatch.setattr(serving_module, "model_source", counted)

    def serving(recheck_seconds: float) -> Serving:
        return Serving(
            database=service.database,
            cache=ModelCache(tmp_path / "cache", capacity=1),
            batcher=Batcher(max_batch=8, max_wait=0),
            max_images=2,
            recheck_seconds=recheck_seconds,
        )

    trusting = serving(recheck_seconds=0.5)
    asyncio.run(trusting.classify(model_id, images))  # loads the model: may take the window
    time.sleep(0.6)
    reads.clear()
    for _ in range(3):
        asyncio.run(trusting.classify(model_id, images))
    assert len(reads) == 1
    trusting.evict(model_id)  # as deleting the model does
    asyncio.run(trusting.classify(model_id, images))
    assert len(reads) == 2
    time.sleep(0.6)
    asyncio.run(trusting.classify(model_id, images))
    assert len(reads) == 3
    # A name moves with every new version: it is resolved by every request.
    name = service.client.get(f"/models/{model_id}").json()["name"]
    for _ in range(2):
        asyncio.run(trusting.classify(ModelRef(name=name), images))
    assert len(reads) == 5

    reads.clear()
    strict = serving(recheck_seconds=0)
    for _ in range(2):
        asyncio.run(strict.classify(model_id, images))
    assert len(reads) == 2


def test_the_api_shares_its_cores_out_among_the_lanes() -> None:
    cores = usable_cores()
    automatic = Settings(_env_file=None)
    assert (automatic.serving_lanes, automatic.serving_intra_op_threads) == (cores, 1)
    one_lane = Settings(_env_file=None, predict_lanes=1)
    assert (one_lane.serving_lanes, one_lane.serving_intra_op_threads) == (1, cores)
    chosen = Settings(_env_file=None, predict_lanes=3, tf_intra_op_threads=5)
    assert (chosen.serving_lanes, chosen.serving_intra_op_threads) == (3, 5)


API_WITHOUT_TENSORFLOW = """
import sys
from fastapi.testclient import TestClient
from service.api.app import create_app
from service.config import Settings
from service.storage.db import Database

url = sys.argv[1]
Database(url).upgrade()
settings = Settings(_env_file=None, database_url=url, data_dir=sys.argv[2], api_key=None,
                    tf_intra_op_threads=2)
with TestClient(create_app(settings)) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/backbones").status_code == 200
loaded = sorted({"tensorflow", "keras"} & set(sys.modules))
assert not loaded, f"the API imported {loaded}"
"""


def test_the_api_starts_and_answers_without_importing_tensorflow(tmp_path) -> None:
    # A fresh process: in this one the trained fixture has long imported TensorFlow.
    url = f"sqlite:///{tmp_path / 'service.db'}"
    finished = subprocess.run(
        [sys.executable, "-c", API_WITHOUT_TENSORFLOW, url, str(tmp_path)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
