"""Fuzzing the HTTP contract: schemathesis generates requests from the OpenAPI document and
checks that no answer is a 5xx and every answer matches its documented schema."""

from __future__ import annotations

from pathlib import Path

import hypothesis
import schemathesis
from hypothesis import HealthCheck
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api.app import create_app
from service.storage.db import Database
from tests.conftest import make_settings

EXAMPLES_PER_OPERATION = 25


KEY = "contract-test-key-0123456789"


def test_no_operation_answers_5xx_or_off_schema(tmp_path: Path) -> None:
    # With a key, so that the documented bearer scheme is really enforced (schemathesis also
    # checks that a request with a wrong key is refused).
    settings = make_settings(tmp_path, api_key=KEY)
    Database(settings.database_url).upgrade()
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    cases_run = 0
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,  # the same cases every run
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            nonlocal cases_run
            cases_run += 1
            response = case.call(headers={"Authorization": f"Bearer {KEY}"})
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            # A schema cannot say "the bytes must be a zip" or "the dataset must exist", so a
            # schema-valid request may rightly get a 400 that names the problem.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Exception as error:  # gather every operation's failure, not just the first
            failures.append(f"{operation.label}: {error}")
    print(f"schemathesis: {cases_run} cases")
    assert not failures, "\n\n".join(failures)
    assert cases_run >= 100
