"""`image-search serve` refuses to start, quickly and clearly, when a port it needs is taken."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.ingress import PROXY_LINE
from cli import serve
from cli.main import build_parser
from cli.serve import EXIT_CANNOT_START, PortNeed, port_problems
from deployments.cluster import direct_ingress_env, free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_a_taken_port_names_the_port_and_what_to_change(taken_port: int) -> None:
    free = free_port()
    problems = port_problems(
        [
            PortNeed("HTTP API", "127.0.0.1", taken_port, "ISE__SERVER__PORT"),
            PortNeed("Ray dashboard", "127.0.0.1", free, "ISE_DASHBOARD_PORT"),
        ]
    )
    assert len(problems) == 1
    assert f"127.0.0.1:{taken_port}" in problems[0] and "HTTP API" in problems[0]
    assert "ISE__SERVER__PORT" in problems[0] and "in use" in problems[0]


def test_one_port_for_two_listeners_is_refused() -> None:
    port = free_port()
    problems = port_problems(
        [
            PortNeed("HTTP API", "127.0.0.1", port, "ISE__SERVER__PORT"),
            PortNeed("Prometheus metrics", "127.0.0.1", port, "ISE_METRICS_PORT"),
        ]
    )
    assert problems == [
        f"port {port} is configured for both the HTTP API and the Prometheus metrics: "
        "set ISE_METRICS_PORT to another port"
    ]


def test_all_free_is_no_problem() -> None:
    needs = [PortNeed(w, "127.0.0.1", free_port(), "X") for w in ("HTTP API", "Ray dashboard")]
    assert port_problems(needs) == []


def test_dashboard_port_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISE_DASHBOARD_PORT", "18265")
    assert build_parser().parse_args(["serve"]).dashboard_port == 18265
    monkeypatch.delenv("ISE_DASHBOARD_PORT")
    assert build_parser().parse_args(["serve"]).dashboard_port == 8265


def serve_args(*extra: str) -> argparse.Namespace:
    args = build_parser().parse_args(["serve", *extra])
    args.metrics_port, args.dashboard_port = free_port(), free_port()
    return args


def test_serve_exits_before_ray_when_the_http_port_is_taken(
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ISE__SERVER__PORT", str(taken_port))

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray must not start when a port is taken")

    monkeypatch.setattr(serve, "init_local_ray", no_ray)
    with caplog.at_level(logging.ERROR, logger="image_search"):
        assert serve.cmd_serve(serve_args()) == EXIT_CANNOT_START
    assert f":{taken_port} for the HTTP API" in caplog.text and "ISE__SERVER__PORT" in caplog.text


class StandIns:
    """Ray and `serve run` stood in for: what cmd_serve asked of them, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stop: BaseException):
        self.events: list[tuple[str, object]] = []
        self.serve_config: dict[str, Any] = {}
        monkeypatch.setenv("ISE__STORES__VECTORS_URI", str(tmp_path / "vectors.db"))
        # cmd_serve sets Ray's direct ingress variables for the cluster it starts: they must
        # not outlive the test (a later test's Ray would inherit them).
        for key in direct_ingress_env(0):
            monkeypatch.setenv(key, "")
            monkeypatch.delenv(key)
        self.ignored = ignored_signals(monkeypatch, self.events)
        monkeypatch.setattr(
            serve, "init_local_ray", lambda address, *a, **k: self.events.append(("ray", address))
        )
        monkeypatch.setattr(
            serve, "_stop_embedded_vectors", lambda uri: self.events.append(("stop lite", uri))
        )
        monkeypatch.setattr(
            serve, "_stop_local_ray", lambda: self.events.append(("stop ray", None))
        )

        def serve_run_main(args: list[str], standalone_mode: bool) -> None:
            self.events.append(("serve run", args[0]))
            self.serve_config.update(yaml.safe_load(Path(args[0]).read_text(encoding="utf-8")))
            raise stop  # how `serve run` ends: Ctrl-C (or its click form) here

        # cmd_serve imports `serve run` lazily; stand in for it without importing Ray Serve.
        scripts = types.ModuleType("ray.serve.scripts")
        scripts.run = types.SimpleNamespace(main=serve_run_main)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "ray.serve.scripts", scripts)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def test_joining_a_cluster_checks_no_local_port_and_stops_serve_on_sigterm(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The ports belong to the joined cluster (its Serve proxy may well hold server.port).
    monkeypatch.setenv("ISE__SERVER__PORT", str(taken_port))
    ray = StandIns(monkeypatch, tmp_path, KeyboardInterrupt())
    assert serve.cmd_serve(serve_args("--address", "127.0.0.1:6379")) == 0
    # The SIGTERM handler goes in after ray.init, which would replace it.
    # Signals are ignored from the moment the clean-up starts, so none can cut it short.
    assert ray.kinds() == ["ray", "signal", "serve run", "signal", "signal", "stop lite"]
    assert ray.events[0] == ("ray", "127.0.0.1:6379")
    # The joined cluster's proxy serves the API port; its Ray settings are not ours to change.
    assert ray.serve_config["http_options"]["port"] == taken_port
    assert not set(direct_ingress_env(0)) & set(os.environ)
    assert ray.events[1] == ("signal", serve._on_sigterm_joined)
    assert ray.events[5] == ("stop lite", str(tmp_path / "vectors.db"))
    assert ray.ignored == {signal.SIGTERM, signal.SIGINT}
    # SIGTERM takes Ctrl-C's path, on which `serve run` shuts down the apps it deployed there.
    ray.ignored.clear()
    with pytest.raises(KeyboardInterrupt):
        serve._on_sigterm_joined(signal.SIGTERM, None)
    assert ray.ignored == {signal.SIGTERM, signal.SIGINT}  # a second SIGTERM cannot interrupt


def test_a_local_cluster_is_started_then_stopped_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import click

    caplog.set_level(logging.INFO, logger="image_search")

    api = free_port()
    monkeypatch.setenv("ISE__SERVER__PORT", str(api))
    # Ctrl-C before `serve run` waits reaches us as click's Abort: a clean stop all the same.
    ray = StandIns(monkeypatch, tmp_path, click.exceptions.Abort())
    assert serve.cmd_serve(serve_args()) == 0
    # The Ingress replica takes the API port (direct ingress, set before the cluster starts,
    # whose processes inherit it); Serve's proxy another one, on the same host.
    assert {k: os.environ.get(k) for k in direct_ingress_env(api)} == direct_ingress_env(api)
    proxy = ray.serve_config["http_options"]
    assert proxy["host"] == "127.0.0.1" and proxy["port"] != api
    # bench.ingress finds the proxy from this log line.
    found = PROXY_LINE.search(caplog.text)
    assert found and (found.group(1), int(found.group(2))) == ("127.0.0.1", proxy["port"])
    assert ray.events[0] == ("ray", None)  # no address: init_local_ray starts a new cluster
    assert ray.events[1] == ("signal", serve._on_sigterm_local)
    # The replicas stop before the Milvus Lite server they use.
    assert ray.kinds()[2:] == ["serve run", "signal", "signal", "stop ray", "stop lite"]


def test_direct_ingress_can_be_turned_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import click

    api = free_port()
    monkeypatch.setenv("ISE__SERVER__PORT", str(api))
    ray = StandIns(monkeypatch, tmp_path, click.exceptions.Abort())
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
    assert serve.cmd_serve(serve_args()) == 0
    assert ray.serve_config["http_options"]["port"] == api  # Serve's proxy serves the API


def test_sigterm_on_a_local_cluster_exits_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    # SystemExit unwinds through `finally` (Milvus Lite) and Ray's atexit hook (the cluster);
    # `make serve` sends a second SIGTERM right after the first: it must find them ignored.
    ignored = ignored_signals(monkeypatch, [])
    with pytest.raises(SystemExit) as exited:
        serve._on_sigterm_local(signal.SIGTERM, None)
    assert exited.value.code == 0
    assert ignored == {signal.SIGTERM, signal.SIGINT}


def ignored_signals(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, object]]) -> set[int]:
    """Stand in for signal.signal (never change this process's handlers): handlers set go to
    events, and the signals set to be ignored are collected in the returned set."""
    ignored: set[int] = set()

    def fake(sig: int, handler: object) -> None:
        events.append(("signal", handler))
        if handler is signal.SIG_IGN:
            ignored.add(sig)

    monkeypatch.setattr(signal, "signal", fake)
    return ignored
