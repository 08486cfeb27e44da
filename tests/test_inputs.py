"""Bad input gets a clear 4xx naming the problem, nothing is stored, the service keeps working."""

from __future__ import annotations

from sqlalchemy import func, select

from service.storage.tables import Dataset, DatasetImage
from tests.conftest import (
    Service,
    class_zip,
    colour_images,
    job_body,
    make_settings,
    make_zip,
)


def stored_rows(service: Service) -> tuple[int, int]:
    with service.database.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Dataset)),
            session.scalar(select(func.count()).select_from(DatasetImage)),
        )


def post_zip(service: Service, content: bytes, filename: str = "up.zip"):
    return service.client.post("/datasets", files={"file": (filename, content, "application/zip")})


def test_bad_archives_are_400_and_store_nothing(service: Service) -> None:
    good = colour_images(per_class=2)
    png = good["red"][0]
    cases = {
        "not a zip": b"this is plain text, not a zip",
        "at least 2 class folders": class_zip({"red": good["red"]}),
        "'..'": make_zip({"red/a.png": png, "blue/b.png": png, "../evil.png": png}),
        "absolute": make_zip({"red/a.png": png, "blue/b.png": png, "/etc/evil.png": png}),
    }
    for expected, content in cases.items():
        response = post_zip(service, content)
        assert response.status_code == 400, (expected, response.text)
        assert expected in response.json()["detail"]
        assert "up.zip" in response.json()["detail"]
    assert stored_rows(service) == (0, 0)
    assert service.client.get("/datasets").json() == []
    assert post_zip(service, class_zip(good)).status_code == 201


def test_undecodable_files_are_skipped_and_listed(service: Service) -> None:
    images = colour_images(per_class=3)
    files = {
        f"set/{label}/{n}.png": data
        for label, items in images.items()
        for n, data in enumerate(items)
    }
    files["set/red/broken.jpg"] = b"\xff\xd8\xff\xe0 truncated"
    files["set/blue/notes.png"] = b"random bytes named png"
    response = post_zip(service, make_zip(files))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 9
    assert [c["name"] for c in body["classes"]] == ["blue", "green", "red"]
    skipped = {entry["path"]: entry["reason"] for entry in body["skipped"]}
    assert set(skipped) == {"set/red/broken.jpg", "set/blue/notes.png"}
    assert all("decodable" in reason for reason in skipped.values())
    assert stored_rows(service) == (1, 9)


def test_upload_over_the_limit_is_413(tmp_path) -> None:
    limited = Service(make_settings(tmp_path, max_dataset_bytes=2000))
    try:
        response = post_zip(limited, class_zip(colour_images(per_class=4)))
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]
        assert stored_rows(limited) == (0, 0)
        assert limited.client.get("/healthz").json() == {"status": "ok"}
    finally:
        limited.close()


def test_bad_job_specs(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    client = service.client
    cases = [
        (job_body(dataset_id, backbone={"name": "NoSuchNet"}), 422, "NoSuchNet"),
        (job_body(dataset_id, backbone={"input_size": 16}), 422, "minimum"),
        (job_body(dataset_id, freeze={"mode": "partial"}), 422, "trainable_from"),
        (job_body(dataset_id, head={"pooling": "mean"}), 422, "pooling"),
        (job_body(dataset_id, backbone={"weights": "bogus"}), 422, "weights"),
        ({**job_body(dataset_id), "colour": "red"}, 422, "colour"),
        (job_body("d_missing"), 404, "d_missing"),
        (job_body(dataset_id, backbone={"weights": "model:m_missing"}), 404, "m_missing"),
    ]
    for body, status, named in cases:
        response = client.post("/jobs", json=body)
        assert response.status_code == status, (body, response.text)
        assert named in response.text
    assert client.get("/jobs").json() == []


def test_predict_errors(trained) -> None:
    client = trained["service"].client
    model_id = trained["job"]["model_id"]
    good = trained["images"]["red"][0]
    response = client.post(
        "/predict",
        data={"model_id": model_id},
        files=[
            ("files", ("ok.png", good, "image/png")),
            ("files", ("bad.png", b"nope", "image/png")),
        ],
    )
    assert response.status_code == 400
    assert "bad.png" in response.json()["detail"]
    response = client.post(
        "/predict", data={"model_id": "m_missing"}, files=[("files", ("a.png", good, "image/png"))]
    )
    assert response.status_code == 404
    assert client.post("/predict", data={"model_id": model_id}).status_code == 422
    assert client.get("/models/m_missing/layers").status_code == 404


def test_state_conflicts(service: Service) -> None:
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    job = service.client.post("/jobs", json=job_body(dataset_id)).json()
    assert service.client.delete(f"/datasets/{dataset_id}").status_code == 409
    cancelled = service.client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert service.client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert service.worker.run_until_idle() == 0
    assert service.client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert stored_rows(service) == (0, 0)
    assert service.client.get(f"/datasets/{dataset_id}").status_code == 404
    assert service.client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"


def test_api_key(tmp_path) -> None:
    secured = Service(make_settings(tmp_path, api_key="k" * 24))
    try:
        client = secured.client
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/datasets").status_code == 401
        assert client.get("/datasets", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/datasets", headers={"Authorization": f"Bearer {'k' * 24}"})
        assert ok.status_code == 200
    finally:
        secured.close()
