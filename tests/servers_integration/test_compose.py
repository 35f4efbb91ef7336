"""docker-compose.yaml, validated by `docker-compose config` (no Docker engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_search.config import load_settings
from image_search.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"app", "mysql", "minio", "etcd", "milvus-minio", "milvus"}


def compose_config(env_file: Path) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("ISE_REQUIRE_SERVERS") == "1":
            pytest.fail("docker-compose not installed")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    # A clean environment: variables of the caller's shell must not mask the env file.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yaml"), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = yaml.safe_load(out.stdout)
    return doc


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config(ROOT / ".env.example")


def test_services_health_and_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], f"{name} has no healthcheck"
    needs = {"app": {"mysql", "minio", "milvus"}, "milvus": {"etcd", "milvus-minio"}}
    for name, deps in needs.items():
        depends = services[name]["depends_on"]
        assert set(depends) == deps
        assert all(d["condition"] == "service_healthy" for d in depends.values())


def test_mysql_caches_its_tables(config: dict[str, Any], tmp_path: Path) -> None:
    assert "--innodb-buffer-pool-size=1G" in config["services"]["mysql"]["command"]
    env = tmp_path / ".env"
    env.write_text(
        (ROOT / ".env.example").read_text().replace("MYSQL_BUFFER_POOL=1G", "MYSQL_BUFFER_POOL=4G")
    )
    sized = compose_config(env)["services"]["mysql"]["command"]
    assert "--innodb-buffer-pool-size=4G" in sized and "--character-set-server=utf8mb4" in sized


def test_app_ports_build_and_settings(config: dict[str, Any]) -> None:
    app = config["services"]["app"]
    ports = {str(p.get("target", p)) if isinstance(p, dict) else p for p in app["ports"]}
    assert "8000" in ports and "127.0.0.1:8265:8265/tcp" in ports
    assert set(app["build"]["args"]) == {"RESNET50_WEIGHTS_URL", "RESNET50_WEIGHTS_SHA256"}
    env = {k: str(v) for k, v in app["environment"].items()}
    assert env["ISE__STORES__METADATA_URI"].startswith("mysql+pymysql://")
    # The example's placeholder secrets are refused in production, as they should be.
    with pytest.raises(ConfigError, match="default"):
        load_settings(ROOT / "config.yaml", environ=env)
    secrets = {"ISE__STORES__S3_SECRET_KEY": "s3-secret-from-env",
               "ISE__SERVER__ADMIN_TOKEN": "admin-secret-from-env"}  # fmt: skip
    uri = env["ISE__STORES__METADATA_URI"].replace(":changeme@", ":db-secret@")
    s = load_settings(ROOT / "config.yaml",
                      environ={**env, **secrets, "ISE__STORES__METADATA_URI": uri})  # fmt: skip
    assert s.environment == "production" and s.model.name == "resnet50"
    assert (s.stores.objects_uri, s.stores.s3_endpoint) == ("s3://ise-images", "minio:9000")
    assert s.stores.vectors_uri == "http://milvus:19530" and s.stores.consistency_level == "Strong"


def test_no_secret_is_committed() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    assert "changeme" not in text and "minioadmin" not in text
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in dockerignore and ".venv" in dockerignore
