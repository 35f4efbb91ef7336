"""The service and a backfill job across two Ray nodes, and the loss of the worker node.

The tests run in file order on one cluster: the refusal first (before the service is deployed
under the same name), the worker's loss last (the worker does not come back).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from image_search.config import Settings
from image_search.stores import open_metadata, open_vectors
from tests.conftest import ROOT
from tests.multinode.cluster import state
from tests.multinode.conftest import TwoNodes, app_args, wait_alive_nodes, write_images
from tests.multinode.layout import placed_config, write_config
from tests.multinode.serving import APP, deploy, wait_app
from tests.pipelines.conftest import as_env, submit, wait_job
from tests.servers import MariaDB

pytestmark = [pytest.mark.integration, pytest.mark.servers, pytest.mark.slow, pytest.mark.multinode]
logger = logging.getLogger(__name__)

JOB_IMAGES = 256  # the backfill: 8 blocks of 32 rows, about 4 per node
# Small batches, two embed actors (one lands on each node: Ray Data spreads its actors and
# tasks), a CPU quota for each stage that fits on either node alone.
JOB_POOLS = ["--batch-size", "8", "--embed-actors", "2", "--embed-cpus", "0.5",
             "--decode-cpus", "0.5", "--write-cpus", "0.1"]  # fmt: skip
REPLICA = f"ServeReplica:{APP}:"
# Ray Data shrinks an actor pool whose actors are not all busy, and here the decode stage, not
# the embedder, sets the pace (2 shared cores, where a real cluster has cores per node): it
# would drop one of the two embed actors before the decoded blocks pile up. The job keeps both,
# so that each node's decoded blocks go to the embed actor next to them (Ray Data's locality).
KEEP_EMBED_ACTORS = {"RAY_DATA_DEFAULT_ACTOR_POOL_UTIL_DOWNSCALING_THRESHOLD": "-1"}


def job_env(overrides: dict[str, Any]) -> dict[str, str]:
    return {**as_env(overrides), **KEEP_EMBED_ACTORS}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def new_image(seed: int) -> bytes:
    """A random picture no other test uploads: nothing else is near it in the index."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize((320, 240)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def upload(client: httpx.Client, url: str, data: bytes) -> None:
    r = client.post(url + "/meta/image/file", files={"file": ("n.jpg", data)})
    assert r.status_code == 200, r.text[:300]


def search_top(client: httpx.Client, url: str, data: bytes) -> str:
    r = client.post(url + "/sample/file", files={"file": ("q.jpg", data)}, data={"limit": "1"})
    assert r.status_code == 200, r.text[:300]
    return str(r.json()["data"][0]["meta_uuid"])


def replica_nodes(nodes: TwoNodes) -> dict[str, list[str]]:
    """Deployment name -> node ids of its alive replicas, from Ray's state API."""
    out: dict[str, list[str]] = {}
    for actor in state(nodes.cluster, "actors", filters=[("state", "=", "ALIVE")]):
        if actor["class_name"].startswith(REPLICA):
            out.setdefault(actor["class_name"].removeprefix(REPLICA), []).append(actor["node_id"])
    return out


def job_tasks(nodes: TwoNodes, submission_id: str) -> list[dict[str, Any]]:
    from ray.job_submission import JobSubmissionClient

    job_id = JobSubmissionClient(nodes.cluster.dashboard).get_job_info(submission_id).job_id
    assert job_id, f"job {submission_id} has no Ray job id"
    return state(nodes.cluster, "tasks", filters=[("job_id", "=", job_id)], detail=True)


# Ray Data's task names: the decode stage's tasks, and the calls on the embed stage's actors.
DECODE = "MapBatches(read_batch)"
EMBED = "MapWorker(MapBatches(EmbedStage)).submit"
WRITE = "MapWorker(MapBatches(WriteStage)).submit"


def stage_nodes(tasks: list[dict[str, Any]], name: str) -> set[str]:
    """Nodes where tasks of one kind finished."""
    return {t["node_id"] for t in tasks if t["name"] == name and t["state"] == "FINISHED"}


def counts(settings: Settings) -> tuple[int, int]:
    """(metadata rows, vectors), read from MariaDB and the Milvus server directly."""
    return open_metadata(settings).count(), open_vectors(settings).count()


def test_embedded_stores_are_refused_on_two_nodes(two_nodes: TwoNodes, tmp_path: Path) -> None:
    data = tmp_path / "embedded"
    embedded = {
        "stores.metadata_uri": f"sqlite:///{data}/meta.db",
        "stores.objects_uri": f"file://{data}/objects",
        "stores.vectors_uri": f"{data}/vectors.db",
    }
    doc = placed_config(ROOT / "serve_config.yaml", two_nodes.http_port, app_args(embedded))
    deploy(two_nodes.cluster, write_config(doc, tmp_path / "serve_embedded.yaml"))
    status = wait_app(two_nodes.cluster, APP, timeout=180)
    assert status["status"] == "DEPLOY_FAILED", str(status)[:2000]
    message = status["message"]
    logger.info("refusal: %s", message[-1500:])
    assert "refusing to start on a Ray cluster of 2 alive nodes with embedded stores" in message
    for key, value in embedded.items():
        assert f"{key}={value}" in message
    for kind in ("(SQLite)", "(a local folder)", "(Milvus Lite)"):
        assert kind in message
    # ...and what to configure instead.
    for instead in ("mysql+pymysql://", "s3://BUCKET", "http://HOST:19530", "docs/multinode.md"):
        assert instead in message
    assert not data.exists(), "no replica may have opened an embedded store"


def test_replicas_span_both_nodes_and_serve(two_nodes: TwoNodes, mn_app: str) -> None:
    placed = replica_nodes(two_nodes)
    logger.info("replicas: %s (head %s, worker %s)",
                {k: [n[:8] for n in v] for k, v in placed.items()},
                two_nodes.head_id[:8], two_nodes.worker_id[:8])  # fmt: skip
    head, worker = two_nodes.head_id, two_nodes.worker_id
    assert placed["Ingress"] == [head]
    assert placed["Indexer"] == [head]
    assert placed["Decoder"] and set(placed["Decoder"]) == {head}
    assert sorted(placed["Embedder"]) == sorted([head, worker])

    images = [new_image(1000 + i) for i in range(6)]
    with httpx.Client(timeout=120) as client:
        for data in images:
            upload(client, mn_app, data)
        for data in images:
            assert search_top(client, mn_app, data) == md5(data)


@dataclass
class ServiceLoop:
    """Clients that each upload a new image and search for it, again and again, each in a
    thread; records every outcome."""

    url: str
    # Two, so that one request held by the lost node (answered 503 only at the service's
    # limits.graph_timeout_s) does not hide whether the service kept answering. Six caught
    # such a request in two of three runs, but in CI starved the job: it did not reach both
    # nodes within 300 s.
    clients: int = 2
    # (monotonic time at the end, "" or the error, seconds the upload and search took)
    outcomes: list[tuple[float, str, float]] = field(default_factory=list)
    attempted: list[bytes] = field(default_factory=list, repr=False)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _next_image(self) -> bytes | None:
        with self._lock:
            if self.stop.is_set() or len(self.attempted) >= 2000:
                return None
            data = new_image(50_000 + len(self.attempted))
            self.attempted.append(data)
            return data

    def run(self) -> None:
        """One client's loop."""
        with httpx.Client(timeout=60) as client:
            while (data := self._next_image()) is not None:
                started = time.monotonic()
                try:
                    upload(client, self.url, data)
                    top = search_top(client, self.url, data)
                    error = "" if top == md5(data) else f"wrong top hit {top}"
                except (httpx.HTTPError, AssertionError) as exc:
                    error = repr(exc)[:300]
                now = time.monotonic()
                self.outcomes.append((now, error, now - started))
                self.stop.wait(0.2)  # a steady trickle, not a load test

    def ok_between(self, start: float, end: float) -> int:
        return sum(1 for t, e, _ in self.outcomes if start <= t <= end and not e)

    def errors_after(self, start: float) -> list[str]:
        return [e for t, e, _ in self.outcomes if t >= start and e]

    def slowest_after(self, start: float) -> float:
        return max((s for t, _, s in self.outcomes if t >= start), default=0.0)

    def around(self, start: float, end: float) -> list[str]:
        """Each outcome that ended in [start, end] or was under way then, for a failure's
        message: relative end time, seconds taken, and the error if any."""
        return [f"t={t - start:+.1f}s took {took:.1f}s {e or 'ok'}"
                for t, e, took in self.outcomes if t >= start and t - took <= end]  # fmt: skip


@contextlib.contextmanager
def service_loop(url: str) -> Iterator[ServiceLoop]:
    """A ServiceLoop's clients run in threads for the duration of the block."""
    loop = ServiceLoop(url)
    threads = [threading.Thread(target=loop.run, daemon=True, name=f"service-loop-{i}")
               for i in range(loop.clients)]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        yield loop
    finally:
        loop.stop.set()
        for thread in threads:
            thread.join(timeout=120)


def backfilled(mariadb: MariaDB, settings: Settings, prefix: str) -> int:
    """Rows the job has committed so far: its files are named PREFIX_NNNN.jpg, uploads not."""
    database = settings.stores.metadata_uri.rsplit("/", 1)[1].split("?", 1)[0]
    rows = mariadb.sql(f"SELECT COUNT(*) FROM image WHERE file_name LIKE '{prefix}\\_%'",
                       db=database)  # fmt: skip
    return int(rows[0][0])


def wait_both_nodes_busy(
    nodes: TwoNodes, job: str, written: Callable[[], int], timeout: float
) -> list[dict[str, Any]]:
    """Poll until decode and embed tasks finished on both nodes and the writer committed rows.

    Then the worker's embed actor holds the model and more of its blocks are in flight, and the
    rows written so far are met again by batches retried after the loss. Returns the tasks.
    """
    both = {nodes.head_id, nodes.worker_id}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the job may not have a Ray job id yet
            tasks = job_tasks(nodes, job)
            on_both = stage_nodes(tasks, DECODE) == both == stage_nodes(tasks, EMBED)
            if on_both and written() > 0:
                return tasks
        time.sleep(0.5)
    raise TimeoutError(f"the job did not get going on both nodes within {timeout}s")


@dataclass
class WorkerLoss:
    """One backfill that loses the worker node midway, and what was seen around it."""

    images: list[bytes] = field(repr=False)  # bytes would bury a failure's message
    rows0: int  # metadata rows before the job
    tasks_before: list[dict[str, Any]] = field(repr=False)  # the job's tasks before the kill
    tasks: list[dict[str, Any]] = field(repr=False)  # ...and once it ended
    written_at_kill: int
    killed_at: float  # time.monotonic()
    dead_at: float  # the worker was reported dead
    dead_wall: float  # the same instant, time.time()
    done_at: float
    status: str
    logs: str = field(repr=False)
    report: dict[str, Any]
    loop: ServiceLoop


@pytest.fixture(scope="module")
def worker_loss(
    two_nodes: TwoNodes, mn_app: str, mn_overrides: dict[str, Any], mn_settings: Settings,
    sources: list[bytes], mariadb: MariaDB, tmp_path_factory: pytest.TempPathFactory,
) -> WorkerLoss:  # fmt: skip
    """A backfill job over both nodes (`ray job submit`), the worker's raylet killed midway.

    Uploads and searches run against the service all the while.
    """
    from ray.job_submission import JobSubmissionClient

    dashboard = two_nodes.cluster.dashboard
    images = sources[:JOB_IMAGES]
    tmp = tmp_path_factory.mktemp("worker-loss")
    src = write_images(tmp / "photos", images, "job")
    report_path = tmp / "report.json"
    rows0 = open_metadata(mn_settings).count()
    job = f"mn-backfill-{uuid.uuid4().hex[:8]}"
    args = ["--source", str(src), "--report", str(report_path), *JOB_POOLS]

    def written() -> int:
        return backfilled(mariadb, mn_settings, "job")

    with service_loop(mn_app) as loop:
        res = submit(dashboard, job_env(mn_overrides), job, args, wait=False)
        assert res.returncode == 0, res.stderr[-3000:]
        tasks_before = wait_both_nodes_busy(two_nodes, job, written, timeout=300)
        killed_at = time.monotonic()
        pid = two_nodes.cluster.kill_raylet(two_nodes.worker)
        written_at_kill = written()
        logger.info("killed the worker's raylet (pid %d); %d/%d images written by then", pid,
                    written_at_kill, JOB_IMAGES)  # fmt: skip
        wait_alive_nodes(two_nodes.cluster, 1, timeout=120)
        dead_at, dead_wall = time.monotonic(), time.time()
        status = wait_job(dashboard, job, timeout=420)
        done_at = time.monotonic()
    client = JobSubmissionClient(dashboard)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    loss = WorkerLoss(images, rows0, tasks_before, job_tasks(two_nodes, job), written_at_kill,
                      killed_at, dead_at, dead_wall, done_at, status, client.get_job_logs(job),
                      report, loop)  # fmt: skip
    # WARNING, so that a CI log (which shows warnings live) keeps the figures of every run.
    logger.warning("worker loss: %s", {
        "node_dead_after_s": round(dead_at - killed_at, 1),
        "job_done_after_kill_s": round(done_at - killed_at, 1),
        "written_at_kill": written_at_kill,
        "report": {k: report.get(k) for k in ("indexed", "duplicates", "failed", "elapsed_s")},
        "service_ok_kill_to_dead": loop.ok_between(killed_at, dead_at),
        "service_ok_dead_to_done": loop.ok_between(dead_at, done_at),
        "service_errors": loop.errors_after(killed_at)[:5],
        "service_slowest_after_kill_s": round(loop.slowest_after(killed_at), 2),
    })  # fmt: skip
    return loss


def test_backfill_job_runs_on_both_nodes(two_nodes: TwoNodes, worker_loss: WorkerLoss) -> None:
    both = {two_nodes.head_id, two_nodes.worker_id}
    before = worker_loss.tasks_before
    assert stage_nodes(before, DECODE) == both, "decode tasks ran on one node only"
    assert stage_nodes(before, EMBED) == both, "embed tasks ran on one node only"
    assert 0 < worker_loss.written_at_kill < JOB_IMAGES, "the loss must come mid-job"


def test_job_finishes_on_the_head_with_each_image_once(
    two_nodes: TwoNodes, worker_loss: WorkerLoss, mn_app: str, mn_settings: Settings
) -> None:
    loss = worker_loss
    assert loss.status == "SUCCEEDED", loss.logs[-4000:]
    # Every task that finished once the worker was reported dead ran on the head, among them
    # the embed stage's (its actor restarted there) and the writer's.
    late = [
        t
        for t in loss.tasks
        if t["name"] in (DECODE, EMBED, WRITE)
        and t["state"] == "FINISHED"
        and (t["end_time_ms"] or 0) / 1000 > loss.dead_wall
    ]
    assert {t["node_id"] for t in late} == {two_nodes.head_id}
    assert {EMBED, WRITE} <= {t["name"] for t in late}
    # Each image exactly once: a batch retried after the loss finds its rows (duplicates).
    report = loss.report
    assert report["indexed"] + report["duplicates"] == JOB_IMAGES
    assert report["failed"] == report["conflicts"] == report["skipped"] == 0
    metadata = open_metadata(mn_settings)
    assert all(metadata.get(md5(data)) is not None for data in loss.images)
    uploaded = sum(1 for data in loss.loop.attempted if metadata.get(md5(data)))
    rows, vectors = counts(mn_settings)
    assert rows == loss.rows0 + JOB_IMAGES + uploaded
    assert vectors == rows  # one vector per distinct content, none twice
    with httpx.Client(timeout=120) as client:  # the service finds what the job wrote
        for data in loss.images[:: JOB_IMAGES // 4]:
            assert search_top(client, mn_app, data) == md5(data)


def test_service_answers_through_the_loss(
    two_nodes: TwoNodes, worker_loss: WorkerLoss, mn_app: str, mn_settings: Settings
) -> None:
    loss, loop = worker_loss, worker_loss.loop
    # Uploads and searches went on while Ray noticed the loss and while the job recovered.
    window = loop.around(loss.killed_at, loss.dead_at)
    assert loop.ok_between(loss.killed_at, loss.dead_at) > 0, window
    assert loop.ok_between(loss.dead_at, loss.done_at) > 0, loop.around(loss.dead_at, loss.done_at)
    # None begun once the worker was known dead failed. One under way on the worker when it
    # died may wait for it, but only up to limits.graph_timeout_s, and then gets a 503 to retry
    # (deployments.flows.bounded; before it, one such request was still waiting 60 s later).
    begun_after = [e for t, e, took in loop.outcomes if t - took > loss.dead_at and e]
    assert not begun_after, begun_after[:5]
    since_kill = [e for t, e, _ in loop.outcomes if t >= loss.killed_at and e]
    assert all("retry shortly" in e for e in since_kill), since_kill[:5]
    slowest, bound = loop.slowest_after(loss.killed_at), mn_settings.limits.graph_timeout_s
    assert slowest <= bound + 15, loop.around(loss.killed_at, loss.done_at)
    # The head's Embedder serves alone: its twin cannot come back on the head (one per node).
    assert replica_nodes(two_nodes)["Embedder"] == [two_nodes.head_id]
    with httpx.Client(timeout=120) as client:
        for seed in range(3):
            data = new_image(90_000 + seed)
            upload(client, mn_app, data)
            assert search_top(client, mn_app, data) == md5(data)
