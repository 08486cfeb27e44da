"""Fuzzing the HTTP contract: schemathesis generates requests from the OpenAPI document and
checks that no answer is a 5xx and every answer matches its documented schema. Operations that
take a body are also sent arbitrary bytes under each content type they declare: a schema only
generates well-formed bodies, and mangled ones are where error handling breaks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api.app import create_app
from service.storage.db import Database
from tests.conftest import make_settings

EXAMPLES_PER_OPERATION = 50
BINARY_EXAMPLES_PER_OPERATION = 40
BOUNDARY = "fuzzedge"

KEY = "contract-test-key-0123456789"


def fuzz_settings(examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        derandomize=True,  # the same cases every run
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def body_media_types(operation: Any) -> list[str]:
    return list(operation.definition.raw.get("requestBody", {}).get("content", {}))


def multipart_bytes(fields: list[str]) -> st.SearchStrategy[bytes]:
    """Multipart-shaped bytes, so the form parser itself is reached: a declared or arbitrary
    field name, an arbitrary file name and content, and a proper, missing or mangled end."""
    name = st.sampled_from([field.encode() for field in fields]) | st.binary(max_size=8)
    ending = st.sampled_from([f"\r\n--{BOUNDARY}--\r\n".encode(), b"", b"\r\n--"])
    return st.builds(
        lambda field, filename, content, end: (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="'.encode()
            + field
            + b'"; filename="'
            + filename
            + b'"\r\n\r\n'
            + content
            + end
        ),
        name,
        st.binary(max_size=16),
        st.binary(max_size=64),
        ending,
    )


def raw_bodies(operation: Any) -> st.SearchStrategy[tuple[str, bytes]]:
    """(Content-Type, body): arbitrary bytes under each content type the operation declares."""
    choices = []
    for media_type in body_media_types(operation):
        choices.append(st.tuples(st.just(media_type), st.binary(max_size=256)))
        if media_type.startswith("multipart/"):
            schema = operation.definition.raw["requestBody"]["content"][media_type]["schema"]
            fields = sorted(schema.get("properties", {})) or ["file"]
            with_boundary = f"{media_type}; boundary={BOUNDARY}"
            choices.append(st.tuples(st.just(with_boundary), multipart_bytes(fields)))
    return st.one_of(choices)


# Over 20 s of generated cases: CI runs it; the fast lane leaves it to CI.
@pytest.mark.slow
def test_no_operation_answers_5xx_or_off_schema(tmp_path: Path) -> None:
    # With a key, so that the documented bearer scheme is really enforced (schemathesis also
    # checks that a request with a wrong key is refused).
    settings = make_settings(tmp_path, api_key=KEY)
    Database(settings.database_url).upgrade()
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    authorised = {"Authorization": f"Bearer {KEY}"}
    cases_run = {"generated": 0, "binary": 0}
    failures = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()

        @fuzz_settings(EXAMPLES_PER_OPERATION)
        @hypothesis.given(case=operation.as_strategy())
        def generated(case: schemathesis.Case) -> None:
            cases_run["generated"] += 1
            response = case.call(headers=authorised)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            # A schema cannot say "the bytes must be a zip" or "the dataset must exist", so a
            # schema-valid request may rightly get a 400 that names the problem.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        @fuzz_settings(BINARY_EXAMPLES_PER_OPERATION)
        @hypothesis.given(case=operation.as_strategy(), raw=raw_bodies(operation))
        def binary(case: schemathesis.Case, raw: tuple[str, bytes]) -> None:
            cases_run["binary"] += 1
            content_type, case.body = raw
            # Sent as they are: schemathesis would otherwise encode them for the media type
            # and drop a bare multipart Content-Type.
            case.media_type = None
            headers = {**authorised, "Content-Type": content_type}
            response = case.call(headers=headers, data=case.body)
            assert 400 <= response.status_code < 500, (
                case.method,
                case.formatted_path,
                content_type,
                case.body,
                response.status_code,
                response.text,
            )
            assert "detail" in response.json()

        runs = [generated, binary] if body_media_types(operation) else [generated]
        for run in runs:
            try:
                run()
            except Exception as error:  # gather every operation's failure, not just the first
                failures.append(f"{operation.label} ({run.__name__}): {error}")
    print(f"schemathesis: {cases_run} cases in {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures)
    assert cases_run["generated"] >= 300 and cases_run["binary"] >= 100
