"""The KubeRay operator's own checks that a CRD schema cannot express, re-stated here.

The operator (v1.7.0, ray-operator/controllers/ray/utils/validation.go) refuses a resource
that passes the API server's schema in these cases; it then records a failed status and an
event, and nothing runs. Only the rules about fields a RayService or RayJob manifest like ours
sets are re-stated (written from reading that file, not translated from it): worker group
replica bounds, where Ray resources are declared, per-group idle timeouts, restart policies
under autoscaler v2, the upgrade type, and the RayJob's lifecycle fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from deploy.schema import Problem

UPGRADE_TYPES = ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
# rayStartParams keys that declare Ray resources, which a group's `resources` field also does.
_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def _pod_spec(group: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = group.get("template", {}).get("spec", {})
    return spec


def _autoscaler_v2(cluster: Mapping[str, Any]) -> bool:
    if (cluster.get("autoscalerOptions") or {}).get("version") == "v2":
        return True
    containers = _pod_spec(cluster.get("headGroupSpec", {})).get("containers") or [{}]
    env = {e.get("name"): e.get("value") for e in containers[0].get("env", [])}
    return env.get("RAY_enable_autoscaler_v2") in ("1", "true")


def _group_rules(where: str, name: str, group: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if not _pod_spec(group).get("containers"):
        problems.append(Problem(where, f"{name} group has no container"))
    params = group.get("rayStartParams") or {}
    if group.get("resources") and any(params.get(k) for k in _RESOURCE_PARAMS):
        problems.append(Problem(where, f"{name} group declares Ray resources both in "
                                "rayStartParams and in resources; use one"))  # fmt: skip
    if "labels" in params:
        problems.append(Problem(where, f"{name} group: use labels, not rayStartParams.labels"))
    return problems


def cluster_rules(cluster: Mapping[str, Any], where: str) -> list[Problem]:
    """ValidateRayClusterSpec's rules, for the RayCluster spec inside a RayService or RayJob."""
    problems = _group_rules(f"{where}.headGroupSpec", "head", cluster.get("headGroupSpec", {}))
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    v2 = autoscaling and _autoscaler_v2(cluster)
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        at, name = f"{where}.workerGroupSpecs[{i}]", str(group.get("groupName"))
        problems += _group_rules(at, name, group)
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            problems.append(Problem(at, "minReplicas and maxReplicas are required without "
                                    "autoscaling"))  # fmt: skip
        if any(isinstance(v, int) and v < 0 for v in (low, high)):
            problems.append(Problem(at, "negative minReplicas or maxReplicas"))
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.append(Problem(at, f"minReplicas {low} > maxReplicas {high}"))
        if group.get("idleTimeoutSeconds") is not None and not _autoscaler_v2(cluster):
            problems.append(Problem(f"{at}.idleTimeoutSeconds", "a per-group idle timeout "
                                    "needs autoscalerOptions.version v2; use "
                                    "autoscalerOptions.idleTimeoutSeconds"))  # fmt: skip
    if v2:
        for i, (_, group) in enumerate(_all_groups(cluster)):
            policy = _pod_spec(group).get("restartPolicy")
            if policy not in (None, "", "Never"):
                problems.append(Problem(f"{where} group {i}", "restartPolicy must be Never or "
                                        "unset under autoscaler v2"))  # fmt: skip
    idle = (cluster.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if isinstance(idle, int) and idle < 0:
        problems.append(Problem(f"{where}.autoscalerOptions", "negative idleTimeoutSeconds"))
    return problems


def _all_groups(cluster: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    head: list[tuple[str, Mapping[str, Any]]] = [("head", cluster.get("headGroupSpec", {}))]
    return head + [(str(g.get("groupName")), g) for g in cluster.get("workerGroupSpecs") or []]


def rayservice_rules(doc: Mapping[str, Any]) -> list[Problem]:
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterConfig") or {}
    problems = cluster_rules(cluster, "spec.rayClusterConfig")
    kind = (spec.get("upgradeStrategy") or {}).get("type")
    if kind is not None and kind not in UPGRADE_TYPES:
        problems.append(Problem("spec.upgradeStrategy.type", f"{kind!r} is not one of "
                                f"{', '.join(UPGRADE_TYPES)}"))  # fmt: skip
    head_service = (cluster.get("headGroupSpec") or {}).get("headService") or {}
    if (head_service.get("metadata") or {}).get("name"):
        problems.append(Problem("spec.rayClusterConfig.headGroupSpec.headService",
                                "metadata.name must not be set in a RayService"))  # fmt: skip
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if isinstance(delay, int) and delay < 0:
        problems.append(Problem("spec.rayClusterDeletionDelaySeconds", "negative"))
    return problems


def rayjob_rules(doc: Mapping[str, Any]) -> list[Problem]:
    spec = doc.get("spec") or {}
    problems = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if spec.get("suspend") and not shutdown:
        problems.append(Problem("spec.suspend", "needs shutdownAfterJobFinishes: true"))
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if isinstance(ttl, int) and ttl < 0:
        problems.append(Problem("spec.ttlSecondsAfterFinished", "negative"))
    if isinstance(ttl, int) and ttl > 0 and not shutdown:
        problems.append(Problem("spec.ttlSecondsAfterFinished",
                                "needs shutdownAfterJobFinishes: true"))  # fmt: skip
    selector = spec.get("clusterSelector") or {}
    if not spec.get("rayClusterSpec") and not selector:
        problems.append(Problem("spec", "one of rayClusterSpec or clusterSelector is required"))
    backoff = spec.get("backoffLimit")
    if isinstance(backoff, int) and backoff > 0 and selector:
        problems.append(Problem("spec.backoffLimit", "incompatible with clusterSelector"))
    if isinstance(backoff, int) and backoff > 0 and spec.get("submissionMode") == "InteractiveMode":
        problems.append(Problem("spec.backoffLimit", "incompatible with InteractiveMode"))
    if isinstance(backoff, int) and backoff < 0:
        problems.append(Problem("spec.backoffLimit", "negative"))
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        value = spec.get(key)
        if isinstance(value, int) and value <= 0:
            problems.append(Problem(f"spec.{key}", "must be positive"))
    try:
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as exc:
        problems.append(Problem("spec.runtimeEnvYAML", f"not YAML: {exc}"))
    if spec.get("rayClusterSpec"):
        problems += cluster_rules(spec["rayClusterSpec"], "spec.rayClusterSpec")
    return problems


RULES = {"RayService": rayservice_rules, "RayJob": rayjob_rules}


def operator_rules(doc: Mapping[str, Any]) -> list[Problem]:
    """What the operator would refuse in a manifest the schema accepted (empty: nothing)."""
    rules = RULES.get(str(doc.get("kind")))
    return rules(doc) if rules else []
