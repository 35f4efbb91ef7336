"""bench.cpu: CPU per request by process role, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cpu

# Burns 0.4 s of CPU, says so, then waits (alive, so it can be sampled) until stdin closes.
BURN = (
    "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    "print('burnt', flush=True)\nsys.stdin.read()\n"
)


@pytest.mark.parametrize(
    ("cmdline", "want"),
    [
        ("ray::ServeReplica:image_search:Embedder", "Embedder"),
        ("ray::ServeReplica:image_search:Ingress extra args", "Ingress"),
        ("ray::ProxyActor", "Serve HTTP proxy"),
        ("ray::ServeController.listen_for_change", "Serve controller"),
        ("/x/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/a", "raylet"),
        ("/x/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/a", "GCS"),
        ("/v/bin/python3.11 -m milvus_lite server --data-dir /tmp/a", "Milvus Lite"),
        ("/v/bin/python -m image_search.stores.lite_search server --data-dir /a", "Milvus Lite"),
        ("/v/bin/python -m bench.reference_server --port 1", "reference server"),
        ("/v/bin/python /v/bin/image-search serve", "image-search serve"),
        ("ray::IDLE", "other Ray"),
        ("/usr/bin/sleep 5", "other"),
    ],
)
def test_role_names_a_process_by_its_command_line(cmdline: str, want: str) -> None:
    assert cpu.role(cmdline) == want


def test_spent_is_per_request_by_role_largest_first() -> None:
    before = cpu.Sample({1: ("Ingress", 10.0), 2: ("Embedder", 5.0), 3: ("Decoder", 1.0)})
    after = cpu.Sample({
        1: ("Ingress", 11.0),  # 1 s
        2: ("Embedder", 8.0),  # 3 s
        # 3 ended: its CPU is lost, not negative
        4: ("Decoder", 0.5),  # new since `before` (a replica scaled up): counts from zero
        5: ("Ingress", 0.5),  # a second Ingress process adds to the role
    })  # fmt: skip
    use = cpu.spent(before, after, wall_s=2.5, requests=10)
    assert use["by_role_ms"] == {"Embedder": 300.0, "Ingress": 150.0, "Decoder": 50.0}
    assert list(use["by_role_ms"]) == ["Embedder", "Ingress", "Decoder"]
    assert use["ms_per_request"] == pytest.approx(500.0)
    assert use["cores"] == pytest.approx(5.0 / 2.5)


def test_a_process_that_changed_role_is_charged_its_new_cpu_to_its_new_role() -> None:
    # Ray starts idle workers ahead of need; one becomes a replica when Serve places it.
    before = cpu.Sample({7: ("other Ray", 3.0)})
    after = cpu.Sample({7: ("Embedder", 5.0)})
    assert cpu.spent(before, after, 1.0, 1)["by_role_ms"] == {"Embedder": 2000.0}


def test_describe_names_the_top_roles_and_sums_the_rest() -> None:
    use = {"cores": 1.94, "ms_per_request": 150.0,
           "by_role_ms": {"Decoder": 42.0, "Ingress": 25.0, "GCS": 3.0, "raylet": 2.0}}  # fmt: skip
    assert cpu.describe(use, top=2) == (
        "150 ms/request at 1.94 cores: Decoder 42, Ingress 25, the rest 5"
    )
    assert cpu.describe({**use, "cores": None}, top=4).startswith("150 ms/request at - cores")


def _burner(**kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", BURN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )  # type: ignore[call-overload]


def test_sample_finds_the_servers_processes_and_the_load_generator(tmp_path: Path) -> None:
    folder = str(tmp_path)
    # One in a session of its own (as bench.processes starts a server); one only naming the
    # server's folder in its environment (as Ray's workers do); one that is neither.
    own = _burner(start_new_session=True)
    named = _burner(env={**os.environ, "RAY_TMPDIR": folder})
    other = _burner()
    procs = (own, named, other)
    try:
        before = cpu.sample(own.pid, folder)
        for proc in procs:  # each burns 0.4 s of CPU, says so, then waits for its stdin
            assert proc.stdout is not None and proc.stdout.readline() == "burnt\n"
        after = cpu.sample(own.pid, folder)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
    assert before.cpu_s[os.getpid()][0] == cpu.LOAD_GENERATOR
    assert {own.pid, named.pid} <= set(after.cpu_s)
    assert other.pid not in after.cpu_s
    for proc in (own, named):
        grew = after.cpu_s[proc.pid][1] - before.cpu_s.get(proc.pid, ("", 0.0))[1]
        assert grew >= 0.2, (proc.pid, before.cpu_s.get(proc.pid), after.cpu_s[proc.pid])
