"""Manifests the API server would admit and the KubeRay operator would still refuse."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from deploy.operator_rules import operator_rules
from deploy.validate import validate_document
from tests.unit.deploy.conftest import cluster_spec

Mutation = Callable[[dict[str, Any]], None]


def _worker(doc: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = cluster_spec(doc)["workerGroupSpecs"][0]
    return group


CLUSTER_CASES: list[tuple[str, Mutation, str]] = [
    ("min above max", lambda d: _worker(d).update(minReplicas=3, maxReplicas=2),
     "minReplicas 3 > maxReplicas 2"),
    ("negative max", lambda d: _worker(d).update(minReplicas=0, maxReplicas=-1), "negative"),
    ("per-group idle timeout under autoscaler v1",
     lambda d: _worker(d).update(idleTimeoutSeconds=60), "needs autoscalerOptions.version v2"),
    ("resources declared twice", lambda d: _worker(d).update(
        resources={"ise_embedder": "1"}, rayStartParams={"num-cpus": "2"}), "both"),
    ("labels in rayStartParams", lambda d: _worker(d)["rayStartParams"].update(labels="a=b"),
     "rayStartParams.labels"),
    ("no container", lambda d: _worker(d)["template"]["spec"].update(containers=[]),
     "no container"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "mutate", "says"), CLUSTER_CASES, ids=[c[0] for c in CLUSTER_CASES]
)
def test_cluster_rules(
    rayservice: dict[str, Any], rayjob: dict[str, Any], label: str, mutate: Mutation, says: str
) -> None:
    for doc in (rayservice, rayjob):
        broken = copy.deepcopy(doc)
        mutate(broken)
        assert operator_rules(doc) == []
        found = [str(p) for p in operator_rules(broken)]
        assert any(says in p for p in found), (label, found)


def test_autoscaler_v2_allows_group_idle_timeouts_but_not_restarts(
    rayservice: dict[str, Any],
) -> None:
    doc = copy.deepcopy(rayservice)
    cluster_spec(doc)["autoscalerOptions"]["version"] = "v2"
    _worker(doc)["idleTimeoutSeconds"] = 60
    assert operator_rules(doc) == []
    _worker(doc)["template"]["spec"]["restartPolicy"] = "Always"
    assert any("restartPolicy" in str(p) for p in operator_rules(doc))


def test_upgrade_type(rayservice: dict[str, Any]) -> None:
    doc = copy.deepcopy(rayservice)
    doc["spec"]["upgradeStrategy"]["type"] = "Recreate"  # a RayCluster value, not a RayService's
    assert validate_document(doc).errors  # the schema has no enum for it: the operator does


JOB_CASES: list[tuple[str, Mutation, str]] = [
    ("ttl without shutdown", lambda d: d["spec"].update(shutdownAfterJobFinishes=False),
     "needs shutdownAfterJobFinishes"),
    ("no cluster at all", lambda d: d["spec"].pop("rayClusterSpec"), "rayClusterSpec or"),
    ("retries with a selected cluster", lambda d: d["spec"].update(
        clusterSelector={"ray.io/cluster": "x"}), "incompatible with clusterSelector"),
    ("retries in interactive mode", lambda d: d["spec"].update(submissionMode="InteractiveMode"),
     "incompatible with InteractiveMode"),
    ("zero deadline", lambda d: d["spec"].update(activeDeadlineSeconds=0), "must be positive"),
    ("runtime env not YAML", lambda d: d["spec"].update(runtimeEnvYAML="env_vars: [a"),
     "not YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "mutate", "says"), JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_rayjob_rules(rayjob: dict[str, Any], label: str, mutate: Mutation, says: str) -> None:
    broken = copy.deepcopy(rayjob)
    mutate(broken)
    found = [str(p) for p in validate_document(broken).errors]
    assert any(says in p for p in found), (label, found)
