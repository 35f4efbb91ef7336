"""The console script against a running app, and `serve run serve_config.yaml` on the cluster."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, VENV_BIN, AppFactory, free_port, wait_http

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "image-search"), *args], capture_output=True, text=True, timeout=600
    )


def test_index_folder_then_search(
    make_app: AppFactory, photos: dict[str, bytes], tmp_path: Path
) -> None:
    url = make_app("cli")
    folder = tmp_path / "pics"
    (folder / "nested").mkdir(parents=True)
    for name in ("coffee", "rocket", "moon"):
        (folder / f"{name}.jpg").write_bytes(photos[name])
    (folder / "nested" / "chelsea.jpg").write_bytes(photos["chelsea"])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.txt").write_text("not an image, and not picked up")

    first = run_cli("index", str(folder), "--url", url, "--batch", "2")
    assert first.returncode == 1, first.stderr  # one file was rejected
    assert "broken.png" in first.stderr and "'indexed': 4" in first.stderr
    assert "indexing" in first.stderr  # the progress bar
    again = run_cli("index", str(folder / "nested"), "--url", url)
    assert again.returncode == 0 and "'duplicate': 1" in again.stderr

    found = run_cli("search", str(folder / "nested" / "chelsea.jpg"), "--url", url, "--limit", "2")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "distance", "score"]
    assert lines[1].split()[-1] == "chelsea.jpg" and len(lines) == 3
    make_app.delete("cli")


def test_cli_reports_unreachable_service(tmp_path: Path, photos: dict[str, bytes]) -> None:
    img = tmp_path / "q.jpg"
    img.write_bytes(photos["coffee"])
    res = run_cli("search", str(img), "--url", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 2 and "cannot reach the service" in res.stderr


def test_serve_run_serve_config_yaml(
    ray_cluster: dict[str, str], serve_http: str, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """`serve run serve_config.yaml` deploys the same graph onto a running cluster.

    The cluster builds the app, so this test's data directory travels in the application's
    runtime_env (a config file's apps ignore `serve run --runtime-env-json`).
    """
    env_vars = {
        "ISE_CONFIG": str(ROOT / "config.yaml"),
        "ISE__STORES__METADATA_URI": f"sqlite:///{tmp_path}/meta.db",
        "ISE__STORES__OBJECTS_URI": f"file://{tmp_path}/objects",
        "ISE__STORES__VECTORS_URI": f"{tmp_path}/vectors.db",
        "ISE__STORES__LITE_PORT": str(free_port()),
    }
    photo = photos["coffee"]
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["applications"][0]["runtime_env"] = {"env_vars": env_vars}
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(doc))
    cmd = [str(VENV_BIN / "serve"), "run", "--address", ray_cluster["address"], "--non-blocking",
           str(config)]  # fmt: skip
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        wait_http(serve_http + "/readyz", timeout=240)
        status = httpx.get(ray_cluster["dashboard"] + "/api/serve/applications/", timeout=30)
        deps = status.json()["applications"]["image_search"]["deployments"]
        assert set(deps) == {"Ingress", "Decoder", "Embedder", "Indexer"}
        emb = deps["Embedder"]["deployment_config"]
        assert emb["autoscaling_config"]["max_replicas"] == 2
        assert emb["max_ongoing_requests"] >= emb["user_config"]["max_batch_size"]
        # It runs on this test's own stores, not on the repository's ./data.
        up = httpx.post(serve_http + "/meta/image/file", files={"file": ("c.jpg", photo)},
                        timeout=120)  # fmt: skip
        assert up.status_code == 200, up.text
        assert (tmp_path / "meta.db").exists() and (tmp_path / "objects").is_dir()
    finally:
        from ray import serve

        serve.delete("image_search")
        from image_search.stores.lite_server import stop_lite_server

        stop_lite_server(env_vars["ISE__STORES__VECTORS_URI"])
