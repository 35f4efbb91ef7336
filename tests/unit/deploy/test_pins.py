"""The vendored CRDs are the pinned release's, and the docs install that same release."""

from __future__ import annotations

import hashlib
import re
import tomllib
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from deploy import render
from deploy.schema import load_crd
from deploy.validate import CRD_FILES
from tests.conftest import ROOT
from tests.unit.deploy.conftest import DEPLOY, MANIFEST_FILES, cluster_spec, load_one

CRDS = DEPLOY / "crds"


@pytest.fixture(scope="module")
def pin() -> dict[str, Any]:
    source: dict[str, Any] = yaml.safe_load((CRDS / "source.yaml").read_text())
    return source


def test_vendored_files_are_the_pinned_bytes(pin: dict[str, Any]) -> None:
    vendored = {p.name for p in CRDS.iterdir()} - {"README.md", "source.yaml"}
    assert vendored == set(pin["files"])
    for name, digest in pin["files"].items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, name
    assert pin["licence"] == "Apache-2.0"
    assert (CRDS / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_readme_names_the_pin(pin: dict[str, Any]) -> None:
    readme = (CRDS / "README.md").read_text()
    for fact in (pin["tag"], pin["commit"], pin["repository"], "Apache"):
        assert fact in readme, fact


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crds_serve_ray_io_v1(kind: str) -> None:
    crd = load_crd(CRD_FILES[kind])
    assert (crd.kind, crd.api_version) == (kind, "ray.io/v1")


def test_docs_install_the_pinned_operator(pin: dict[str, Any]) -> None:
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    installs = re.findall(r"helm install kuberay-operator \S+ --version (\S+)", docs)
    assert installs == [pin["version"]]


@pytest.mark.parametrize("kind", sorted(MANIFEST_FILES))
def test_ray_version_is_one_the_project_installs(kind: str) -> None:
    assert cluster_spec(load_one(MANIFEST_FILES[kind]))["rayVersion"] == render.RAY_VERSION
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [Requirement(d) for d in deps if Requirement(d).name == "ray"]
    assert Version(render.RAY_VERSION) in ray.specifier


def test_deploy_files_stay_inside_the_project() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".md"}]
    files.append(ROOT / "docs" / "kubernetes.md")
    for path in files:
        if path.parent == CRDS and path.name.startswith("ray.io_"):
            continue  # vendored bytes
        for ref in re.findall(r"(?:\.\./)+[\w./-]*", path.read_text()):
            target = (path.parent / ref).resolve()
            assert target.is_relative_to(ROOT.resolve()), f"{path}: {ref}"
