"""Fixtures for the Ray Data jobs: a folder of real photos, per-test stores, `ray job submit`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from image_search.config import Settings, load_settings
from image_search.stores import Stores, open_stores
from pipelines.options import PoolOptions
from tests.conftest import ROOT, VENV_BIN, AppFactory, embedded_overrides

# The job's own limit, low enough that a cheap 5000x5000 PNG trips it.
JOB_MAX_PIXELS = 20_000_000
# No stage asks Ray for a CPU: the session's cluster has 2 logical CPUs, and the Serve apps of
# the other integration tests (app_url, make_app) reserve all of them for the whole session.
SMALL_POOLS = ["--batch-size", "8", "--embed-cpus", "0", "--decode-cpus", "0", "--write-cpus", "0"]
SMALL = PoolOptions(batch_size=8, embed_cpus=0, decode_cpus=0, write_cpus=0)


@dataclass
class PhotoDir:
    root: Path
    good: dict[str, bytes]  # relative path -> bytes of the distinct, valid images
    bad: dict[str, str]  # relative path -> expected skip code


def _derive(photos: dict[str, bytes], count: int) -> dict[str, bytes]:
    """`count` distinct images from the 20 real photos: flips and crops at several scales."""
    out: dict[str, bytes] = {}
    for variant in range(16):
        for name, jpeg in sorted(photos.items()):
            if len(out) == count:
                return out
            img = Image.open(io.BytesIO(jpeg)).convert("RGB")
            if variant % 2:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if variant >= 2:
                w, h = img.size
                f = 1.0 - 0.07 * (variant // 2)
                img = img.crop((0, 0, int(w * f), int(h * f)))
            fmt = "PNG" if variant == 1 and name < "d" else "JPEG"
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            sub = "sub/" if variant % 3 == 2 else ""  # the folder walk is recursive
            out[f"{sub}{name}_{variant}.{fmt.lower().replace('jpeg', 'jpg')}"] = buf.getvalue()
    return out


def make_photo_dir(root: Path, photos: dict[str, bytes], count: int, bad: bool) -> PhotoDir:
    good = _derive(photos, count)
    assert len({hash(v) for v in good.values()}) == count, "derived images must differ"
    bad_files: dict[str, str] = {}
    if bad:
        huge = io.BytesIO()
        Image.new("RGB", (5000, 5000), (200, 10, 10)).save(huge, format="PNG")
        contents = {
            "bad/truncated.jpg": (photos["astronaut"][:500], "invalid"),
            "bad/random.png": (np.random.default_rng(0).bytes(3000), "unsupported"),
            "bad/empty.webp": (b"", "invalid"),
            "bad/huge.png": (huge.getvalue(), "too_large"),
        }
        for rel, (data, code) in contents.items():
            bad_files[rel] = code
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        (root / "notes.txt").write_text("not an image: ignored by extension")
    for rel, data in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return PhotoDir(root, good, bad_files)


@pytest.fixture(scope="session")
def photo_dir(photos: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> PhotoDir:
    """50 distinct real images (two folder levels, JPEG and PNG) plus 4 bad files."""
    return make_photo_dir(tmp_path_factory.mktemp("photos50"), photos, 50, bad=True)


# -- stores ---------------------------------------------------------------------------------------
def store_overrides(data: Path) -> dict[str, Any]:
    """The same overrides make_app uses: every store under `data`, a private Milvus Lite port."""
    return embedded_overrides(data)


def as_env(overrides: dict[str, Any]) -> dict[str, str]:
    """Dotted overrides as the ISE__SECTION__KEY variables load_settings reads."""
    return {"ISE__" + k.upper().replace(".", "__"): str(v) for k, v in overrides.items()}


def settings_for(overrides: dict[str, Any]) -> Settings:
    return load_settings(ROOT / "config.yaml", environ={}, overrides=overrides)


def stores_for(settings: Settings) -> Stores:
    return open_stores(settings)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A private data directory; its Milvus Lite server (started by whoever wrote) stops after."""
    yield tmp_path
    from image_search.stores.lite_server import stop_lite_server

    stop_lite_server(tmp_path / "vectors.db")


# -- ray job submit -------------------------------------------------------------------------------
def job_command(dashboard: str, env: dict[str, str], job_id: str, args: list[str]) -> list[str]:
    """Exactly the README's command, with the venv's python (PATH may not have it)."""
    runtime_env = json.dumps({"env_vars": env})
    return [
        str(VENV_BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", str(ROOT),
        "--runtime-env-json", runtime_env, "--submission-id", job_id, "--",
        sys.executable, "-m", "pipelines.backfill", *args,
    ]  # fmt: skip


def submit(
    dashboard: str, env: dict[str, str], job_id: str, args: list[str], wait: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = job_command(dashboard, env, job_id, args)
    if not wait:
        cmd.insert(3, "--no-wait")
    # The CLI inherits RAY_AUTH_MODE=disabled from tests/conftest.py, matching the test cluster.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=420, env={**os.environ})


def wait_job(dashboard: str, job_id: str, timeout: float = 300) -> str:
    """Poll the job's status (the REST call `ray job status` makes) until it ends."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still running after {timeout}s")


def poll(check: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


# -- a Serve app on chosen stores -----------------------------------------------------------------
@dataclass
class LiveApp:
    name: str
    url: str
    overrides: dict[str, Any]
    data: Path


# make_app's options reserve 1 CPU per app, and the apps of tests/integration already hold both
# CPUs of the session's cluster: ours asks for none, or it would never be scheduled.
ZERO_CPU = {d: {"ray_actor_options": {"num_cpus": 0}} for d in ("Ingress", "Decoder", "Embedder",
                                                                   "Indexer")}  # fmt: skip


@pytest.fixture(scope="module")
def live_app(make_app: AppFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The real Serve graph (make_app) on stores of our choosing, for a backfill to write under."""
    from image_search.stores.lite_server import ensure_lite_server

    name = "pipelines_live"
    data = tmp_path_factory.mktemp("live")
    overrides = store_overrides(data)
    # The embedded vector server is started here, before any replica needs it, so the test owns
    # it from the start; make_app.delete stops it when the app is gone.
    ensure_lite_server(data / "vectors.db", int(overrides["stores.lite_port"]))
    url = make_app(name, overrides=overrides, extra_options=ZERO_CPU)
    try:
        yield LiveApp(name, url, overrides, data)
    finally:
        make_app.delete(name)
