"""An OpenAPI fuzz run (schemathesis) against the live graph: no 5xx, every answer as documented."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import AppFactory
from tests.openapi_fuzz import fuzz_openapi

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)
EXAMPLES_PER_OPERATION = 30
BUDGET_S = 300  # bounded in time whatever the machine's speed


def test_openapi_fuzz_finds_no_server_error(make_app: AppFactory, photos: dict[str, bytes]) -> None:
    url = make_app("fuzz")
    for name in ("coffee", "rocket"):  # something for the id routes to find
        files = {"file": (f"{name}.jpg", photos[name])}
        assert httpx.post(url + "/meta/image/file", files=files, timeout=60).status_code == 200
    calls, failures = fuzz_openapi(url, EXAMPLES_PER_OPERATION, BUDGET_S)
    logger.warning("openapi fuzz: %d requests over %d operations", sum(calls.values()), len(calls))
    assert not failures, "\n\n".join(failures[:5])
    assert len(calls) >= 12 and sum(calls.values()) >= 12 * 10, calls
    make_app.delete("fuzz")
