"""Shared fixtures: one real Ray cluster (`ray start`) per session, Serve apps on it, photos."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before anything imports ray: keep every Ray process on loopback, with no usage reporting,
# and the proxy's body limits on, as `image-search serve` does (ray is imported lazily there).
from deployments.cluster import LOCAL_RAY_ENV, free_port

os.environ.update({**LOCAL_RAY_ENV, **os.environ})
# The test cluster runs without token auth whatever state ~/.ray is in, and so do its clients.
os.environ["RAY_AUTH_MODE"] = "disabled"

import httpx
import pytest
from PIL import Image

from bench.photos import real_photos

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def wait_http(
    url: str, timeout: float = 120.0, ok: Callable[[httpx.Response], bool] | None = None
) -> None:
    """Poll until the URL answers (200 unless `ok` says otherwise); never sleep blindly."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if (ok or (lambda resp: resp.status_code == 200))(r):
                return
            last = r.text[:300]
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


# -- photos -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos (scikit-image, scikit-learn) as JPEG bytes, name -> bytes."""
    out: dict[str, bytes] = {}
    for name, arr in real_photos().items():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=92)
        out[name] = buf.getvalue()
    return out


# -- Ray ----------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def stop_cluster(*markers: str, timeout: float = 20.0) -> None:
    """Stop only the Ray processes of one cluster (its temp dir, its GCS address), with children.

    `ray stop` would end every Ray cluster on the machine, including a developer's service.
    """
    roots = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
            if any(m in text for m in markers):
                roots.append(int(cmdline.parent.name))
        except OSError:
            continue
    tree, pids, stack = _children(), set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in pids and pid != os.getpid():
            pids.add(pid)
            stack.extend(tree.get(pid, []))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 2
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real single-node cluster from `ray start --head` on 127.0.0.1; the test process joins it.

    Yields {"address": GCS address, "dashboard": http URL for `ray job submit`}.
    """
    port, dash = free_port(), free_port()
    env = {**os.environ}
    temp = Path("/tmp") / f"ray-ise-{os.getpid()}"
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}",
        f"--ray-client-server-port={free_port()}",
        # Logical CPUs are a scheduling quota, not cores: several apps (about 1 CPU of
        # fractional replicas each) must fit at once on this 2-core machine.
        "--num-cpus=8",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, timeout=120)
    info = {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    try:
        wait_http(info["dashboard"] + "/api/version", timeout=60)
        import ray

        # Replica logs stay in the session's log folder instead of flooding the test output.
        ray.init(address=info["address"], namespace="serve", log_to_driver=False)
        yield info
    finally:
        import ray

        if ray.is_initialized():
            try:
                from ray import serve

                serve.shutdown()
            finally:
                ray.shutdown()
        stop_cluster(str(temp), f"--address={info['address']}", f"--gcs-address={info['address']}")
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_http(ray_cluster: dict[str, str]) -> str:
    """Start Serve's HTTP proxy once on a free loopback port; returns its base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def embedded_overrides(data: Path) -> dict[str, Any]:
    """Settings overrides that put every embedded store under `data`, on a private Lite port."""
    return {
        "stores.metadata_uri": f"sqlite:///{data}/meta.db",
        "stores.objects_uri": f"file://{data}/objects",
        "stores.vectors_uri": f"{data}/vectors.db",
        "stores.lite_port": free_port(),
        # One model cache for every app and job of the session (mktemp folders are siblings):
        # ONNX graphs are built on first load, keyed by content and under a lock, so once.
        "model.cache_dir": str(data.parent / "models"),
    }


class AppFactory:
    """Deploys Serve apps (the real graph), each on its own data directory and route prefix.

    make_app(name, overrides={...}) -> base URL such as http://127.0.0.1:PORT/name;
    make_app.delete(name) removes an app early (apps cost ~1 GB; the machine has 24 GiB).
    """

    def __init__(self, serve_http: str, tmp: pytest.TempPathFactory) -> None:
        self.serve_http = serve_http
        self.tmp = tmp
        self.started: dict[str, str] = {}

    def __call__(
        self,
        name: str,
        overrides: dict[str, Any] | None = None,
        ready: bool = True,
        extra_options: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        from ray import serve

        from deployments.app import build_app, serve_config_options

        base_overrides = embedded_overrides(self.tmp.mktemp(f"app-{name}"))
        base_overrides.update(overrides or {})
        options = serve_config_options(ROOT / "serve_config.yaml")
        for dep, extra in (extra_options or {}).items():
            options.setdefault(dep, {}).update(extra)
        app = build_app({"config": str(ROOT / "config.yaml"), "overrides": base_overrides,
                         "deployment_options": options})  # fmt: skip
        prefix = f"/{name}"
        serve.run(app, name=name, route_prefix=prefix, blocking=False)
        self.started[name] = str(base_overrides["stores.vectors_uri"])
        url = self.serve_http + prefix
        if ready:
            wait_http(url + "/readyz", timeout=180)
        return url

    def delete(self, name: str) -> None:
        from ray import serve

        from image_search.stores.lite_server import stop_lite_server

        vectors = self.started.pop(name, None)
        try:
            serve.delete(name)
        finally:
            if vectors is not None and "://" not in vectors:
                stop_lite_server(vectors)


@pytest.fixture(scope="session")
def make_app(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppFactory]:
    factory = AppFactory(serve_http, tmp_path_factory)
    yield factory
    for name in list(factory.started):
        factory.delete(name)


@pytest.fixture(scope="session")
def app_url(make_app: AppFactory) -> str:
    """The embedded-defaults app that most integration and e2e tests share."""
    return make_app("embedded")
