"""The backfill RayJob runs a module that exists, with arguments its own parser accepts."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
from typing import Any

import pytest

import pipelines.backfill
import pipelines.runtime
from image_search.config import load_settings
from pipelines.options import PoolOptions, pool_options_from_args
from pipelines.runtime import parse_overrides
from tests.conftest import ROOT
from tests.unit.deploy.conftest import cluster_spec, groups, quantity, ray_container


def entrypoint(rayjob: dict[str, Any]) -> tuple[str, list[str]]:
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"], argv
    return argv[2], argv[3:]


def parsed_args(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> argparse.Namespace:
    """argv through `python -m pipelines.backfill`'s own parser, stopped before it runs."""
    seen: list[argparse.Namespace] = []

    def capture(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(pipelines.backfill, "command", capture)
    monkeypatch.setattr(pipelines.runtime, "setup_logging", lambda verbose=False: None)
    assert pipelines.backfill.main(argv) == 0
    return seen[0]


def test_entrypoint_module_exists(rayjob: dict[str, Any]) -> None:
    module, _ = entrypoint(rayjob)
    assert module == "pipelines.backfill"
    assert importlib.util.find_spec(module) is not None


def test_entrypoint_arguments_parse(
    rayjob: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, argv = entrypoint(rayjob)
    args = parsed_args(monkeypatch, argv)
    # In a pod only an S3 prefix is there to read (a folder would need a volume).
    assert args.source.startswith("s3://")
    assert args.report and args.report.startswith("/")
    pool_options_from_args(args)  # the same check the job makes before starting
    parse_overrides(args.overrides)


def test_the_parser_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        parsed_args(monkeypatch, ["--source", "s3://b/p", "--embedactors", "3"])  # typo
    with pytest.raises(SystemExit):
        parsed_args(monkeypatch, ["--report", "/tmp/r.json"])  # --source is required


def test_the_embed_pool_fits_on_the_workers(
    rayjob: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    opts: PoolOptions = pool_options_from_args(parsed_args(monkeypatch, entrypoint(rayjob)[1]))
    workers = [(ray_container(g), g) for name, g in groups(rayjob) if name != "head"]
    per_pod = [float(quantity(c["resources"]["limits"]["cpu"])) for c, _ in workers]
    total = sum(cpus * g["maxReplicas"] for cpus, (_, g) in zip(per_pod, workers, strict=True))
    # An actor larger than any pod, or a pool larger than the cluster, waits forever.
    assert opts.embed_cpus <= max(per_pod)
    asked = opts.embed_actors * opts.embed_cpus + opts.write_actors * opts.write_cpus
    assert asked + opts.decode_cpus <= total, "no room left for a single read/decode task"
    # docs/pipelines.md: each embed actor's CPUs match model.threads.
    assert opts.embed_cpus >= load_settings(ROOT / "config.yaml", environ={}).model.threads


def test_the_driver_can_run_on_a_head_without_cpus(rayjob: dict[str, Any]) -> None:
    params = cluster_spec(rayjob)["headGroupSpec"]["rayStartParams"]
    if params.get("num-cpus") == "0":
        # The entrypoint asks for none, or it would never be scheduled.
        assert not rayjob["spec"].get("entrypointNumCpus")


def test_cleanup_settings_are_consistent(rayjob: dict[str, Any]) -> None:
    spec = rayjob["spec"]
    # KubeRay (validation.go): a TTL needs shutdownAfterJobFinishes.
    if spec.get("ttlSecondsAfterFinished", 0) > 0:
        assert spec["shutdownAfterJobFinishes"] is True
    assert "clusterSelector" not in spec  # its own cluster, not the service's
