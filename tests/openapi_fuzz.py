"""The OpenAPI fuzz run (schemathesis) that the live-graph tests share: every operation the
schema lists, generated cases, no 5xx and every answer as documented, bounded in time."""

from __future__ import annotations

import time

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz_openapi(url: str, examples: int, budget_s: float) -> tuple[dict[str, int], list[str]]:
    """(requests per operation, failures) of a fuzz run against the app at `url`."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json", timeout=30)
    deadline = time.monotonic() + budget_s
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples,
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
    return calls, failures
