"""`ray job submit` backfill into the stores of a running Serve app; a manifest rerun; re-embed.

The tests run in file order on one app: the job fills its stores, the manifest run proves a
rerun indexes nothing twice, and the re-embed switches the app while searches keep running.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from image_search.config import Settings
from image_search.indexing import IndexService
from image_search.stores import open_vectors
from pipelines import backfill, reembed
from tests.pipelines.conftest import (
    JOB_MAX_PIXELS,
    SMALL,
    SMALL_POOLS,
    LiveApp,
    PhotoDir,
    as_env,
    settings_for,
    stores_for,
    submit,
)

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def search_top(client: httpx.Client, url: str, data: bytes) -> str:
    r = client.post(url + "/sample/file", files={"file": ("q.jpg", data)}, data={"limit": "1"})
    assert r.status_code == 200, r.text[:300]
    return str(r.json()["data"][0]["meta_uuid"])


def test_backfill_job_end_to_end(
    ray_cluster: dict[str, str], live_app: LiveApp, photo_dir: PhotoDir, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    env = as_env({**live_app.overrides, "limits.max_pixels": JOB_MAX_PIXELS})
    args = ["--source", str(photo_dir.root), "--report", str(report_path), *SMALL_POOLS]
    res = submit(ray_cluster["dashboard"], env, f"backfill-e2e-{uuid.uuid4().hex[:8]}", args)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-4000:]
    assert "backfill done: seen 54, indexed 50" in logs  # the summary lands in the job logs
    assert "MapBatches(EmbedStage)" in logs  # and so does Ray Data's progress

    report = json.loads(report_path.read_text())
    assert (report["seen"], report["indexed"], report["duplicates"]) == (54, 50, 0)
    assert (report["skipped"], report["failed"], report["ignored_not_image_extension"]) == (4, 0, 1)
    skipped = {
        Path(e["uri"]).relative_to(photo_dir.root).as_posix(): e["reason"].split(":")[0]
        for e in report["skipped_files"]
    }
    assert skipped == photo_dir.bad
    assert report["images_per_s"] > 0

    st = stores_for(settings_for(live_app.overrides))
    assert st.metadata.count() == 50
    assert st.vectors.count() == 50
    assert len(list(st.objects.keys("meta/image/"))) == 50
    svc = IndexService(st)
    for rel, data in photo_dir.good.items():
        rec = st.metadata.get(md5(data))  # the service's default meta_uuid
        assert rec is not None and rec.file_name == Path(rel).name
        assert st.objects.get(rec.file_path) == data
        vector = st.vectors.get([rec.milvus_id])[rec.milvus_id]
        hits = svc.search(vector, 0, 1)
        assert hits[0].record.meta_uuid == rec.meta_uuid and hits[0].distance < 1e-4, rel

    # The running service sees what the job wrote: the same bytes find themselves.
    with httpx.Client(timeout=120) as client:
        for data in list(photo_dir.good.values())[:4]:
            assert search_top(client, live_app.url, data) == md5(data)


def test_manifest_rerun_skips_known_and_reports_conflicts(
    ray_cluster: dict[str, str], live_app: LiveApp, photo_dir: PhotoDir, tmp_path: Path
) -> None:
    settings = settings_for({**live_app.overrides, "limits.max_pixels": JOB_MAX_PIXELS})
    goods = list(photo_dir.good.items())
    (a, _), (b, _), (_, dc), (d, dd) = goods[0], goods[1], goods[2], goods[3]
    rows = [
        {"path": str(photo_dir.root / a)},  # indexed already: a duplicate
        {"path": str(photo_dir.root / b), "meta_uuid": md5(dc)},  # uuid of other bytes
        {"path": str(photo_dir.root / d), "meta_uuid": "custom-d", "tags": ["x", "y"]},
        {"path": "missing/nowhere.jpg"},
        {"path": str(photo_dir.root / a), "meta_uuid": "bad uuid!"},
    ]
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")

    first = backfill.run(settings, str(photo_dir.root), SMALL)  # the folder again
    assert (first["indexed"], first["duplicates"], first["skipped"]) == (0, 50, 4)

    report = backfill.run(settings, str(manifest), SMALL)
    assert report["seen"] == 6
    assert (report["indexed"], report["duplicates"], report["conflicts"]) == (1, 1, 1)
    assert report["conflict_files"][0]["meta_uuid"] == md5(dc)
    assert report["skipped_by_reason"] == {"unreadable": 1, "bad manifest line": 1,
                                           "invalid meta_uuid": 1}  # fmt: skip
    assert report["tagged"] == 1

    st = stores_for(settings)
    assert st.metadata.count() == 51  # one new row: custom-d, sharing d's content and vector
    rec = st.metadata.get("custom-d")
    assert rec is not None and rec.sha256 == hashlib.sha256(dd).hexdigest()
    assert rec.tags == ("x", "y")  # manifest tags land in the metadata row
    assert st.vectors.count() == 50
    kept = st.metadata.get(md5(dc))
    assert kept is not None and kept.sha256 == hashlib.sha256(dc).hexdigest()  # not overwritten


def _new_image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240))
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class _SearchLoop:
    """Searches with known photos in a thread until stopped, uploading a few new images too."""

    url: str
    probes: list[bytes]
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    uploaded: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=120) as client:
            i = 0
            while not self.stop.is_set():
                data = self.probes[i % len(self.probes)]
                i += 1
                started = time.monotonic()
                try:
                    top = search_top(client, self.url, data)
                    if top != md5(data):
                        self.failures.append(f"wrong top hit {top}")
                except (httpx.HTTPError, AssertionError) as exc:
                    self.failures.append(repr(exc)[:300])
                self.latencies.append(time.monotonic() - started)
                if i % 8 == 0 and len(self.uploaded) < 4:  # new rows while the re-embed runs
                    self._upload(client)

    def _upload(self, client: httpx.Client) -> None:
        img = _new_image(len(self.uploaded))
        r = client.post(self.url + "/meta/image/file", files={"file": ("n.jpg", img)})
        if r.status_code == 200:
            self.uploaded.append(img)


@contextlib.contextmanager
def _searching(url: str, probes: list[bytes]) -> Iterator[_SearchLoop]:
    """A search loop runs in a thread for the duration of the block."""
    loop = _SearchLoop(url, probes)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop.set()
        thread.join(timeout=120)


def _assert_reembedded(settings: Settings, uploaded: list[bytes]) -> None:
    """The bf16 collection holds every image, re-embedded rather than copied."""
    st = stores_for(settings)
    bf16 = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"runtime": "torch", "precision": "bf16"})
        }
    )
    new = open_vectors(bf16, "vectors_bf16")
    contents = list(st.metadata.iter_content())
    assert new.count() == len(contents) == 50 + len(uploaded)
    # Re-embedded, not copied: torch bf16 vectors are close to the service's default ones (onnx
    # fp32, onnx int8 or openvino bf16, as the CPU decides) but not equal.
    _, mid, _ = contents[0]
    old_v, new_v = st.vectors.get([mid])[mid], new.get([mid])[mid]
    assert 0.98 < float(old_v @ new_v) < 1.0 - 1e-7


def test_reembed_switches_the_service_without_downtime(
    ray_cluster: dict[str, str], live_app: LiveApp, photo_dir: PhotoDir
) -> None:
    from ray import serve

    settings = settings_for(live_app.overrides)
    with _searching(live_app.url, list(photo_dir.good.values())[:3]) as loop:
        # runtime torch: on a CPU with bf16 instructions the default is already openvino bf16.
        report = reembed.run(settings, "efficientnet-lite0", "bf16", collection="vectors_bf16",
                             switch_app=live_app.name, opts=SMALL, runtime="torch")  # fmt: skip
    failures, latencies, uploaded = loop.failures, loop.latencies, loop.uploaded

    switch = report["switch"]
    logger.info("switch %s; %d searches, slowest %.2fs", switch, len(latencies), max(latencies))
    assert not failures, failures[:5]  # every search answered, and answered right
    assert len(latencies) >= 10, "the search loop must have run through the switch"
    # Searches wait while the Embedder is swapped; none waited longer than the swap itself.
    assert max(latencies) < switch["searches_waited_up_to_s"] + 10, (max(latencies), switch)
    assert switch["model_id"] == "efficientnet-lite0:torch-bf16"
    assert report["bulk"]["embedded"] >= 50 and report["bulk"]["failed_count"] == 0
    assert uploaded, "uploads during the re-embed must have gone through"

    embedder = serve.get_deployment_handle("Embedder", app_name=live_app.name)
    assert embedder.info.remote().result()["model_id"] == "efficientnet-lite0:torch-bf16"
    _assert_reembedded(settings, uploaded)
    with httpx.Client(timeout=120) as client:  # rows added during the switch: caught up
        for img in uploaded:
            assert search_top(client, live_app.url, img) == md5(img)
