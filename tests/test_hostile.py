"""Bad and hostile uploads and requests over HTTP: each a 4xx naming the problem, nothing
stored, the service still serving. Every route is behind the API key; CORS answers only the
allowed origins.

How a zip is read (layouts, stray files, limits) is unit-tested in test_ingest.py; here is
what a client sees of it. Bad job specs and state conflicts are in test_inputs.py.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    Service,
    class_zip,
    colour_images,
    make_settings,
    make_zip,
    post_zip,
    stored_rows,
)


def still_serving(service: Service) -> None:
    assert service.client.get("/healthz").status_code == 200
    assert post_zip(service, class_zip(colour_images(per_class=2))).status_code == 201


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(side: int = 30000) -> bytes:
    """A valid PNG header for side × side pixels; Pillow must refuse it before decoding."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )


def image_bytes(image_format: str, **options: Any) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format, **options)
    return buffer.getvalue()


def test_zip_bombs_are_refused_by_what_they_inflate_to(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, max_dataset_bytes=32 * 1024 * 1024))
    try:
        png = colour_images(per_class=1)["red"][0]
        bomb = make_zip({"red/a.png": png, "blue/b.png": png})
        buffer = io.BytesIO(bomb)
        with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("red/bomb.png", b"\0" * (64 * 1024 * 1024))
        assert len(buffer.getvalue()) < 200_000
        response = post_zip(service, buffer.getvalue())
        assert response.status_code == 400 and "red/bomb.png" in response.json()["detail"]
        assert "zip bomb" in response.json()["detail"]

        # Many entries each below the ratio check: the total inflated is what counts.
        spread = io.BytesIO()
        with zipfile.ZipFile(spread, "w", zipfile.ZIP_DEFLATED) as archive:
            for number in range(40):
                archive.writestr(f"red/{number}.png", bytes([number]) * (900 * 1024))
        response = post_zip(service, spread.getvalue())
        assert response.status_code == 400 and "unpacks to more than" in response.text
        assert stored_rows(service) == (0, 0)
        still_serving(service)
    finally:
        service.close()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_bad_archives_are_400_naming_the_file_and_store_nothing(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, max_dataset_files=50_000))
    try:
        png = colour_images(per_class=1)["red"][0]
        duplicated = io.BytesIO()
        with zipfile.ZipFile(duplicated, "w") as archive:
            for name in ("red/a.png", "blue/b.png", "red/a.png"):
                archive.writestr(name, png)
        crowded = io.BytesIO()
        with zipfile.ZipFile(crowded, "w") as archive:
            for number in range(100_000):
                archive.writestr(f"red/{number}.png", b"")
        cases = [
            ("not a zip", b"this is plain text, not a zip"),
            ("at least 2 class folders", class_zip({"red": [png, png]})),
            ("'..'", make_zip({"red/a.png": png, "blue/b.png": png, "../evil.png": png})),
            ("'..'", make_zip({"red/a.png": png, "blue/b.png": png, "red/../../x.png": png})),
            ("absolute", make_zip({"red/a.png": png, "blue/b.png": png, "/etc/evil.png": png})),
            ("absolute", make_zip({"red/a.png": png, "blue/b.png": png, "/tmp/x.png": png})),
            ("twice", duplicated.getvalue()),
            ("100000 entries; the limit is 50000", crowded.getvalue()),
        ]
        for expected, content in cases:
            response = post_zip(service, content)
            assert response.status_code == 400, (expected, response.text)
            assert expected in response.json()["detail"]
            assert "up.zip" in response.json()["detail"]
        assert stored_rows(service) == (0, 0)
        assert service.client.get("/datasets").json() == []
        still_serving(service)
    finally:
        service.close()


@pytest.mark.any_database
def test_files_that_are_not_images_are_skipped_and_listed(service: Service) -> None:
    """One folder compressed with its class folders and a README beside them (the way
    people zip a folder), a few good images, and files that only look like images."""
    images = colour_images(per_class=3)
    files = {
        f"set/{label}/{n}.png": data
        for label, items in images.items()
        for n, data in enumerate(items)
    }
    jpeg = image_bytes("JPEG")
    files |= {
        "set/README.txt": b"colours, three classes",
        "set/red/photo.png": jpeg,  # a JPEG named .png is a fine image
        "set/red/ok.gif": image_bytes("GIF"),
        "set/red/broken.jpg": b"\xff\xd8\xff\xe0 truncated",
        "set/blue/notes.png": b"random bytes named png",
        "set/blue/huge.png": huge_png(),
        "set/blue/truncated.jpg": jpeg[: len(jpeg) // 2],
        "set/blue/noise.png": np.random.default_rng(1).bytes(2048),
        "set/blue/scan.tiff": image_bytes("TIFF"),
    }
    response = post_zip(service, make_zip(files))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["num_images"] == 11
    assert [(c["name"], c["count"]) for c in body["classes"]] == [
        ("blue", 3),
        ("green", 3),
        ("red", 5),
    ]
    reasons = {entry["path"]: entry["reason"] for entry in body["skipped"]}
    assert set(reasons) == {
        "set/README.txt",
        "set/red/broken.jpg",
        "set/blue/notes.png",
        "set/blue/huge.png",
        "set/blue/truncated.jpg",
        "set/blue/noise.png",
        "set/blue/scan.tiff",
    }
    assert "too large" in reasons.pop("set/blue/huge.png")
    assert "unsupported image format TIFF" in reasons.pop("set/blue/scan.tiff")
    assert all("not a decodable image" in reason for reason in reasons.values()), reasons
    assert stored_rows(service) == (1, 11)


def test_upload_over_the_limit_is_413(tmp_path: Path) -> None:
    limited = Service(make_settings(tmp_path, max_dataset_bytes=2000))
    try:
        response = post_zip(limited, class_zip(colour_images(per_class=4)))
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]
        assert stored_rows(limited) == (0, 0)
        assert limited.client.get("/healthz").json() == {"status": "ok"}
    finally:
        limited.close()


def test_bad_predict_requests(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    model_id = small_model["job"]["model_id"]
    jpeg = image_bytes("JPEG")
    for name, data, expected in [
        ("bad.png", b"nope", "not a decodable image"),
        ("huge.png", huge_png(), "too large"),
        ("cut.jpg", jpeg[: len(jpeg) // 2], "not a decodable image"),
        ("scan.png", image_bytes("TIFF"), "unsupported image format TIFF"),
    ]:
        response = client.post(
            "/predict",
            data={"model_id": model_id},
            files=[
                ("files", ("fine.jpg", jpeg, "image/png")),
                ("files", (name, data, "image/png")),
            ],
        )
        assert response.status_code == 400, response.text
        assert name in response.json()["detail"] and expected in response.json()["detail"]
    too_many = [("files", (f"{n}.jpg", jpeg, "image/jpeg")) for n in range(65)]
    response = client.post("/predict", data={"model_id": model_id}, files=too_many)
    assert response.status_code == 413 and "at most 64" in response.json()["detail"]
    unknown = client.post(
        "/predict", data={"model_id": "m_missing"}, files=[("files", ("a.png", jpeg, "image/png"))]
    )
    assert unknown.status_code == 404
    assert client.post("/predict", data={"model_id": model_id}).status_code == 422
    assert client.get("/models/m_missing/layers").status_code == 404
    assert client.get("/healthz").status_code == 200
    ok = client.post(
        "/predict", data={"model_id": model_id}, files=[("files", ("a.png", jpeg, "image/gif"))]
    )
    assert ok.status_code == 200


def test_chunked_body_over_the_limit_is_413(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, max_dataset_bytes=64 * 1024))

    def chunks() -> Iterator[bytes]:
        yield b'--edge\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        for _ in range(100):
            yield b"\0" * 4096

    try:
        response = service.client.post(
            "/datasets",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=edge"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413 and "limit" in response.json()["detail"]
        assert stored_rows(service) == (0, 0)
        still_serving(service)
    finally:
        service.close()


OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def test_every_route_but_the_open_ones_needs_the_key(tmp_path: Path) -> None:
    key = "k" * 32
    service = Service(make_settings(tmp_path, api_key=key))
    try:
        client = service.client
        # Every operation the app serves is in its OpenAPI document (none is hidden from it).
        operations = client.app.openapi()["paths"]
        checked = 0
        for template, methods in operations.items():
            path = template.replace("{", "x_").replace("}", "")
            for method in methods:
                response = client.request(method.upper(), path)
                if template in OPEN_PATHS:
                    assert response.status_code != 401, (method, template)
                    continue
                assert response.status_code == 401, (method, template, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                checked += 1
        assert checked >= 20
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        authorised = client.get("/datasets", headers={"Authorization": f"Bearer {key}"})
        assert authorised.status_code == 200
        for wrong in (f"Bearer {key[:-1]}x", "Bearer wrong", key, f"Basic {key}"):
            response = client.get("/datasets", headers={"Authorization": wrong})
            assert response.status_code == 401, wrong
    finally:
        service.close()


def test_non_ascii_credentials_are_refused_not_a_500(tmp_path: Path) -> None:
    """A header or cookie is whatever the client sends: a non-ASCII CSRF token, session
    cookie or key is wrong like any other (it once raised inside hmac.compare_digest)."""
    key = "k" * 32
    service = Service(make_settings(tmp_path, api_key=key))
    try:
        client = service.client
        assert client.post("/login", data={"api_key": "é" * 20}).status_code == 401
        assert client.post("/login", data={"api_key": key}).status_code == 200
        token = {"X-CSRF-Token": "é".encode()}
        assert client.post("/jobs", json={}, headers=token).status_code == 403
        assert client.post("/logout", headers=token).status_code == 403
        client.cookies.clear()
        forged = {"Cookie": "transfer_session=eA.é".encode()}
        assert client.get("/datasets", headers=forged).status_code == 401
        bearer = {"Authorization": "Bearer é".encode()}
        assert client.get("/datasets", headers=bearer).status_code == 401
    finally:
        service.close()


def test_cors_answers_only_the_allowed_origins(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, cors_origins=["https://app.example"]))
    try:
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = service.client.options(
            "/datasets", headers={"Origin": "https://app.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = service.client.options(
            "/datasets", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers
        simple = service.client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in simple.headers
    finally:
        service.close()
