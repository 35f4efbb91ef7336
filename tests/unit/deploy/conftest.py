"""The KubeRay manifests as parsed documents, and the helpers the deploy tests share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from deploy.schema import load_manifests
from image_search.config import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
SECRET_EXAMPLE = DEPLOY / "secret.example.yaml"
MANIFEST_FILES = {
    "RayService": DEPLOY / "rayservice.yaml",
    "RayJob": DEPLOY / "rayjob-backfill.yaml",
}

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX: dict[str, int | Fraction] = {
    "": 1,
    "m": Fraction(1, 1000),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
}


def load_one(path: Path) -> dict[str, Any]:
    docs = load_manifests(path.read_text(encoding="utf-8"))
    assert len(docs) == 1, f"{path}: one document expected"
    doc: dict[str, Any] = docs[0]
    return doc


@pytest.fixture(scope="session")
def rayservice() -> dict[str, Any]:
    return load_one(MANIFEST_FILES["RayService"])


@pytest.fixture(scope="session")
def rayjob() -> dict[str, Any]:
    return load_one(MANIFEST_FILES["RayJob"])


@pytest.fixture(scope="session")
def secret_example() -> dict[str, Any]:
    return load_one(SECRET_EXAMPLE)


@pytest.fixture(scope="session")
def compose_app() -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"][
        "app"
    ]
    return app


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec inside a RayService or a RayJob."""
    spec = doc["spec"]
    cluster: dict[str, Any] = spec.get("rayClusterConfig") or spec["rayClusterSpec"]
    return cluster


def groups(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("head", headGroupSpec), then (groupName, workerGroupSpec) for each worker group."""
    cluster = cluster_spec(doc)
    yield "head", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """The Ray container: KubeRay runs `ray start` in the first container of a pod."""
    container: dict[str, Any] = group["template"]["spec"]["containers"][0]
    return container


def ray_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [ray_container(group) for _, group in groups(doc)]


def quantity(value: str | int) -> Fraction:
    """A Kubernetes quantity ("500m", "4Gi", 2) as an exact number."""
    m = _QUANTITY.match(str(value))
    assert m and m.group(2) in _SUFFIX, f"not a quantity this test reads: {value!r}"
    return Fraction(m.group(1)) * Fraction(_SUFFIX[m.group(2)])


def setting_env_names() -> set[str]:
    """Every ISE__ variable image_search.config reads for a setting, from the Settings model."""
    names = set()
    for name, f in Settings.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            names |= {f"ISE__{name}__{key}".upper() for key in sub.model_fields}
        else:
            names.add(f"ISE__{name}".upper())
    return names
