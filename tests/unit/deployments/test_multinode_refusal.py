"""Embedded stores on a cluster of several nodes: refused when the app is built, with the fix.

Ray's state is mocked: `ray.is_initialized` and `ray.nodes` answer as a cluster of N nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deployments.app import build_app
from deployments.cluster import (
    alive_nodes,
    embedded_stores,
    refuse_embedded_stores_on_multinode,
)
from image_search.config import Settings, load_settings
from image_search.errors import ConfigError
from tests.conftest import ROOT

SERVERS = {
    "stores.metadata_uri": "mysql+pymysql://ise:secret@db.internal:3306/ise",
    "stores.objects_uri": "s3://images",
    "stores.vectors_uri": "http://milvus.internal:19530",
}
EMBEDDED = {
    "stores.metadata_uri": "sqlite:////srv/ise/meta.db",
    "stores.objects_uri": "file:///srv/ise/objects",
    "stores.vectors_uri": "/srv/ise/vectors.db",
}


def settings(**overrides: Any) -> Settings:
    return load_settings(ROOT / "config.yaml", environ={}, overrides=overrides)


@pytest.fixture
def cluster_of(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """cluster_of(alive, dead=0): this process is connected to such a cluster."""
    import ray

    def set_nodes(alive: int, dead: int = 0) -> None:
        nodes = [{"NodeID": f"a{i}", "Alive": True} for i in range(alive)]
        nodes += [{"NodeID": f"d{i}", "Alive": False} for i in range(dead)]
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        monkeypatch.setattr(ray, "nodes", lambda: nodes)

    return set_nodes


def test_embedded_stores_names_each_local_store_and_only_those() -> None:
    assert embedded_stores(settings(**EMBEDDED)) == [
        "stores.metadata_uri=sqlite:////srv/ise/meta.db (SQLite)",
        "stores.objects_uri=file:///srv/ise/objects (a local folder)",
        "stores.vectors_uri=/srv/ise/vectors.db (Milvus Lite)",
    ]
    assert embedded_stores(settings(**SERVERS)) == []
    mixed = settings(**{**SERVERS, "stores.vectors_uri": "/srv/ise/vectors.db"})
    assert embedded_stores(mixed) == ["stores.vectors_uri=/srv/ise/vectors.db (Milvus Lite)"]
    # config.yaml's defaults are all three, resolved to absolute paths.
    assert len(embedded_stores(settings())) == 3


def test_alive_nodes_counts_alive_ones(cluster_of: Callable[..., None]) -> None:
    cluster_of(2, dead=3)  # a worker that died and came back is listed twice
    assert alive_nodes() == 2


def test_alive_nodes_is_none_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert alive_nodes() is None


def test_refused_on_two_nodes_with_what_to_configure(cluster_of: Callable[..., None]) -> None:
    cluster_of(2)
    with pytest.raises(ConfigError) as caught:
        refuse_embedded_stores_on_multinode(settings(**EMBEDDED))
    message = caught.value.message
    assert "refusing to start on a Ray cluster of 2 alive nodes with embedded stores" in message
    for line in embedded_stores(settings(**EMBEDDED)):
        assert line in message
    for instead in ("stores.metadata_uri=mysql+pymysql://", "stores.objects_uri=s3://BUCKET",
                    "stores.s3_endpoint", "stores.vectors_uri=http://HOST:19530",
                    "ISE__STORES__VECTORS_URI", "docs/multinode.md"):  # fmt: skip
        assert instead in message


def test_one_embedded_store_is_enough_to_refuse(cluster_of: Callable[..., None]) -> None:
    cluster_of(3)
    mixed = settings(**{**SERVERS, "stores.objects_uri": "file:///srv/ise/objects"})
    with pytest.raises(ConfigError, match="of 3 alive nodes") as caught:
        refuse_embedded_stores_on_multinode(mixed)
    assert "SQLite" not in caught.value.message and "(a local folder)" in caught.value.message


@pytest.mark.parametrize("alive", [None, 0, 1])
def test_one_node_or_no_cluster_keeps_embedded_stores(alive: int | None) -> None:
    refuse_embedded_stores_on_multinode(settings(**EMBEDDED), count_nodes=lambda: alive)


def test_server_stores_start_on_any_number_of_nodes(cluster_of: Callable[..., None]) -> None:
    cluster_of(5)
    refuse_embedded_stores_on_multinode(settings(**SERVERS))
    app = build_app({"config": str(ROOT / "config.yaml"), "overrides": SERVERS})
    assert app._bound_deployment.name == "Ingress"


def test_build_app_refuses_before_binding_anything(cluster_of: Callable[..., None]) -> None:
    cluster_of(2, dead=1)
    with pytest.raises(ConfigError, match="of 2 alive nodes"):
        build_app({"config": str(ROOT / "config.yaml"), "overrides": EMBEDDED})
    cluster_of(1, dead=1)  # the worker is gone: a single machine may use them again
    assert build_app({"config": str(ROOT / "config.yaml"), "overrides": EMBEDDED})


def test_a_job_on_several_nodes_refuses_embedded_stores(cluster_of: Callable[..., None]) -> None:
    """Jobs join the cluster through ensure_ray: the same refusal, before any task writes."""
    from pipelines.runtime import ensure_ray

    cluster_of(2)
    with pytest.raises(ConfigError, match="embedded stores"):
        ensure_ray(None, settings(**EMBEDDED))
    ensure_ray(None, settings(**SERVERS))  # server stores: joins as before
    cluster_of(1)
    ensure_ray(None, settings(**EMBEDDED))  # one node: embedded stores are fine
