"""A two-node Ray cluster of our own, the server stores, and the service deployed across both.

Nothing here asks for the session's `ray_cluster`: on a 2-core machine one extra cluster is
already heavy, so ours is small (HEAD_CPUS and WORKER_CPUS are scheduling quotas, not cores)
and lives only while this package's tests run.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.photos import distinct_images
from image_search.config import Settings
from tests.conftest import ROOT, free_port, wait_http
from tests.multinode.cluster import WORKER_RESOURCE, LocalCluster, Node, state
from tests.multinode.layout import placed_config, write_config
from tests.multinode.serving import APP, deploy, wait_app
from tests.pipelines.conftest import settings_for
from tests.servers import MariaDB, MilvusServer, MotoS3

logger = logging.getLogger(__name__)

# Room for the service's head replicas (about 1.2 CPUs), a job's embed actor, writer and decode
# tasks, and the worker's embed actor once the worker is gone.
HEAD_CPUS = 4
# The worker's Embedder replica (0.5), an embed actor and decode tasks.
WORKER_CPUS = 3
# Sources: distinct real-photo crops, 320 px wide (decoding stays cheap next to embedding).
IMAGE_WIDTH = 320
SOURCE_IMAGES = 256


@dataclass
class TwoNodes:
    cluster: LocalCluster
    head: Node
    worker: Node
    head_id: str
    worker_id: str
    http_port: int


def wait_alive_nodes(cluster: LocalCluster, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    alive: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alive = [n for n in state(cluster, "nodes") if n["state"] == "ALIVE"]
        if len(alive) == count:
            return alive
        time.sleep(0.5)
    raise TimeoutError(f"{len(alive)} alive nodes after {timeout}s, expected {count}")


@pytest.fixture(scope="package")
def two_nodes(mn_overrides: dict[str, Any]) -> Iterator[TwoNodes]:
    """`ray start --head` plus a worker node with the `worker_node` resource, on 127.0.0.1.

    Asks for the stores only so that they outlive the cluster: replicas never see them dropped.
    """
    # A short base under /tmp: Ray's unix sockets live in the temp dirs (108-byte paths).
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="ray-mn-", dir="/tmp")))
    try:
        started = time.monotonic()
        head = cluster.start_head(HEAD_CPUS)
        worker = cluster.add_worker("worker", WORKER_CPUS, {WORKER_RESOURCE: 1})
        nodes = wait_alive_nodes(cluster, 2, timeout=60)
        head_id = next(n["node_id"] for n in nodes if n["is_head_node"])
        worker_id = next(n["node_id"] for n in nodes if WORKER_RESOURCE in n["resources_total"])
        assert head_id != worker_id
        logger.info("two nodes up in %.1fs: head %s, worker %s", time.monotonic() - started,
                    head_id[:8], worker_id[:8])  # fmt: skip
        yield TwoNodes(cluster, head, worker, head_id, worker_id, free_port())
    finally:
        cluster.stop()


@pytest.fixture(scope="package")
def mn_overrides(
    production_overrides: dict[str, Any],
    mariadb: MariaDB,
    s3_server: MotoS3,
    milvus_server: MilvusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The server stores, with a database, bucket and collection of this package's own.

    Other packages count rows in the shared ones; ours are dropped at the end.
    """
    for server in (mariadb, s3_server, milvus_server):
        server.ensure_running()
    tag = uuid.uuid4().hex[:8]
    database, collection, bucket = f"multinode_{tag}", f"multinode_{tag}", f"ise-mn-{tag}"
    overrides = {
        **production_overrides,
        "stores.metadata_uri": mariadb.create_database(database),
        "stores.collection": collection,
        "stores.objects_uri": f"s3://{bucket}",
        # The session's model cache (make_app's): an ONNX graph built once serves every test.
        "model.cache_dir": str(tmp_path_factory.getbasetemp() / "models"),
    }
    try:
        yield overrides
    finally:
        _drop(mariadb, database, milvus_server, collection, s3_server, bucket)


def _drop(mariadb: MariaDB, database: str, milvus: MilvusServer, collection: str, s3: MotoS3,
          bucket: str) -> None:  # fmt: skip
    from minio.deleteobjects import DeleteObject
    from pymilvus import MilvusClient

    try:
        mariadb.sql(f"DROP DATABASE IF EXISTS `{database}`")
        client = MilvusClient(uri=milvus.uri, timeout=10)
        try:
            client.drop_collection(collection)
        finally:
            client.close()
        minio = s3.client()
        if minio.bucket_exists(bucket):
            keys = [DeleteObject(o.object_name) for o in minio.list_objects(bucket, recursive=True)]
            for error in minio.remove_objects(bucket, keys):
                logger.warning("could not delete %s", error)
            minio.remove_bucket(bucket)
    except Exception:
        # A server a fault test left down: the data lives in the session's temp dir anyway.
        logger.exception("cleaning up the multinode stores failed")


@pytest.fixture(scope="package")
def mn_settings(mn_overrides: dict[str, Any]) -> Settings:
    return settings_for(mn_overrides)


def app_args(overrides: dict[str, Any]) -> dict[str, Any]:
    return {"config": str(ROOT / "config.yaml"), "overrides": overrides}


@pytest.fixture(scope="package")
def mn_app(
    two_nodes: TwoNodes, mn_overrides: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The service deployed by `serve deploy` from the placed copy of serve_config.yaml."""
    doc = placed_config(ROOT / "serve_config.yaml", two_nodes.http_port, app_args(mn_overrides))
    path = write_config(doc, tmp_path_factory.mktemp("multinode-serve") / "serve_config.yaml")
    started = time.monotonic()
    deploy(two_nodes.cluster, path)
    status = wait_app(two_nodes.cluster, APP, timeout=420)
    assert status["status"] == "RUNNING", str(status)[:3000]
    url = f"http://127.0.0.1:{two_nodes.http_port}"
    wait_http(url + "/readyz", timeout=120)
    logger.info("service running on both nodes in %.1fs", time.monotonic() - started)
    # Stopped with the cluster: the package's last fixture to go is two_nodes.
    return url


@pytest.fixture(scope="package")
def sources() -> list[bytes]:
    images = distinct_images(SOURCE_IMAGES, size=IMAGE_WIDTH)
    assert len(set(images)) == SOURCE_IMAGES, "source images must differ"
    return images


def write_images(root: Path, images: list[bytes], prefix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(images):
        sub = root / f"part{i % 3}"  # the folder walk is recursive
        sub.mkdir(exist_ok=True)
        (sub / f"{prefix}_{i:04d}.jpg").write_bytes(data)
    return root
