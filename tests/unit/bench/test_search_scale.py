"""The pure parts of bench/search_scale.py: vectors, recall, percentiles and the rows it writes.

No server and no model: the views are random unit vectors, the metadata store is SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench import search_scale as ss
from bench.compare import SIGNALS
from image_search.records import milvus_id_for, valid_meta_uuid
from image_search.stores.base import LIVE
from image_search.stores.metadata import Content, SqlMetadataStore


@pytest.fixture(scope="module")
def basis() -> ss.Basis:
    rng = np.random.default_rng(0)
    # Non-negative like the model's pooled features, so the views share a mean direction.
    views = ss.normalise(np.abs(rng.standard_normal((40, 64))).astype(np.float32))
    return ss.Basis.of(views, rank=16)


def test_perturbed_vectors_are_unit_norm_and_near_the_views(basis: ss.Basis) -> None:
    x = ss.perturb(basis, np.random.default_rng(1), 500)
    assert x.shape == (500, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # Not copies of the views (squared L2 > 0), yet nearer to them than views are to each other.
    to_view = (2 - 2 * x @ basis.views.T).min(axis=1)
    between = np.sort(2 - 2 * basis.views @ basis.views.T, axis=1)[:, 1]
    assert to_view.min() > 1e-4
    assert np.median(to_view) < np.median(between)


def test_chunks_regenerate_identically_and_streams_differ(basis: ss.Basis) -> None:
    a, b = ss.chunk(basis, 3, 100), ss.chunk(basis, 3, 100)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, ss.chunk(basis, 4, 100))
    assert not np.allclose(a, ss.chunk(basis, 3, 100, stream=1))


def test_chunks_cover_n_rows_in_order(basis: ss.Basis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ss, "GEN_CHUNK", 30)
    got = list(ss.chunks(basis, 75))
    assert [start for start, _ in got] == [0, 30, 60]
    assert [len(x) for _, x in got] == [30, 30, 15]
    np.testing.assert_array_equal(got[1][1], ss.chunk(basis, 1, 30))


def test_exact_topk_equals_brute_force_across_chunks(
    basis: ss.Basis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ss, "GEN_CHUNK", 37)  # chunk edges inside the data and the top-k
    n = 200
    everything = np.concatenate([x for _, x in ss.chunks(basis, n)])
    queries = ss.chunk(basis, 0, 12, stream=1)
    want = np.argsort(((queries[:, None, :] - everything[None]) ** 2).sum(-1), axis=1)[:, :10]
    got = ss.exact_topk(basis, n, queries)
    assert ss.recall_at_k(got.tolist(), want.tolist()) == 1.0
    # A stored vector's nearest is itself.
    assert ss.exact_topk(basis, n, everything[[5, 150]])[:, 0].tolist() == [5, 150]


def test_recall_at_k() -> None:
    truth = [list(range(10)), list(range(10, 20))]
    assert ss.recall_at_k(truth, truth) == 1.0
    half = [[*list(range(5)), 90, 91, 92, 93, 94], list(range(10, 20))]
    assert ss.recall_at_k(half, truth) == pytest.approx(0.75)
    # Only the first k found count, in any order.
    assert ss.recall_at_k([[*list(range(9, -1, -1)), 10]], [list(range(10))]) == 1.0
    assert ss.recall_at_k([[99] * 3 + list(range(10))], [list(range(10))]) == pytest.approx(0.7)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert ss.percentile(values, 50) == 50.0
    assert ss.percentile(values, 99) == 99.0
    assert ss.percentile(values, 100) == 100.0
    assert ss.percentile([3.0], 99) == 3.0
    assert ss.percentile([], 50) is None


def test_rows_are_what_the_service_reads(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/meta.db"
    n = 25
    ss.fill_metadata(uri, n)
    store = SqlMetadataStore(uri)
    assert store.count() == n
    rec = store.get(ss.meta_uuid(7))
    assert rec is not None and valid_meta_uuid(rec.meta_uuid)
    assert rec.milvus_id == milvus_id_for(rec.sha256) == int(ss.milvus_ids(7, 1)[0])
    assert rec.file_path == f"meta/image/{rec.sha256}.jpg" and rec.tags == ()
    # The list is newest first: the last row written comes first.
    assert [r.meta_uuid for r in store.page(0, 2)] == [ss.meta_uuid(n - 1), ss.meta_uuid(n - 2)]
    found = store.by_milvus_ids(ss.milvus_ids(3, 2).tolist())
    assert sorted(r.meta_uuid for rows in found.values() for r in rows) == [
        ss.meta_uuid(3), ss.meta_uuid(4)
    ]  # fmt: skip
    # Every row has its live content row, counted once: reconcile sees nothing to repair.
    with store.engine.connect() as conn:
        contents = conn.execute(Content.__table__.select()).all()
    assert len(contents) == n
    assert {(c.refs, c.pins, c.state) for c in contents} == {(1, 0, LIVE)}
    assert store.ref_drift(lease_s=60) == []


def test_replica_pids_finds_nothing_for_a_folder_no_service_runs_in(tmp_path: Path) -> None:
    assert ss.replica_pids(tmp_path, "Indexer") == []


def test_short_mode_is_small_and_on_the_embedded_store() -> None:
    args = ss.parse_args(["--short"])
    assert args.store == "lite" and args.vectors <= 10_000 and args.clients == [1, 4]
    full = ss.parse_args([])
    assert full.vectors == 1_000_000 and full.store == "both" and full.clients == [1, 16]
    assert full.index_type == "HNSW" and "ef" in full.search_params


def server_result() -> dict[str, Any]:
    """One server row of a run's results, as run_store returns it."""

    def stored(p50: float, p99: float, rate: float) -> dict[str, object]:
        return {"n": 10, "p50_ms": p50, "p99_ms": p99, "req_s": rate, "non_200": {}}

    timing = {"small": {"get": 1.0}, "large": {"get": 2.0}}
    return {
        "store": "server", "index": "HNSW ef=128", "fill": {"insert_s": 1.0, "index_wait_s": 2.0},
        "http": {"stored_c1": stored(30, 40, 30.0), "stored_c16": stored(90, 140, 170.0),
                 "file_c1": stored(35, 45, 25.0)},
        "recall_served": 0.99, "recall_direct": [{"params": {"ef": 128}, "recall": 0.99,
                                                  "p50_ms": 2.0, "p99_ms": 3.0}],
        "rss_mb": {"indexer_start": [250.0], "indexer_end": [260.0], "vector_server": 1.0,
                   "vector_server_peak": 2.0},
        "metadata_ms": timing,
        "http_at_ef": {"64": {"stored_c1": stored(20, 30, 40.0),
                              "stored_c16": stored(70, 95, 200.0), "recall_served": 0.985}},
    }  # fmt: skip


def test_serve_ef_is_parsed_and_reported_beside_the_configured_ef() -> None:
    args = ss.parse_args(["--serve-ef", "64,32", "--clients", "1,16"])
    assert args.serve_ef == [64, 32]
    assert ss.parse_args(["--serve-ef", "64", "--index-type", "IVF_FLAT"]).serve_ef == []
    result = server_result()
    lines = ss.report([result], args)
    want = (
        "server: served at ef 64: 20/30 ms (40.0/s) x1, 70/95 ms (200.0/s) x16; "
        "recall served 0.9850"
    )
    assert want in lines, lines
    # The server stores' settings that move these figures are printed with them: the buffer
    # pool as the server reported it (not the flag), the segment size as configured.
    result["mariadb_buffer_mb"] = 1536
    lines = ss.report([result], args)
    stores = "server: MariaDB's buffer pool 1536 MB, Milvus segments sealed at its defaults"
    assert stores in lines, lines
    result["mariadb_buffer_mb"] = 32
    other = ss.parse_args(["--mariadb-buffer-mb", "1536", "--segment-mb", "64"])
    small = ss.report([result], other)
    assert "server: MariaDB's buffer pool 32 MB, Milvus segments sealed near 64 MB" in small


def test_metadata_scale_runs_and_reports_the_baselines(tmp_path: Path) -> None:
    """bench.metadata_scale end to end on SQLite, tiny: every query at both sizes, the
    kept count and the cursor pages beside their baselines (no timing asserted)."""
    from bench import metadata_scale

    out = tmp_path / "out.json"
    assert metadata_scale.main(["--rows", "300", "--small-rows", "100", "--store", "lite",
                                "--out", str(out)]) == 0  # fmt: skip
    (result,) = json.loads(out.read_text())
    assert result["store"] == "SQLite" and result["rows"] == 300
    for size in ("small", "large"):
        assert {"count", "count rows (COUNT(*))", "page before n/2", "page offset n/2",
                "get meta_uuid"} <= set(result[size])  # fmt: skip
        assert all(ms > 0 for ms in result[size].values())
    lines = metadata_scale.report([result], 100)
    assert any("count is" in line and "faster than count rows" in line for line in lines)


def test_wait_quiet_waits_out_a_busy_store_and_not_an_idle_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ss, "QUIET_WINDOW_S", 0.3)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(1.0)  # past the interpreters' start-up, which is not idle
        assert ss.wait_quiet(lambda: idle.pid, max_s=5.0) < 1.0  # one window
        assert ss.wait_quiet(lambda: busy.pid, max_s=1.5) >= 1.5  # busy to the end
        assert ss.wait_quiet(lambda: None, max_s=5.0) < 1.0  # no process of its own
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait()


def test_the_embedded_stores_stop_their_own_milvus_lite_server(tmp_path: Path) -> None:
    """A run that fails before its service starts (which would stop the server) leaks nothing."""
    stores = ss.lite_stores(tmp_path)
    pid = stores.vector_pid()
    try:
        assert pid is not None and Path(f"/proc/{pid}").exists()
        assert stores.buffer_mb is None  # no MariaDB here
        stores.stop()
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists()
    finally:
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_milvus_settings_are_parsed_reported_and_checked_against_what_milvus_reads(
    tmp_path: Path,
) -> None:
    ratio, policy = (
        "queryNode.segcore.knowhereThreadPoolNumRatio",
        "queryNode.scheduler.scheduleReadPolicy.name",
    )
    args = ss.parse_args(["--milvus-set", f"{ratio}=1", "--milvus-set", f"{policy}=fifo"])
    assert args.milvus_set == [(ratio, 1), (policy, "fifo")]
    assert ss.milvus_setting("a.b=0.5") == ("a.b", 0.5)
    assert ss.milvus_setting("queryNode.grouping.enabled=False") == (
        "queryNode.grouping.enabled", False)  # fmt: skip
    with pytest.raises(SystemExit):
        ss.parse_args(["--milvus-set", "no-value"])
    lines = ss.report([server_result()], args)
    assert f"Milvus settings: {ratio}=1, {policy}=fifo" in lines, lines

    # The test server's own writer: a key its template has lands in milvus.yaml; a misspelt
    # one is dropped by the milvus package's writer, and the server refuses to start on it.
    from tests.servers.milvus import MilvusServer, check_written

    server = MilvusServer(tmp_path / "milvus")
    server.config.set(*ss.milvus_setting(f"{ratio}=1"))
    server.config.set(*ss.milvus_setting("queryNode.grouping.enabled=false"))
    server.config.set(ratio + "oi", 2)
    with pytest.raises(RuntimeError, match="knowhereThreadPoolNumRatiooi"):
        server.start()
    assert server.proc is None  # refused before any process started
    written = server.config_path
    check_written(written, {ratio: 1, "queryNode.grouping.enabled": False})


def test_milvus_gomaxprocs_is_parsed_reported_and_put_in_the_milvus_servers_environment(
    tmp_path: Path,
) -> None:
    assert ss.parse_args([]).milvus_gomaxprocs == 0
    ratio = "queryNode.segcore.knowhereThreadPoolNumRatio"
    args = ss.parse_args(["--milvus-gomaxprocs", "1", "--milvus-set", f"{ratio}=1"])
    assert args.milvus_gomaxprocs == 1
    lines = ss.report([server_result()], args)
    assert f"Milvus settings: {ratio}=1, GOMAXPROCS=1" in lines, lines
    for bad in ("-1", "two", ""):
        with pytest.raises(SystemExit):
            ss.parse_args(["--milvus-gomaxprocs", bad])

    from tests.servers.milvus import MilvusServer

    # In the server's environment only when asked for: 0 leaves Go's default (one per core).
    default = MilvusServer(tmp_path / "a")
    default._prepared = True  # the environment alone; no binaries unpacked, no config written
    assert "GOMAXPROCS" not in default._command()[1]
    one = MilvusServer(tmp_path / "b", gomaxprocs=1)
    one._prepared = True
    cmd, env = one._command()
    assert env["GOMAXPROCS"] == "1" and cmd[-2:] == ["run", "standalone"]


def refused_run(monkeypatch: pytest.MonkeyPatch, status: int | None) -> list[str]:
    """run_store on stores whose vector server has exited with `status` (None: still running)
    and whose first call is refused; returns what was stopped."""
    stopped: list[str] = []
    stores = ss.Stores("server", "sqlite://", "sqlite://", "http://127.0.0.1:1",
                       "http://127.0.0.1:1", os.getpid, vector_exit=lambda: status,
                       stop=lambda: stopped.append("stopped"))  # fmt: skip
    monkeypatch.setattr(ss, "server_stores", lambda *a, **k: stores)

    def refused(uri: str, n: int) -> float:
        raise ConnectionError("Fail connecting to server on 127.0.0.1:1\nsecond line")

    monkeypatch.setattr(ss, "fill_metadata", refused)
    return stopped


@pytest.mark.parametrize(
    ("status", "words", "not_said"),
    [(-signal.SIGKILL, "was killed by SIGKILL, which on Linux", None),
     (-signal.SIGTERM, "was killed by SIGTERM;", "out-of-memory"),
     (3, "exited with status 3;", "out-of-memory")],
)  # fmt: skip
def test_a_vector_server_that_exits_mid_run_is_named_instead_of_the_refused_call(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    basis: ss.Basis,
    status: int,
    words: str,
    not_said: str | None,
) -> None:
    stopped = refused_run(monkeypatch, status)
    with pytest.raises(ss.StoreDied) as died:
        ss.run_store("server", ss.parse_args(["--store", "server"]), basis, tmp_path)
    said = str(died.value)
    assert said.startswith(f"server: the vector server (pid {os.getpid()}) {words}"), said
    assert "its memory peaked at" in said and said.endswith("127.0.0.1:1"), said
    assert not_said is None or not_said not in said
    assert isinstance(died.value.__cause__, ConnectionError) and stopped == ["stopped"]


def test_a_failure_while_the_vector_server_runs_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, basis: ss.Basis
) -> None:
    stopped = refused_run(monkeypatch, None)
    with pytest.raises(ConnectionError, match=r"^Fail connecting"):
        ss.run_store("server", ss.parse_args(["--store", "server"]), basis, tmp_path)
    assert stopped == ["stopped"]


def test_main_reports_a_dead_vector_server_in_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, basis: ss.Basis, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(SIGNALS, "install", lambda: None)  # pytest's own handlers stay
    monkeypatch.setattr(ss, "embed_views", lambda *a, **k: basis.views)

    def dies(*a: Any, **k: Any) -> dict[str, Any]:
        raise ss.StoreDied("server: the vector server (pid 1) was killed by SIGKILL")

    monkeypatch.setattr(ss, "run_store", dies)
    with caplog.at_level("ERROR", logger=ss.logger.name):
        assert ss.main(["--store", "server", "--vectors", "100"]) == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "server: the vector server (pid 1) was killed by SIGKILL. Everything started is stopped."
    ]


@pytest.mark.parametrize(("kind", "released"), [("server", True), ("lite", False)])
def test_a_milvus_servers_collection_is_released_before_the_bulk_insert(
    monkeypatch: pytest.MonkeyPatch, basis: ss.Basis, kind: str, released: bool
) -> None:
    calls: list[str] = []

    class Index:
        collection = "image_vectors"

        def insert_new(self, ids: list[int], x: np.ndarray) -> None:
            calls.append("insert")

        def flush(self) -> None:
            calls.append("flush")

        def search(self, x: np.ndarray, limit: int) -> list[Any]:
            calls.append("search")
            return []

    def waited(*a: Any, **k: Any) -> float:
        calls.append("load")  # wait_indexed loads the collection once its index is built
        return 0.0

    monkeypatch.setattr(ss, "vector_index", lambda *a, **k: Index())
    monkeypatch.setattr(ss, "release", lambda endpoint, index: calls.append("release"))
    monkeypatch.setattr(ss, "wait_indexed", waited)
    monkeypatch.setattr(ss, "wait_quiet", lambda pid: 0.0)
    stores = ss.Stores(kind, "sqlite://", "sqlite://", "x", "http://127.0.0.1:1", lambda: None)
    choice = ss.IndexChoice("HNSW", {}, {})
    ss.fill_vectors(stores, choice, basis, 3)
    assert calls[: int(released)] == ["release"] * released
    assert calls[-3:] == ["flush", "load", "search"]
    inserts = calls[int(released) : -3]
    assert inserts and set(inserts) == {"insert"}


def test_alternate_code_must_be_a_checkout_and_is_measured_in_turn_on_the_same_stores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, basis: ss.Basis
) -> None:
    with pytest.raises(SystemExit):
        ss.parse_args(["--alternate-code", str(tmp_path)])  # no serve_config.yaml there
    other = tmp_path / "older"
    other.mkdir()
    (other / "serve_config.yaml").write_text("applications: []\n")
    args = ss.parse_args(["--store", "server", "--vectors", "30", "--queries", "4",
                          "--alternate-code", str(other), "--rounds", "3"])  # fmt: skip
    assert args.alternate_code == other and args.rounds == 3
    with pytest.raises(SystemExit):
        ss.parse_args(["--alternate-code", str(other), "--rounds", "0"])

    stopped: list[str] = []
    stores = ss.Stores("server", "sqlite://", "sqlite://", "x", "http://127.0.0.1:1",
                       lambda: None, stop=lambda: stopped.append("stores"))  # fmt: skip
    monkeypatch.setattr(ss, "server_stores", lambda *a, **k: stores)
    for name, value in [
        ("fill_metadata", 0.0),
        ("fill_vectors", {}),
        ("metadata_latencies", {}),
        ("direct_recall", []),
        ("served_recall", 1.0),
        ("replica_pids", []),
    ]:
        monkeypatch.setattr(ss, name, lambda *a, _v=value, **k: _v)  # fmt: skip
    monkeypatch.setattr(ss, "exact_truth", lambda b, n, q: ([[0]] * len(q), 0.0))
    monkeypatch.setattr(ss.processes, "wait_ready", lambda *a, **k: None)
    started: list[Path | None] = []
    servers: dict[int, Any] = {}

    def start(workdir: Path, stores: ss.Stores, choice: ss.IndexChoice,
              code: Path | None = None) -> Any:  # fmt: skip
        started.append(code)
        server = SimpleNamespace(workdir=workdir)
        servers[id(server)] = code
        return server

    monkeypatch.setattr(ss, "start_service", start)
    monkeypatch.setattr(ss.processes, "stop", lambda server: stopped.append("service"))
    searched: list[tuple[Path | None, list[int]]] = []

    def measure(server: Any, n: int, clients: list[int], requests: int, deadline_s: float,
                rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
        searched.append((servers[id(server)], rng.integers(n, size=5).tolist()))
        return {"stored_c16": {"p50_ms": 1.0}}

    monkeypatch.setattr(ss, "measure_stored", measure)
    monkeypatch.setattr(ss, "measure_http", lambda server, *a: {})
    out = ss.run_store("server", args, basis, tmp_path)

    # The first service (this code's) for the usual phases, then the rounds, the side that goes
    # first swapped each round; each side of a round searches the same rows.
    assert started == [None, ss.ROOT, other, other, ss.ROOT, ss.ROOT, other]
    rounds = [searched[i : i + 2] for i in range(0, 6, 2)]
    assert all(a[1] == b[1] for a, b in rounds) and rounds[0][0][1] != rounds[1][0][1]
    assert len(out["alternated"]["this"]) == len(out["alternated"]["other"]) == 3
    assert set(out["alternated"]["commits"]) == {"this", "other"}
    # Every service stopped, the last one too, then the stores.
    assert stopped == ["service"] * 7 + ["stores"]


def test_alternated_rounds_are_reported_side_by_side() -> None:
    args = ss.parse_args(["--clients", "1,16"])
    result = server_result()
    timed = {"stored_c16": {"p50_ms": 60.0, "p99_ms": 90.0, "req_s": 250.0,
                            "cpu": {"ms_per_request": 7.04}}}  # fmt: skip
    result["alternated"] = {"commits": {"this": "abc1234", "other": "def5678+"},
                            "this": [timed], "other": [timed, timed]}  # fmt: skip
    lines = ss.report([result], args)
    assert any("this code (abc1234) against the other (def5678+)" in line for line in lines)
    assert "    this  round 1: 60/90 (250.0/s, 7.0) x16" in lines, lines
    assert "    other round 2: 60/90 (250.0/s, 7.0) x16" in lines, lines


def test_commit_of_names_the_checkouts_commit_and_marks_a_changed_one(tmp_path: Path) -> None:
    def git(*cmd: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
        done = subprocess.run(["git", "-C", str(tmp_path), *cmd], env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return done.stdout.strip()

    assert ss.commit_of(tmp_path) == "?"  # not a git checkout
    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert ss.commit_of(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert ss.commit_of(tmp_path) == head + "+"
