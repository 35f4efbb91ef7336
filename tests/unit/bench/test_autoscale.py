"""The pure parts of bench/autoscale.py, on synthetic inputs: no service, no Ray cluster.

The figure in the README is only as right as these: which replicas count (RUNNING only), what
serve_config.yaml's bounds and delays are, and when a deployment reached max and came back.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bench.autoscale import (
    SERVE_CONFIG,
    Done,
    Metrics,
    Replicas,
    Sample,
    Scaling,
    apply_overrides,
    at_rest,
    autoscaler_metrics,
    dashboard_url,
    figure,
    metrics_url,
    read_scaling,
    replica_counts,
    scaling_summary,
    table,
    windows,
)


def deployment(states: list[str], target: int, status: str = "HEALTHY") -> dict[str, Any]:
    return {
        "name": "x", "status": status, "target_num_replicas": target,
        "replicas": [{"replica_id": f"r{i}", "state": s} for i, s in enumerate(states)],
    }  # fmt: skip


def details(**deps: dict[str, Any]) -> dict[str, Any]:
    """The shape of GET /api/serve/applications/ (ServeInstanceDetails), trimmed."""
    app = {"status": "RUNNING", "deployments": deps}
    return {"proxy_location": "HeadOnly", "applications": {"image_search": app}}


SCALING = {
    "Ingress": Scaling(1, 1, False),
    "Decoder": Scaling(1, 2, True, 4.0, 3.0, 60.0, 30.0),
    "Embedder": Scaling(1, 2, True, 16.0, 5.0, 120.0, 30.0),
}


def series(name: str, points: list[tuple[float, int]]) -> list[Sample]:
    return [Sample(t, {name: Replicas(n, n, "HEALTHY")}) for t, n in points]


# -- the status payload -------------------------------------------------------------------------
def test_only_running_replicas_count() -> None:
    payload = details(
        Decoder=deployment(["RUNNING", "STARTING"], 2, "UPSCALING"),
        Embedder=deployment(["RUNNING", "RUNNING", "STOPPING"], 1, "DOWNSCALING"),
        Indexer=deployment(["RUNNING"], 1),
    )
    counts = replica_counts(payload, "image_search")
    assert counts["Decoder"] == Replicas(1, 2, "UPSCALING")
    assert counts["Embedder"] == Replicas(2, 1, "DOWNSCALING")
    assert counts["Indexer"] == Replicas(1, 1, "HEALTHY")


@pytest.mark.parametrize(
    "payload",
    [{}, {"applications": {}}, {"applications": {"other": {"deployments": {}}}},
     {"applications": {"image_search": {"deployments": None}}}],
)  # fmt: skip
def test_no_application_is_no_deployments(payload: dict[str, Any]) -> None:
    # Before the app is deployed (or after it is gone) the payload has no such application.
    assert replica_counts(payload, "image_search") == {}


def test_a_deployment_without_replicas_or_target() -> None:
    counts = replica_counts(details(Decoder={"status": "UPDATING"}), "image_search")
    assert counts["Decoder"] == Replicas(0, None, "UPDATING")


def test_at_rest_needs_running_and_target_at_min() -> None:
    rest = {"Ingress": Replicas(1, 1, ""), "Decoder": Replicas(1, 1, ""),
            "Embedder": Replicas(1, 1, "")}  # fmt: skip
    assert at_rest(rest, SCALING)
    # Still two running, or one running but Serve heading for two: not at rest.
    assert not at_rest({**rest, "Embedder": Replicas(2, 1, "")}, SCALING)
    assert not at_rest({**rest, "Decoder": Replicas(1, 2, "")}, SCALING)
    # A deployment missing from the payload is not at rest either.
    assert not at_rest({"Ingress": Replicas(1, 1, "")}, SCALING)
    # Fixed deployments do not matter.
    assert at_rest({**rest, "Ingress": Replicas(0, 1, "")}, SCALING)


def test_dashboard_url_from_the_service_log() -> None:
    log = ("2026 INFO image_search: API: http://127.0.0.1:8000/docs  dashboard: "
           "http://127.0.0.1:52853  Prometheus: http://127.0.0.1:8080/metrics\n")  # fmt: skip
    assert dashboard_url(log) == "http://127.0.0.1:52853"
    with pytest.raises(RuntimeError):
        dashboard_url("nothing here")


# -- serve_config.yaml --------------------------------------------------------------------------
def test_read_scaling_takes_bounds_and_fills_serves_defaults() -> None:
    doc = {"applications": [{"name": "app", "deployments": [
        {"name": "A", "num_replicas": 2},
        {"name": "B"},
        {"name": "C", "autoscaling_config": {"min_replicas": 1, "max_replicas": 3,
                                             "target_ongoing_requests": 5,
                                             "downscale_delay_s": 45}},
    ]}]}  # fmt: skip
    app, scaling = read_scaling(doc)
    assert app == "app"
    assert scaling["A"] == Scaling(2, 2, False)
    assert scaling["B"] == Scaling(1, 1, False)
    c = scaling["C"]
    assert (c.min_replicas, c.max_replicas, c.autoscaled) == (1, 3, True)
    assert c.target_ongoing_requests == 5
    assert c.downscale_delay_s == 45
    # Unset: Serve's own default, not a number of ours (30 s in Ray 2.x).
    assert c.look_back_period_s > 0
    assert c.settle_s == 45 + c.look_back_period_s
    assert scaling["A"].settle_s == 0


def test_read_scaling_unknown_application() -> None:
    with pytest.raises(ValueError):
        read_scaling({"applications": [{"name": "a", "deployments": []}]}, "b")


def test_the_projects_serve_config_autoscales_decoder_and_embedder() -> None:
    # The benchmark is about these two; if that changes, so must its report.
    app, scaling = read_scaling(yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8")))
    assert app == "image_search"
    assert {n for n, s in scaling.items() if s.autoscaled} == {"Decoder", "Embedder"}
    assert {"Ingress", "Indexer"} <= set(scaling)


# -- the timeline -------------------------------------------------------------------------------
def test_summary_first_at_max_and_back_at_min() -> None:
    samples = series("Embedder", [(-5, 1), (0, 1), (8, 1), (9, 2), (30, 2), (90, 2),
                                  (200, 2), (251, 1), (260, 1)])  # fmt: skip
    got = scaling_summary(samples, SCALING, load_end=92.0)["Embedder"]
    assert got["peak"] == 2
    assert got["first_above_min_s"] == 9
    assert got["first_at_max_s"] == 9
    assert got["back_at_min_s"] == 251
    assert got["back_after_load_s"] == pytest.approx(251 - 92)


def test_summary_never_scaled() -> None:
    samples = series("Embedder", [(0, 1), (10, 1), (100, 1)])
    got = scaling_summary(samples, SCALING, load_end=90.0)["Embedder"]
    assert got["peak"] == 1
    assert got["first_at_max_s"] is None
    assert got["back_at_min_s"] is None
    assert got["back_after_load_s"] is None


def test_summary_scaled_but_never_back() -> None:
    samples = series("Decoder", [(0, 1), (5, 2), (100, 2)])
    got = scaling_summary(samples, SCALING, load_end=90.0)["Decoder"]
    assert (got["first_at_max_s"], got["back_at_min_s"]) == (5, None)


def test_summary_skips_failed_reads_and_fixed_deployments() -> None:
    samples = [Sample(0, None, "timeout"), *series("Decoder", [(1, 1), (2, 2), (70, 1)])]
    got = scaling_summary(samples, SCALING, load_end=60.0)
    assert set(got) == {"Decoder", "Embedder"}  # Ingress is fixed
    assert got["Decoder"]["back_at_min_s"] == 70
    assert got["Embedder"]["peak"] is None  # never seen


def test_windows_load_replicas_rate_and_p50() -> None:
    samples = series("Decoder", [(-8, 1), (-1, 1), (3, 1), (7, 2), (15, 2), (25, 1)])
    done = [Done(2, "upload", "200", 0.1), Done(4, "search", "200", 0.3),
            Done(6, "search", "503", 5.0), Done(12, "upload", "200", 0.2)]  # fmt: skip
    rows = windows(samples, done, load=(0.0, 15.0))
    assert [r.start for r in rows] == [-10, 0, 10, 20]
    assert [r.load for r in rows] == ["off", "on", "part", "off"]
    assert [r.replicas["Decoder"] for r in rows] == [(1, 1), (1, 2), (2, 2), (1, 1)]
    assert [r.at_end["Decoder"] for r in rows] == [1, 2, 2, 1]
    assert rows[1].ok == 2 and rows[1].failed == 1
    assert rows[1].rps == pytest.approx(0.2)
    assert rows[1].p50_ms == pytest.approx(200.0)  # of the 200s only
    assert rows[0].p50_ms is None and rows[0].rps == 0


def test_windows_of_nothing() -> None:
    assert windows([], [], (0.0, 1.0)) == []


def test_table_and_figure() -> None:
    samples = [Sample(t, {"Decoder": Replicas(d, d, ""), "Embedder": Replicas(1, 1, "")})
               for t, d in [(-5, 1), (5, 1), (8, 2), (15, 2), (22, 2), (25, 1)]]  # fmt: skip
    rows = windows(samples, [], load=(0.0, 20.0))
    lines = table(rows, ["Decoder", "Embedder"])
    assert "1-2" in lines[3]  # the load's first window: scaled up within it
    fig = figure(rows, ["Decoder", "Embedder", "Indexer"])
    assert fig[1].endswith(".##.")
    assert fig[2].endswith("1221")  # RUNNING at each window's end: up in 0..10, down in 20..30
    assert fig[3].endswith("1111")
    assert fig[4].endswith("????")  # never in the payload
    assert figure([], ["Decoder"]) == []


# -- the autoscaler's own metrics ---------------------------------------------------------------
PROMETHEUS = """\
# HELP ray_serve_autoscaling_total_requests Total number of requests as seen by the autoscaler.
# TYPE ray_serve_autoscaling_total_requests gauge
ray_serve_autoscaling_total_requests{Component="w",application="app",deployment="Embedder"} 15.7
ray_serve_autoscaling_total_requests{application="app",deployment="Decoder"} 2.25
ray_serve_autoscaling_total_requests{application="other",deployment="Decoder"} 99.0
ray_serve_autoscaling_desired_replicas{application="app",deployment="Embedder"} 0.98
ray_serve_replica_processing_queries{application="app",deployment="Embedder"} 3.0
ray_serve_autoscaling_total_requests{application="app"} 1.0
ray_serve_autoscaling_desired_replicas{application="app",deployment="Decoder"} NaN
"""


def test_autoscaler_metrics_of_the_application() -> None:
    got = autoscaler_metrics(PROMETHEUS, "app")
    assert got["Embedder"] == {"requests": 15.7, "desired": 0.98}
    assert got["Decoder"]["requests"] == 2.25  # not the other application's 99
    assert set(got) == {"Embedder", "Decoder"}  # a line without a deployment is skipped
    assert autoscaler_metrics("", "app") == {}


def test_metrics_url_from_the_service_log() -> None:
    log = "dashboard: http://127.0.0.1:5  Prometheus: http://127.0.0.1:8080/metrics\n"
    assert metrics_url(log) == "http://127.0.0.1:8080/metrics"
    assert metrics_url("no such line") is None


def test_windows_and_summary_carry_what_the_autoscaler_counted() -> None:
    samples = series("Embedder", [(1, 1), (11, 1)])
    metrics = [
        Metrics(2, {"Embedder": {"requests": 9.0}}),
        Metrics(7, {"Embedder": {"requests": 14.0}}),
        Metrics(12, {"Embedder": {"desired": 1.0}}),
    ]
    rows = windows(samples, [], (0.0, 20.0), metrics=metrics)
    assert rows[0].counted == {"Embedder": 14.0}
    assert rows[1].counted == {}  # no requests figure in that window
    got = scaling_summary(samples, SCALING, 20.0, metrics)["Embedder"]
    assert got["most_counted_requests"] == 14.0
    lines = table(rows, ["Embedder"], ["Embedder"])
    assert "14.0" in lines[2] and "Embedder n" in lines[0]


# -- trying a change of serve_config.yaml -------------------------------------------------------
def test_apply_overrides_sets_a_copy() -> None:
    doc = {"applications": [{"name": "app", "deployments": [
        {"name": "Embedder", "autoscaling_config": {"min_replicas": 1, "max_replicas": 2,
                                                    "target_ongoing_requests": 16}},
        {"name": "Indexer", "num_replicas": 1},
    ]}]}  # fmt: skip
    out = apply_overrides(doc, ["Embedder.autoscaling_config.target_ongoing_requests=8",
                                "Indexer.ray_actor_options.num_cpus=0.5"])  # fmt: skip
    embedder, indexer = out["applications"][0]["deployments"]
    assert embedder["autoscaling_config"]["target_ongoing_requests"] == 8  # YAML: an int
    assert indexer["ray_actor_options"] == {"num_cpus": 0.5}
    # The original is untouched.
    assert doc["applications"][0]["deployments"][0]["autoscaling_config"][
        "target_ongoing_requests"] == 16  # fmt: skip
    assert read_scaling(out)[1]["Embedder"].target_ongoing_requests == 8


@pytest.mark.parametrize("bad", ["Embedder", "Embedder=1", "Nope.num_replicas=2"])
def test_apply_overrides_rejects(bad: str) -> None:
    doc = {"applications": [{"name": "app", "deployments": [{"name": "Embedder"}]}]}
    with pytest.raises(ValueError):
        apply_overrides(doc, [bad])
