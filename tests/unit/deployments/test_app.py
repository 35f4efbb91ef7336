"""serve_config.yaml and the graph builder agree: import path, deployments, allocator settings."""

from __future__ import annotations

import importlib

import yaml

from deployments.app import build_app, serve_config_options
from deployments.cluster import LOCAL_RAY_ENV, REPLICA_LOOP_ENV, SERVE_TRANSPORT_ENV
from image_search.embedding import ALLOCATOR_ENV
from tests.conftest import ROOT


def test_serve_config_points_at_the_builder_and_names_every_deployment() -> None:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text(encoding="utf-8"))
    module, _, attr = doc["applications"][0]["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attr) is build_app
    options = serve_config_options(ROOT / "serve_config.yaml")
    assert set(options) == {"Ingress", "Decoder", "Embedder", "Indexer"}


def test_embedder_runs_with_the_engines_allocator_settings() -> None:
    embedder = serve_config_options(ROOT / "serve_config.yaml")["Embedder"]
    env = embedder["ray_actor_options"]["runtime_env"]["env_vars"]
    assert {k: env.get(k) for k in ALLOCATOR_ENV} == ALLOCATOR_ENV
    # A batch can only fill when a replica may hold at least that many requests.
    assert embedder["max_ongoing_requests"] >= embedder["user_config"]["max_batch_size"]


def test_every_replica_runs_our_code_and_its_handles_on_its_own_loop() -> None:
    # Set on the replicas, not on the cluster: in a driver the router switch would make a
    # handle's `.result()` outside an event loop raise (deployments.cluster.REPLICA_LOOP_ENV).
    for name, options in serve_config_options(ROOT / "serve_config.yaml").items():
        env = options["ray_actor_options"]["runtime_env"]["env_vars"]
        assert {k: env.get(k) for k in REPLICA_LOOP_ENV} == REPLICA_LOOP_ENV, name
    for key in REPLICA_LOOP_ENV:
        assert key not in SERVE_TRANSPORT_ENV and key not in LOCAL_RAY_ENV


def test_build_app_binds_the_four_deployments_with_the_given_options() -> None:
    app = build_app({"config": str(ROOT / "config.yaml"),
                     "deployment_options": {"Decoder": {"num_replicas": 3}}})  # fmt: skip
    ingress = app._bound_deployment  # the graph's root, as Serve builds it
    assert ingress.name == "Ingress"
    children = [a for a in ingress.init_args if hasattr(a, "_bound_deployment")]
    names = [c._bound_deployment.name for c in children]
    assert names == ["Decoder", "Embedder", "Indexer"]
    assert children[0]._bound_deployment.num_replicas == 3


def test_the_ingress_keeps_a_call_under_way_for_each_replica_it_calls() -> None:
    # deployments/hops.py: calls beyond hop_lanes wait to go together, so fewer lanes than
    # replicas would leave a replica idle under load.
    options = serve_config_options(ROOT / "serve_config.yaml")
    lanes = options["Ingress"]["user_config"]["hop_lanes"]
    for name in ("Decoder", "Embedder"):
        assert lanes == options[name]["autoscaling_config"]["max_replicas"], name


def test_uploads_decode_in_the_embedders_while_their_decode_threads_have_room() -> None:
    # serve_config.yaml's direct_decode_max: as many uploads as the Embedders decode at once,
    # and the code's default (a deployment started without user_config) the same.
    from deployments.embedder import DECODE_THREADS
    from deployments.flows import DIRECT_DECODE_MAX

    options = serve_config_options(ROOT / "serve_config.yaml")
    direct = options["Ingress"]["user_config"]["direct_decode_max"]
    embedders = options["Embedder"]["autoscaling_config"]["max_replicas"]
    assert direct == DECODE_THREADS * embedders == DIRECT_DECODE_MAX
