"""serveConfigV2 cannot drift from serve_config.yaml: the manifests are rendered from it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import render
from tests.conftest import ROOT
from tests.unit.deploy.conftest import ray_containers


def serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return config


def test_committed_manifests_are_rendered_from_their_sources() -> None:
    diffs = render.stale(render.render_all())
    assert diffs == [], "stale manifests, run `python -m deploy.render`:\n" + "\n".join(diffs)


def _lookup(node: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if isinstance(node, list):
            node = next((e for e in node if e.get("name") == key), None)
            if node is None:
                return False, None
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return False, None
    return True, node


def _put_back(config: dict[str, Any], path: tuple[str, ...], present: bool, value: Any) -> None:
    *parents, leaf = path
    found, parent = _lookup(config, tuple(parents))
    assert found, path
    if present:
        parent[leaf] = copy.deepcopy(value)
    else:
        parent.pop(leaf)


def test_serve_config_v2_is_serve_config_yaml_but_for_the_declared_overrides(
    rayservice: dict[str, Any],
) -> None:
    # Read back from the committed manifest, undo each declared override: serve_config.yaml,
    # key for key. Whatever else differs (a deployment, a batch size, autoscaling) fails here.
    deployed = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    source = serve_config()
    for override in render.K8S_SERVE_OVERRIDES:
        found, value = _lookup(deployed, override.path)
        assert found and value == override.value, override.path
        present, original = _lookup(source, override.path)
        _put_back(deployed, override.path, present, original)
    assert deployed == source


def test_every_override_changes_something() -> None:
    # An override serve_config.yaml has caught up with is noise: delete it from render.py.
    source = serve_config()
    for override in render.K8S_SERVE_OVERRIDES:
        present, original = _lookup(source, override.path)
        assert not present or original != override.value, override.path
        assert override.reason


def _unknown(raw: dict[str, Any], model: Any) -> set[str]:
    return set(raw) - set(model.model_fields)


def test_serve_config_v2_is_a_valid_serve_deploy_config(rayservice: dict[str, Any]) -> None:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    raw = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(raw)  # what the dashboard does with a PUT
    (app,) = config.applications
    assert app.import_path == serve_config()["applications"][0]["import_path"]
    assert config.http_options.host == "0.0.0.0"
    embedder = next(d for d in app.deployments if d.name == "Embedder")
    assert embedder.ray_actor_options.resources == {render.EMBEDDER_RESOURCE: 1}
    # Serve's schemas ignore unknown keys (forward compatibility), so a misspelled option
    # would be dropped without a word: every key must be one Serve knows.
    assert _unknown(raw, ServeDeploySchema) == set()
    assert _unknown(raw["http_options"], HTTPOptionsSchema) == set()
    (raw_app,) = raw["applications"]
    assert _unknown(raw_app, ServeApplicationSchema) == set()
    for dep in raw_app["deployments"]:
        assert _unknown(dep, DeploymentSchema) == set(), dep["name"]
        assert _unknown(dep.get("ray_actor_options", {}), RayActorOptionsSchema) == set()
        assert _unknown(dep.get("autoscaling_config", {}), AutoscalingConfig) == set()
    assert _unknown({"num_replica": 1}, DeploymentSchema) == {"num_replica"}  # it can fail


def test_a_renamed_deployment_fails_the_render() -> None:
    source = serve_config()
    for dep in source["applications"][0]["deployments"]:
        if dep["name"] == "Embedder":
            dep["name"] = "Embedder2"
    with pytest.raises(render.RenderError, match="no entry named 'Embedder'"):
        render.k8s_serve_config(source)


def test_substitute_blocks_keep_their_indentation_and_scalars_fill_in() -> None:
    template = "a:\n  b: {{ image }}\n  c:\n    {{ env }}\n"
    out = render.substitute(template, {"env": "- x\n\n- y\n"}, {"image": "img:1"})
    assert out == "a:\n  b: img:1\n  c:\n    - x\n\n    - y\n"
    assert yaml.safe_load(out) == {"a": {"b": "img:1", "c": ["x", "y"]}}
    with pytest.raises(render.RenderError, match="unknown or misplaced placeholder"):
        render.substitute("a: {{ imgae }}\n", {}, {"image": "img:1"})
    with pytest.raises(render.RenderError, match="misplaced"):
        render.substitute("a: {{ env }}\n", {"env": "- x"}, {})  # a block inside a line


def test_image_override_changes_only_the_images() -> None:
    default = render.render_all()
    custom = render.render_all(image="registry.example.com/ise:1.2")
    for name, text in custom.items():
        changed = [(a, b) for a, b in zip(default[name].splitlines(), text.splitlines(),
                                          strict=True) if a != b]  # fmt: skip
        assert changed and all(b.strip() == "image: registry.example.com/ise:1.2"
                               for _, b in changed)  # fmt: skip
        assert {c["image"] for c in ray_containers(yaml.safe_load(text))} == {
            "registry.example.com/ise:1.2"
        }


def test_render_cli_writes_and_checks(tmp_path: Path) -> None:
    assert render.main(["--check", "--out", str(tmp_path)]) == 1  # nothing there yet
    assert render.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render.MANIFESTS.values())
    assert render.main(["--check", "--out", str(tmp_path)]) == 0
    target = tmp_path / "rayservice.yaml"
    target.write_text(target.read_text().replace("max_batch_size: 16", "max_batch_size: 8"))
    assert render.main(["--check", "--out", str(tmp_path)]) == 1
