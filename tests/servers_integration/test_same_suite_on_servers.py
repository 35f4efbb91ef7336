"""The embedded stores' HTTP integration suite (tests/integration/test_api.py), run unchanged
against the app on MariaDB + S3 + a Milvus server: one suite, both kinds of backends."""

from __future__ import annotations

import pytest

from tests.integration import test_api as embedded_suite

pytestmark = [pytest.mark.servers, pytest.mark.integration]

# Tied to the embedded deployment itself (it looks up the Serve app by the name "embedded"),
# not to the stores, so it has nothing to add here.
EMBEDDED_ONLY = {"test_indexer_refuses_vectors_from_another_model"}


@pytest.fixture
def app_url(prod_app: str) -> str:
    """The suite's app, swapped for the one on the servers."""
    return prod_app


# The suite's tests and its own module fixtures (e.g. `client`), collected here as well.
for _name, _obj in vars(embedded_suite).items():
    if _name in EMBEDDED_ONLY or _name == "app_url":
        continue
    if _name.startswith("test_") or type(_obj).__name__ == "FixtureFunctionDefinition":
        globals()[_name] = _obj
