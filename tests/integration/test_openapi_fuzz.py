"""An OpenAPI fuzz run (schemathesis) against the live graph: no 5xx, every answer as documented."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import AppFactory

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 30
BUDGET_S = 300  # bounded in time whatever the machine's speed


def test_openapi_fuzz_finds_no_server_error(make_app: AppFactory, photos: dict[str, bytes]) -> None:
    url = make_app("fuzz")
    for name in ("coffee", "rocket"):  # something for the id routes to find
        files = {"file": (f"{name}.jpg", photos[name])}
        assert httpx.post(url + "/meta/image/file", files=files, timeout=60).status_code == 200
    schema = schemathesis.openapi.from_url(url + "/openapi.json", timeout=30)
    deadline = time.monotonic() + BUDGET_S
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run: a failure is reproducible
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            if time.monotonic() > deadline:
                return
            label = case.operation.label
            calls[label] = calls.get(label, 0) + 1
            try:
                case.call_and_validate(base_url=url, checks=CHECKS, timeout=60)
            except Exception as exc:  # a failed check, or a dropped connection: both count
                failures.append(f"{label}: {exc}")

        fuzz()
    logger.warning("openapi fuzz: %d requests over %d operations", sum(calls.values()), len(calls))
    assert not failures, "\n\n".join(failures[:5])
    assert len(calls) >= 12 and sum(calls.values()) >= 12 * 10, calls
    make_app.delete("fuzz")
