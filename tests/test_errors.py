"""Error answers for hostile bytes: whatever a client sends, the answer is a 4xx that renders,
never a 5xx (an error response that itself fails to render is a 500)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.storage.db import Database
from tests.conftest import make_settings

BOUNDARY = "edge"
# Bytes that are not UTF-8, NUL bytes, and JSON-looking bytes with both inside.
RAW_BODIES = [
    b"\xff\xfe\x66\x80\x70\x25",
    b"\x00" * 16,
    b'{"model_id": "\x00\xff", "instances": [{"b64": "\x80"}]}',
    b'{"dataset_id": "\xc3\x28"}',
    b"\xed\xa0\x80",  # an encoded lone surrogate
]
# Multipart bodies: cut off mid-part, non-UTF-8 names and values, a part without headers.
MULTIPART_BODIES = [
    b'--edge\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK\x03',
    b'--edge\r\nContent-Disposition: form-data; name="model_id"\r\n\r\n'
    b"\xff\xfe\x80\r\n--edge--\r\n",
    b'--edge\r\nContent-Disposition: form-data; name="\xff\x00"; filename="\xff.png"\r\n\r\n'
    b"\x89PNG\x00\r\n--edge--\r\n",
    b"--edge\r\n\r\n\xff\xfe\r\n--edge--\r\n",
    b"--edge--\xff",
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path)
    Database(settings.database_url).upgrade()
    # Server errors come back as 500 answers, so the test can name every one of them.
    with TestClient(create_app(settings), raise_server_exceptions=False) as running:
        yield running


def operations_with_bodies(client: TestClient) -> Iterator[tuple[str, str, str]]:
    """(method, path with its parameters filled in, content type) for each declared body."""
    for path, item in client.app.openapi()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x_0123", path)
        for method, operation in item.items():
            for content_type in operation.get("requestBody", {}).get("content", {}):
                yield method.upper(), concrete, content_type


def bodies_for(content_type: str) -> Iterator[tuple[str, bytes]]:
    """Each raw body sent as this content type; multipart ones also with a boundary."""
    for body in RAW_BODIES:
        yield content_type, body
    if content_type.startswith("multipart/"):
        for body in MULTIPART_BODIES + RAW_BODIES:
            yield f"{content_type}; boundary={BOUNDARY}", body


def test_binary_bodies_to_every_operation_are_4xx(client: TestClient) -> None:
    operations = list(operations_with_bodies(client))
    assert {path for _, path, _ in operations} >= {"/predict", "/jobs", "/datasets"}
    failures = []
    for method, path, content_type in operations:
        for sent_type, body in bodies_for(content_type):
            response = client.request(
                method, path, content=body, headers={"Content-Type": sent_type}
            )
            if not 400 <= response.status_code < 500:
                failures.append(f"{method} {path} [{sent_type}] {body!r}: {response.status_code}")
            else:
                assert "detail" in response.json(), (method, path, response.text)
    assert not failures, "\n".join(failures)
    assert client.get("/healthz").status_code == 200
    assert client.get("/backbones").status_code == 200


def test_invalid_json_to_predict_is_a_422_that_renders(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=b"\xff\xfe\x66\x80\x70\x25",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"][0] == "body"
    assert isinstance(error["input"], str)


def test_unrenderable_values_in_a_json_body_are_422(client: TestClient) -> None:
    # A lone surrogate escape is valid JSON that no UTF-8 answer can echo back as is.
    for body in [
        b'{"dataset_id": ["\\ud800"]}',
        b'{"dataset_id": "d_1", "backbone": {"name": "\\udfff"}}',
    ]:
        response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
    response = client.post(
        "/predict",
        content=b'{"model_id": ["\\ud800"], "instances": []}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert client.get("/healthz").status_code == 200


def test_chunked_predict_upload_over_the_limit_is_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_predict_bytes=64 * 1024)
    Database(settings.database_url).upgrade()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is met while parsing
        yield b'--edge\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        for _ in range(100):
            yield b"\0" * 4096

    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/predict",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert response.status_code == 413, response.text
        assert "limit" in response.json()["detail"]
