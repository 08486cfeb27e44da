"""Capture (a sample of what /predict receives, kept for review) and drift (whether what a
model is sent still looks like what it learnt from)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from service.ml.model_cache import UnknownThresholds
from service.monitoring.drift import TEST_EVERY, WINDOW, DriftMonitor, DriftTest, critical_value
from tests.conftest import Service, make_settings, migrated
from tests.test_unknowns import strangers


def predict(service: Service, model: dict[str, str], images: list[bytes]) -> Any:
    files = [("files", (f"{n}.png", data, "image/png")) for n, data in enumerate(images)]
    answer = service.client.post("/predict", data=model, files=files)
    assert answer.status_code == 200, answer.text
    return answer


def captured(service: Service, model_id: str, **query: Any) -> Any:
    service.client.app.state.monitoring.recorder.drain()
    answer = service.client.get(f"/models/{model_id}/captures", params=query)
    assert answer.status_code == 200, answer.text
    return answer


def test_capture_keeps_what_predict_answered_within_its_policy(
    small_model: dict[str, Any],
) -> None:
    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    known = [data for row in small_model["images"].values() for data in row][:3]
    policy = {"rate": 1.0, "max_images": 4, "days": 30}
    answer = service.client.put(f"/models/{model_id}/capture", json=policy)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_id"] == model_id and answer.json()["rate"] == 1.0
    try:
        predict(service, {"model_id": model_id}, known)  # pruned below: the oldest
        answered = predict(service, {"model_id": model_id}, [*known[:2], *strangers(2)])
        rows = captured(service, model_id).json()
        # max_images 4: the first request's three went when the second's four came.
        assert sorted(row["filename"] for row in rows) == ["0.png", "1.png", "2.png", "3.png"]
        by_name = {row["filename"]: row for row in rows}
        for prediction in answered.json()["predictions"]:
            row = by_name[prediction["filename"]]
            assert row["label"] == prediction["top"][0]["label"]
            assert row["score"] == pytest.approx(prediction["top"][0]["score"], abs=1e-6)
            assert row["ood_score"] == pytest.approx(prediction["ood_score"])
            assert row["unknown"] == prediction["unknown"]
            assert row["request_id"] == answered.headers["X-Request-ID"]
            ordered = sorted(row["scores"].values(), reverse=True)
            assert row["margin"] == pytest.approx(ordered[0] - ordered[1], abs=1e-5)
        image = service.client.get(rows[0]["image"])
        assert image.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(image.content)).size) <= 2 * 32

        strangest = captured(service, model_id, sort="unknown").json()
        scores = [row["ood_score"] for row in strangest]
        assert scores == sorted(scores, reverse=True)
        doubtful = captured(service, model_id, sort="uncertain", limit=3)
        margins = [row["margin"] for row in doubtful.json()]
        follow = service.client.get(doubtful.links["next"]["url"]).json()
        assert len(margins) == 3 and len(follow) == 1
        every = [*margins, follow[0]["margin"]]
        assert every == sorted(every)
        bad = service.client.get(f"/models/{model_id}/captures", params={"cursor": "x"})
        assert bad.status_code == 422 and "cursor" in bad.text
    finally:
        assert service.client.delete(f"/models/{model_id}/capture").status_code == 204
    # Stopped: nothing more is kept, and what was stays.
    predict(service, {"model_id": model_id}, known[:1])
    assert len(captured(service, model_id).json()) == 4
    assert service.client.get(f"/models/{model_id}/capture").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"rate": 0.1, "max_images": 0}, "max_images"),
        ({"rate": 0.1, "days": 0}, "days"),
        ({"rate": 0.1, "every": 2}, "every"),
    ],
)
def test_a_bad_policy_is_refused_naming_its_field(
    small_model: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    service: Service = small_model["service"]
    answer = service.client.put(f"/models/{small_model['job']['model_id']}/capture", json=body)
    assert answer.status_code == 422 and field in answer.text
    assert service.client.put("/models/m_nope/capture", json={"rate": 0.5}).status_code == 404


def test_an_alias_policy_follows_the_alias(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    model = service.client.get(f"/models/{small_model['job']['model_id']}").json()
    name, alias = model["name"], "watched"
    aliases = f"/registry/{name}/aliases/{alias}"
    assert service.client.put(aliases, json={"version": model["version"]}).status_code == 200
    answer = service.client.put(f"{aliases}/capture", json={"rate": 1.0})
    assert answer.status_code == 200 and answer.json()["alias"] == alias
    before = len(captured(service, model["id"], limit=500).json())
    predict(service, {"name": name, "alias": alias}, strangers(1, seed=11))
    assert len(captured(service, model["id"], limit=500).json()) == before + 1
    # The alias gone, its policy goes with it.
    assert service.client.delete(aliases).status_code == 204
    assert service.client.get(f"{aliases}/capture").status_code == 404
    assert service.client.put(f"{aliases}/capture", json={"rate": 1.0}).status_code == 404


def test_drift_fires_on_a_shift_and_not_on_known_traffic() -> None:
    """5,000 images like the validation ones never fire; a switch to 30 % unknowns fires
    within 300 images, and switching back stops it."""
    rng = np.random.default_rng(4)
    validation = rng.normal(0, 1, 120)
    quantiles = np.quantile(validation, np.linspace(0, 1, 1001))
    reference = UnknownThresholds(quantiles, 0.05, len(validation))
    changes: list[DriftTest] = []
    monitor = DriftMonitor(on_change=lambda model_id, test: changes.append(test))

    def send(scores: np.ndarray) -> None:
        for start in range(0, len(scores), 8):  # requests of 8 images
            batch = scores[start : start + 8]
            monitor.observe("m", reference, batch, [bool(s > 1.64) for s in batch])

    send(rng.normal(0, 1, 5000))
    assert not changes and monitor.state("m")[1] is False
    assert len(monitor.state("m")[2]) > 100  # tested all along
    shifted = rng.normal(0, 1, 300)
    shifted[rng.random(300) < 0.3] += 40  # 30 % unknowns
    for sent in range(0, 300, 8):
        send(shifted[sent : sent + 8])
        if changes:
            break
    assert changes and changes[-1].drifting, "no drift within 300 images"
    assert changes[-1].unknown_share > 0.1
    send(rng.normal(0, 1, 2 * WINDOW + TEST_EVERY))
    assert not changes[-1].drifting and monitor.state("m")[1] is False


def test_drift_is_reported_measured_and_announced(
    small_model: dict[str, Any], tmp_path: Path
) -> None:
    from service.monitoring.watch import Monitoring
    from service.storage.tables import WebhookDelivery

    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    assert service.client.get("/models/m_nope/drift").status_code == 404
    for _ in range(WINDOW // 60 + 1):
        predict(service, {"model_id": model_id}, strangers(60, seed=5))
    drift = service.client.get(f"/models/{model_id}/drift").json()
    assert drift["window"] == WINDOW and drift["tests"] and drift["unknown_share"] > 0.5
    # Every stranger scores above every validation image (D = 1), but three validation
    # images cannot tell that from chance at a 0.1 % false-alarm rate: the critical D is
    # past 1, and the model does not drift. (test_drift_fires… has the references that can.)
    references = drift["reference_images"]
    assert references == 3 and drift["statistic"] == 1.0
    assert drift["threshold"] == pytest.approx(critical_value(references, WINDOW))
    assert drift["threshold"] > 1
    assert not drift["drifting"]
    # The model page charts the tests against the threshold.
    html = service.client.get(f"/console/models/{model_id}").text
    chart = html[html.index('id="drift-chart"') :]
    assert 'class="threshold"' in chart and "<polyline" in chart
    metrics = service.client.get("/metrics").text
    assert f'transfer_model_drift_statistic{{model_id="{model_id}"}} 1.0' in metrics
    assert f'transfer_model_drifting{{model_id="{model_id}"}} 0.0' in metrics

    # A change of state is a webhook delivery, sent by the workers as a job's end is.
    database = migrated(f"sqlite:///{tmp_path / 'service.db'}")
    url = "https://hooks.example.com/drift"
    monitoring = Monitoring(database, drift_webhook_url=url)
    started = DriftTest(**{**drift["tests"][-1], "at": _now(), "drifting": True})
    monitoring._drift_changed(model_id, started)
    monitoring.recorder.drain()
    monitoring.close()
    with database.session() as session:
        (delivery,) = session.query(WebhookDelivery).all()
        assert delivery.url == url and delivery.status == "pending"
        assert delivery.event["type"] == "model.drift" and delivery.event["drifting"] is True
    database.dispose()
    assert make_settings(tmp_path, drift_webhook_url=url).drift_webhook_url == url
    with pytest.raises(ValidationError, match="drift_webhook_url"):
        make_settings(tmp_path, drift_webhook_url="ftp://hooks.example.com")


def _now() -> Any:
    from service.storage.tables import utcnow

    return utcnow()


def test_the_console_refuses_a_bad_policy_naming_it(small_model: dict[str, Any]) -> None:
    service: Service = small_model["service"]
    model_id = small_model["job"]["model_id"]
    page = service.client.get(f"/console/models/{model_id}").text
    assert 'id="capture-form"' in page and 'id="drift-state"' in page
    answer = service.client.post(
        f"/console/models/{model_id}/capture", data={"percent": "0"}, headers={"HX-Request": "1"}
    )
    assert answer.status_code == 422 and "rate" in answer.text
    assert service.client.get(f"/models/{model_id}/capture").status_code == 404


def test_captures_keep_their_order_pages_and_limits_on_every_backend(database_url: str) -> None:
    """The storage side alone, on SQLite and PostgreSQL: policies (a version's own, an alias's
    followed), keyset pages in each order, and what a policy no longer keeps deleted."""
    from datetime import timedelta

    from service.monitoring import captures
    from service.storage.pages import Page
    from service.storage.tables import Capture, ModelAlias, utcnow
    from tests.conftest import stored_model

    database = migrated(database_url)
    model = stored_model(None, classes=["a", "b"])
    now = utcnow()

    def capture(number: int, margin: float, ood: float | None, age_days: float = 0) -> Capture:
        return Capture(
            id=f"c_{number:016x}",
            model_id=model.id,
            request_id=None,
            filename=f"{number}.png",
            label="a",
            score=0.5 + margin / 2,
            margin=margin,
            ood_score=ood,
            unknown=None,
            scores=[0.5 + margin / 2, 0.5 - margin / 2],
            media_type="image/jpeg",
            width=1,
            height=1,
            image=b"jpeg",
            created_at=now - timedelta(days=age_days, seconds=number),
        )

    with database.session(write=True) as session:
        session.add(model)
        session.flush()
        session.add(ModelAlias(name=model.name, alias="production", model_id=model.id))
        session.flush()
        keep = captures.Policy(rate=1.0, max_images=4, days=30)
        captures.set_alias_policy(session, model.name, "production", keep)
        assert captures.active_policies(session) == {model.id: keep}
        own = captures.Policy(rate=0.5, max_images=4, days=30)
        captures.set_model_policy(session, model.id, own)
        assert captures.active_policies(session) == {model.id: own}  # a version's own wins
        old = capture(9, 0.9, 1.0, age_days=31)
        session.add(old)
        session.flush()
        rows = [
            capture(n, margin, ood)
            for n, margin, ood in [
                (1, 0.3, 2.0),
                (2, 0.1, None),
                (3, 0.3, 5.0),
                (4, 0.8, -1.0),
                (5, 0.2, 0.5),
            ]
        ]
        captures.store(session, rows, own)

    with database.session() as session:

        def ids(sort: str, limit: int = 2) -> list[str]:
            seen, cursor = [], None
            while True:
                page = captures.list_captures(session, model.id, sort, Page(limit, cursor))
                seen += [row.filename for row in page.rows]
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor

        # Past 31 days and past the 4 newest (5.png, the oldest of the five) are gone.
        assert ids("recent") == ["1.png", "2.png", "3.png", "4.png"]
        assert ids("uncertain") == ["2.png", "1.png", "3.png", "4.png"]  # ties by id
        assert ids("unknown", limit=1) == ["3.png", "1.png", "4.png"]  # no score: left out
    database.dispose()
