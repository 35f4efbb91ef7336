"""The KubeRay manifests validate against the pinned CRDs and agree with the rest of the project.

What a cluster would refuse (schema), and what it would accept but run wrong: another image
than compose's, an ISE__ variable that is no setting, a Secret key nobody creates, a replica
that fits on no pod, a probe that needs a tool the image lacks.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploy import validate as validate_cli
from deploy.render import EMBEDDER_RESOURCE
from deploy.validate import validate_document
from deployments.cluster import LOCAL_RAY_ENV, SERVE_TRANSPORT_ENV
from image_search.config import load_settings
from tests.conftest import ROOT
from tests.unit.deploy.conftest import (
    MANIFEST_FILES,
    SECRET_EXAMPLE,
    cluster_spec,
    groups,
    load_one,
    quantity,
    ray_container,
    ray_containers,
    setting_env_names,
)

SECRET_NAME = "image-search-secrets"
KINDS = sorted(MANIFEST_FILES)


@pytest.fixture(scope="module", params=KINDS)
def manifest(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_one(MANIFEST_FILES[request.param])


def env_of(container: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = container.get("env", [])
    return env


# --- the schema -------------------------------------------------------------------------------


def test_every_manifest_validates_against_its_crd(manifest: dict[str, Any]) -> None:
    report = validate_document(manifest)
    assert [str(p) for p in report.errors] == []
    # CEL rules are not evaluated offline: the manifests stay off the fields that carry them.
    assert [str(p) for p in report.unchecked] == []


def _worker(doc: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = cluster_spec(doc)["workerGroupSpecs"][0]
    return group


def _head_container(doc: dict[str, Any]) -> dict[str, Any]:
    return ray_container(cluster_spec(doc)["headGroupSpec"])


Mutation = Callable[[dict[str, Any]], None]
BROKEN: list[tuple[str, Mutation, str]] = [
    # wrong types
    ("maxReplicas as a string", lambda d: _worker(d).update(maxReplicas="2"),
     "workerGroupSpecs[0].maxReplicas"),
    ("a boolean ray start flag", lambda d: cluster_spec(d)["headGroupSpec"]["rayStartParams"]
     .update(block=True), "headGroupSpec.rayStartParams.block"),
    ("a number where a quantity string is due",
     lambda d: _head_container(d)["resources"]["limits"].update(cpu=[2]), "resources.limits.cpu"),
    ("env as a mapping", lambda d: _head_container(d).update(env={"A": "b"}), "containers[0].env"),
    # misspelled fields, at several depths: the API server would prune them silently
    ("spec typo", lambda d: d["spec"].update(shutdownAfterJobFinished=True), "spec"),
    ("worker group typo", lambda d: _worker(d).update(minReplica=1), "workerGroupSpecs[0]"),
    ("container typo", lambda d: _head_container(d).update(readynessProbe={}), "containers[0]"),
    ("probe typo", lambda d: _head_container(d)["livenessProbe"].update(periodSecond=5),
     "containers[0].livenessProbe"),
    # missing required fields
    ("no groupName", lambda d: _worker(d).pop("groupName"), "workerGroupSpecs[0]"),
    ("no container name", lambda d: _head_container(d).pop("name"), "containers[0]"),
    ("no headGroupSpec", lambda d: cluster_spec(d).pop("headGroupSpec"), "spec.rayCluster"),
    ("no probe port", lambda d: _head_container(d)["readinessProbe"]["httpGet"].pop("port"),
     "readinessProbe.httpGet"),
    # identity
    ("old apiVersion", lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    ("other kind", lambda d: d.update(kind="RayCluster"), "kind"),
    ("name with capitals", lambda d: d["metadata"].update(name="Image-Search"), "metadata.name"),
    ("name too long", lambda d: d["metadata"].update(name="x" * 48), "metadata.name"),
    ("no name", lambda d: d["metadata"].pop("name"), "metadata"),
    # a duplicate env var (x-kubernetes-list-type: map)
    ("duplicate env", lambda d: env_of(_head_container(d)).append(dict(env_of(
        _head_container(d))[0])), "containers[0].env"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "mutate", "where"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_copies_fail(
    manifest: dict[str, Any], label: str, mutate: Mutation, where: str
) -> None:
    broken = copy.deepcopy(manifest)
    mutate(broken)
    found = [str(p) for p in validate_document(broken).errors]
    assert found, f"{label}: accepted"
    assert any(where in e.split(": ", 1)[0] for e in found), found


def test_validate_cli(tmp_path: Path) -> None:
    assert validate_cli.main([]) == 0
    text = MANIFEST_FILES["RayService"].read_text(encoding="utf-8")
    broken = tmp_path / "rayservice.yaml"
    broken.write_text(text.replace("maxReplicas: 2", "maxReplica: 2"), encoding="utf-8")
    assert validate_cli.main([str(broken)]) == 1
    secret = validate_cli.validate_file(SECRET_EXAMPLE)  # a kind without a vendored CRD
    assert [str(p) for r in secret for p in r.errors] == [
        "kind: 'Secret' has no vendored CRD (known: RayJob, RayService)"
    ]


# --- the same service as docker-compose -------------------------------------------------------


def test_image_is_compose_image(manifest: dict[str, Any], compose_app: dict[str, Any]) -> None:
    images = {c["image"] for c in ray_containers(manifest)}
    assert images == {compose_app["image"]}


def test_runs_as_the_image_user(manifest: dict[str, Any]) -> None:
    uid = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid, "Dockerfile no longer creates its user with --uid"
    for container in ray_containers(manifest):
        ctx = container["securityContext"]
        # runAsNonRoot alone fails for an image whose USER is a name: the kubelet cannot tell.
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == int(uid.group(1))


def test_env_names_are_real_settings(manifest: dict[str, Any]) -> None:
    valid = setting_env_names()
    assert "ISE__STORES__METADATA_URI" in valid and "ISE__ENVIRONMENT" in valid
    assert "ISE__STORES__METADATA_URL" not in valid  # the check can say no
    for container in ray_containers(manifest):
        named = {e["name"] for e in env_of(container) if e["name"].startswith("ISE")}
        assert named, "no settings at all"
        assert named <= valid, sorted(named - valid)


def test_every_ray_container_has_the_same_env(manifest: dict[str, Any]) -> None:
    # The controller builds the app on the head, but each node's proxy reads the settings too.
    envs = [env_of(c) for c in ray_containers(manifest)]
    assert all(env == envs[0] for env in envs)


def test_the_job_and_the_service_share_settings(
    rayservice: dict[str, Any], rayjob: dict[str, Any]
) -> None:
    assert env_of(ray_containers(rayservice)[0]) == env_of(ray_containers(rayjob)[0])


def test_proxy_body_limits_are_installed(manifest: dict[str, Any]) -> None:
    key = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
    env = {e["name"]: e.get("value", "") for e in env_of(ray_containers(manifest)[0])}
    assert env[key] == LOCAL_RAY_ENV[key]
    module, _, attr = str(env[key]).rpartition(".")
    assert callable(getattr(importlib.import_module(module), attr))


def test_serve_transport_is_that_of_a_local_cluster(manifest: dict[str, Any]) -> None:
    # Every Ray container: a node whose processes spoke Ray's actor transport while the others
    # spoke gRPC would still work, but would not be the service that was measured.
    for container in ray_containers(manifest):
        env = {e["name"]: e.get("value", "") for e in env_of(container)}
        assert {k: env.get(k) for k in SERVE_TRANSPORT_ENV} == SERVE_TRANSPORT_ENV


def test_image_sets_the_serve_transport_itself() -> None:
    # In the image `ray start` starts Serve's processes, not `image-search serve`: the
    # Dockerfile's ENV must carry the same values, or compose would run another service.
    text = (ROOT / "Dockerfile").read_text()
    for key, value in SERVE_TRANSPORT_ENV.items():
        assert re.search(rf"^\s*{key}={value}\s*\\?$", text, re.MULTILINE), key


def secret_refs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["valueFrom"]["secretKeyRef"] for c in ray_containers(doc) for e in env_of(c)
            if "secretKeyRef" in e.get("valueFrom", {})]  # fmt: skip


def test_secret_refs_match_the_example_secret(
    manifest: dict[str, Any], secret_example: dict[str, Any]
) -> None:
    refs = secret_refs(manifest)
    assert {r["name"] for r in refs} == {secret_example["metadata"]["name"]} == {SECRET_NAME}
    keys = set(secret_example["stringData"])
    used = {r["key"] for r in refs}
    assert used <= keys, f"keys no Secret would hold: {sorted(used - keys)}"
    assert keys <= used, f"example keys nothing reads: {sorted(keys - used)}"


def test_example_secret_holds_only_placeholders(secret_example: dict[str, Any]) -> None:
    assert secret_example["apiVersion"] == "v1" and secret_example["kind"] == "Secret"
    assert secret_example["type"] == "Opaque" and "data" not in secret_example
    text = SECRET_EXAMPLE.read_text(encoding="utf-8")
    assert text.startswith("# EXAMPLE ONLY - PLACEHOLDER VALUES, NOT SECRETS.")
    data = secret_example["stringData"]
    assert all(isinstance(v, str) for v in data.values())
    for key in ("s3-access-key", "s3-secret-key", "admin-token", "vectors-token",
                "metadata-uri", "model-weights-sha256"):  # fmt: skip
        assert "REPLACE_ME" in data[key], key


def manifest_environ(doc: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """The environment a Ray container of `doc` gets once `secret` exists."""
    data = secret["stringData"]
    environ = {}
    for e in env_of(ray_containers(doc)[0]):
        if "value" in e:
            environ[e["name"]] = e["value"]
        else:
            environ[e["name"]] = data[e["valueFrom"]["secretKeyRef"]["key"]]
    return environ


def test_env_and_secret_make_valid_production_settings(
    manifest: dict[str, Any], secret_example: dict[str, Any]
) -> None:
    # What the image does: ISE_CONFIG=/app/config.yaml (this repo's), then the ISE__ variables.
    environ = manifest_environ(manifest, secret_example)
    settings = load_settings(ROOT / "config.yaml", environ=environ)
    assert settings.environment == "production" and settings.keys_required
    assert settings.model.name == "resnet50" and settings.model.cache_dir == "/opt/ise/models"
    assert settings.stores.metadata_uri.startswith("mysql+pymysql://")
    assert settings.stores.objects_uri.startswith("s3://")
    assert settings.stores.vectors_uri.startswith("http://")
    assert settings.stores.s3_secure is False  # "false" arrives typed, not as a truthy string
    assert settings.security.allowed_hosts == ["search.example.com"]


# Compose literals the manifests take from the Secret instead: addresses and TLS differ per
# cluster. Every other literal of compose's app service must be the manifests' literal.
FROM_SECRET_IN_KUBERNETES = {
    "ISE__STORES__S3_ENDPOINT", "ISE__STORES__S3_SECURE", "ISE__STORES__S3_REGION",
    "ISE__STORES__VECTORS_URI",
}  # fmt: skip
_COMPOSE_DEFAULT = re.compile(r"^\$\{[A-Z0-9_]+:-(.*)\}$")


def test_production_settings_match_compose(
    manifest: dict[str, Any], compose_app: dict[str, Any]
) -> None:
    compose_env = {k: str(v) for k, v in compose_app["environment"].items() if k.startswith("ISE")}
    env = {e["name"]: e for e in env_of(ray_containers(manifest)[0])}
    assert set(compose_env) <= set(env), sorted(set(compose_env) - set(env))
    for name, value in compose_env.items():
        if name in FROM_SECRET_IN_KUBERNETES:
            assert "valueFrom" in env[name], f"{name}: from the Secret in Kubernetes"
        elif "$" in value:
            # The deployer's choice in .env: the Secret, or compose's default as a literal.
            default = _COMPOSE_DEFAULT.match(value)
            assert "valueFrom" in env[name] or (
                default is not None and env[name].get("value") == default.group(1)
            ), name
        else:
            assert env[name].get("value") == value, name


# --- pods that start, stay healthy and can hold what Serve asks for ---------------------------


def test_requests_and_limits(manifest: dict[str, Any]) -> None:
    for container in ray_containers(manifest):
        res = container["resources"]
        for kind in ("cpu", "memory"):
            # Equal: KubeRay tells Ray the limit, so Ray would schedule onto CPUs not reserved.
            assert quantity(res["requests"][kind]) == quantity(res["limits"][kind]) > 0, kind


def test_workers_have_a_cpu_per_model_thread(manifest: dict[str, Any]) -> None:
    threads = load_settings(ROOT / "config.yaml", environ={}).model.threads
    for name, group in groups(manifest):
        if name != "head":
            assert quantity(ray_container(group)["resources"]["limits"]["cpu"]) >= threads


def test_probes_are_http_and_head_readiness_does_not_wait_for_the_app(
    manifest: dict[str, Any],
) -> None:
    for name, group in groups(manifest):
        container = ray_container(group)
        for probe in ("readinessProbe", "livenessProbe"):
            # HTTP: an exec probe would need wget or curl, which python:3.11-slim lacks.
            assert set(container[probe]) & {"httpGet", "exec", "tcpSocket", "grpc"} == {
                "httpGet"
            }, f"{name} {probe}"
        if name == "head":
            # KubeRay deploys serveConfigV2 only once the head is Ready: a head probe on the
            # app (port 8000: /readyz, /healthz) would never pass.
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["port"] == 52365, probe


def test_service_ports_and_worker_readiness(rayservice: dict[str, Any]) -> None:
    head_ports = {p["name"]: p["containerPort"] for p in ray_containers(rayservice)[0]["ports"]}
    # KubeRay builds image-search-serve-svc from the head's port named "serve".
    assert head_ports == {"gcs-server": 6379, "dashboard": 8265, "serve": 8000, "metrics": 8080}
    http_port = rayservice_serve_config(rayservice)["http_options"]["port"]
    assert head_ports["serve"] == http_port
    for name, group in groups(rayservice):
        if name != "head":
            # Workers join image-search-serve-svc by readiness: their own Serve proxy's health.
            assert ray_container(group)["readinessProbe"]["httpGet"] == {
                "path": "/-/healthz", "port": http_port}  # fmt: skip


def rayservice_serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    import yaml

    config: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return config


def _group_capacity(group: dict[str, Any]) -> dict[str, float]:
    """What one pod of a group offers Ray: its CPU limit and the group's custom resources."""
    offer = {"CPU": float(quantity(ray_container(group)["resources"]["limits"]["cpu"]))}
    params = group.get("rayStartParams", {})
    if "num-cpus" in params:
        offer["CPU"] = float(params["num-cpus"])
    offer.update({k: float(v) for k, v in group.get("resources", {}).items()})
    return offer


def test_every_serve_deployment_fits_at_its_maximum(rayservice: dict[str, Any]) -> None:
    cluster = {name: (_group_capacity(g), g.get("maxReplicas", 1)) for name, g in
               groups(rayservice)}  # fmt: skip
    total: dict[str, float] = {}
    for offer, pods in cluster.values():
        for res, amount in offer.items():
            total[res] = total.get(res, 0.0) + amount * pods
    asked: dict[str, float] = {}
    app = rayservice_serve_config(rayservice)["applications"][0]
    for dep in app["deployments"]:
        opts = dep.get("ray_actor_options", {})
        need = {"CPU": float(opts.get("num_cpus", 1)), **opts.get("resources", {})}
        replicas = dep.get("autoscaling_config", {}).get("max_replicas", dep.get("num_replicas", 1))
        # one replica fits on one pod of some group
        assert any(all(offer.get(r, 0) >= n for r, n in need.items())
                   for offer, _ in cluster.values()), dep["name"]  # fmt: skip
        for res, amount in need.items():
            asked[res] = asked.get(res, 0.0) + amount * replicas
    for res, amount in asked.items():
        assert amount <= total.get(res, 0.0), f"{res}: {amount} asked, {total.get(res)} offered"
    # The Embedders live on the embedder group: its pods are the only ones that offer the slot.
    offering = [name for name, (offer, _) in cluster.items() if EMBEDDER_RESOURCE in offer]
    assert offering == ["embedder"]
