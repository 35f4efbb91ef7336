"""A million vectors: search latency through HTTP, recall against exact search, flat memory.

    flock /tmp/ise-ray.lock .venv/bin/python -m bench.search_scale --store both \
        --out /tmp/search-scale.json            # 1,000,000 vectors; tens of minutes
    .venv/bin/python -m bench.search_scale --short   # 5,000 vectors on Milvus Lite, < 1 min

What is indexed. A few thousand real views (photos x random crop, scale and one of the
near-duplicate edits of bench/edits.py) are embedded by the project's embedder (the default
model, EfficientNet-Lite0, dim 1280). Every one of the N vectors is then a mix of two real
views, (1 - t) a + t b with t ~ U(0, MIX_MAX), plus Gaussian noise drawn in the principal
subspace of the real views (scaled by their spread, NOISE_SCALE of it), re-normalised to unit
length. The mix fills the space between photos and the noise the space around each, so the
N vectors are a continuum over where real photos embed, not a few thousand tight clusters;
a perturbation moves a vector about as far as an edit moves a photo (the run prints both).
Vectors are generated chunk by chunk from a seeded generator, so nothing holds the N x 1280
matrix: exact search regenerates the chunks (bounded memory, no 5 GB file).

What is written. Vectors through the store layer (MilvusVectorIndex.insert_new, in batches of
WRITE_BATCH: new keys, so no upsert's delete records for Milvus to rewrite segments to drop
after the load, as the note at QUIET_CORES says); metadata rows and their `content` rows in
bulk through the metadata store's SQLAlchemy tables and engine, shaped as the Indexer writes
them (sha256-derived milvus_id, refs 1), so GET /meta/image/count, the list and GET
/sample/meta/{meta_uuid} serve them. The image bytes are not written: search by a stored image
reads the row and the vector, never the object, so the object store stays empty (GET /files
and thumbnails of these rows would 404). A Milvus server's collection is released while the
vectors go in and loaded once their index is built (release() says why).

What is measured, per store ("server": the test plugin's Milvus 2.3.5 standalone with HNSW +
MariaDB; "lite": Milvus Lite + SQLite, the embedded default): insert and index build time,
and how long the vector store then works on its own (measuring waits for it to be quiet);
GET /sample/meta/{meta_uuid}?limit=10 p50/p99 at 1 and 16 clients (loopback, bounded in count
and time) with each process's CPU per search, again at each --serve-ef; a few POST
/sample/file at 1 client (the model's share); recall@10 of the served
results and of VectorIndex.search (several ef) against exact brute force (numpy); RSS of the
Indexer replica and of the vector server; the metadata store's queries at 10k rows and at N.
Baselines: exact search for recall, a 10k-row database for the metadata queries.

A change to the service, measured where it matters most: --alternate-code DIR serves another
checkout (an older commit's `git worktree`) and this code in turn on the same filled stores,
--rounds times, each round's searches the same for both. The fill takes most of a million-vector
run, so this is the one way to compare two versions at a million in the same hour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import cpu, http_get, processes
from bench.compare import SIGNALS, machine
from bench.edits import EDITS
from bench.loadgen import Request, drive
from bench.photos import real_photos, to_jpeg
from deployments.cluster import free_port

logger = logging.getLogger("bench.search_scale")

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261203
MIX_MAX = 0.5  # how far towards a second real view a vector may be mixed
NOISE_SCALE = 0.5  # noise spread relative to the real views' spread, per principal direction
PCA_RANK = 128  # principal directions the noise is drawn in
GEN_CHUNK = 10_000  # vectors generated at once (and the unit of regeneration)
# After its indexes are built, a Milvus server may go on working on its own: it merged small
# segments and indexed the results, and after a fill by upsert it rewrote each segment without
# the delete records (24 minutes of both cores at 1M; one run's searches were measured beside
# it, at half the throughput). Measuring starts once its process is under QUIET_CORES over
# QUIET_WINDOW_S.
QUIET_CORES = 0.15
QUIET_WINDOW_S = 10.0
QUIET_MAX_S = 3600.0
WRITE_BATCH = 5_000  # vectors per VectorIndex write: ~26 MB of gRPC, under both servers' caps
SQL_BATCH = 10_000  # metadata rows per INSERT batch
SEARCH_LIMIT = 10
# Enough to hold a million rows' tables and indexes (~0.9 GB) and the baseline's; MariaDB
# takes pages as it reads them, so a smaller run takes less.
MARIADB_BUFFER_MB = 1536
K = 10  # recall@K
SMALL_ROWS = 10_000  # the metadata baseline's size
VIEW_SIDE = 800  # photos are shrunk to this long side before views are cut (speed)
DEFAULT_EVALSET = Path(tempfile.gettempdir()) / "evalset"
# The real views' vectors, kept between runs (and shared with bench.index_cost).
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "ise-search-scale"
SHORT = {"vectors": 5_000, "store": "lite", "views": 60, "queries": 50, "requests": 60,
         "file_requests": 4, "clients": "1,4", "small_rows": 2_000, "ef_sweep": ""}  # fmt: skip


# -- real views, embedded -----------------------------------------------------------------------
def source_photos(evalset: Path | None) -> list[Image.Image]:
    """bench/photos.py's 20 photos, plus the evaluation set's photos when it is built."""
    ims = [Image.fromarray(a) for a in real_photos().values()]
    if evalset is not None and (evalset / "manifest.tsv").exists():
        from bench.evalset import open_photo, read_manifest

        ims += [open_photo(p.path) for p in read_manifest(evalset)]
    out = []
    for im in ims:
        im = im.convert("RGB")
        im.thumbnail((VIEW_SIDE, VIEW_SIDE), Image.Resampling.BILINEAR)
        out.append(im)
    return out


def random_view(im: Image.Image, rng: random.Random) -> bytes:
    """A random crop (40-100% of the area) at a random scale, then one edit or a re-encode."""
    w, h = im.size
    area = rng.uniform(0.4, 1.0)
    aspect = rng.uniform(0.75, 1.33)
    cw = max(16, min(w, int((area * w * h * aspect) ** 0.5)))
    ch = max(16, min(h, int((area * w * h / aspect) ** 0.5)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    view = im.crop((x, y, x + cw, y + ch))
    scale = rng.uniform(0.4, 1.0)
    view = view.resize((max(16, int(cw * scale)), max(16, int(ch * scale))))
    if rng.random() < 0.5:
        return EDITS[rng.choice(sorted(EDITS))](view)
    return to_jpeg(np.asarray(view), quality=rng.randint(50, 95))


def embed_views(n: int, evalset: Path | None, cache: Path) -> np.ndarray:
    """n unit vectors of real views, embedded once and cached (the embedder is the slow part)."""
    from image_search.config import load_settings
    from image_search.embedding import load_embedder, model_card
    from image_search.imaging import decode

    settings = load_settings(ROOT / "config.yaml")
    photos = source_photos(evalset)
    tag = f"{settings.model.model_id}-{len(photos)}-{n}-{SEED}".replace(":", "_")
    path = cache / f"views-{tag}.npy"
    if path.exists():
        logger.info("real views: %s (cached)", path)
        cached: np.ndarray = np.load(path)
        return cached
    began = time.monotonic()
    spec = model_card(settings.model.name).spec
    embedder = load_embedder(settings.model)
    rng = random.Random(SEED)
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for i in range(n):
        data = random_view(photos[i % len(photos)], rng)
        batch.append(decode(data, spec, settings.limits.max_pixels).pixels)
        if len(batch) == 32 or i == n - 1:
            out.append(np.asarray(embedder.embed(np.stack(batch)), dtype=np.float32))
            batch = []
    views = normalise(np.concatenate(out))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, views)
    logger.info("real views: %d views of %d photos embedded in %.0fs (%s)", n, len(photos),
                time.monotonic() - began, settings.model.model_id)  # fmt: skip
    return views


# -- vectors ---------------------------------------------------------------------------------------
def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Basis:
    """The real views and their principal directions, scaled by their spread."""

    views: np.ndarray  # (n, d) unit
    directions: np.ndarray  # (r, d): component * its standard deviation

    @classmethod
    def of(cls, views: np.ndarray, rank: int = PCA_RANK) -> Basis:
        centred = views - views.mean(axis=0, keepdims=True)
        _, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
        r = max(1, min(rank, len(views) - 1))
        std = s[:r] / max(1.0, np.sqrt(len(views) - 1))
        return cls(views.astype(np.float32), (vt[:r] * std[:, None]).astype(np.float32))


def perturb(basis: Basis, rng: np.random.Generator, n: int,
            noise: float = NOISE_SCALE, mix: float = MIX_MAX) -> np.ndarray:  # fmt: skip
    """n unit vectors: a mix of two real views plus principal-subspace noise, re-normalised."""
    nv = len(basis.views)
    a, b = rng.integers(nv, size=n), rng.integers(nv, size=n)
    t = rng.uniform(0.0, mix, size=(n, 1)).astype(np.float32)
    z = rng.standard_normal((n, len(basis.directions)), dtype=np.float32)
    x = (1 - t) * basis.views[a] + t * basis.views[b] + noise * (z @ basis.directions)
    out: np.ndarray = normalise(x)
    return out


def chunk(basis: Basis, index: int, size: int, stream: int = 0) -> np.ndarray:
    """Chunk `index` of a stream (0: the indexed vectors, 1: recall queries): regenerable."""
    return perturb(basis, np.random.default_rng([SEED, stream, index]), size)


def chunks(basis: Basis, n: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, vectors) of the n indexed vectors, GEN_CHUNK at a time."""
    for c, start in enumerate(range(0, n, GEN_CHUNK)):
        yield start, chunk(basis, c, min(GEN_CHUNK, n - start))


# -- rows ------------------------------------------------------------------------------------------
def row_sha(k: int) -> str:
    return hashlib.sha256(f"ise-search-scale:{k}".encode()).hexdigest()


def meta_uuid(k: int) -> str:
    return f"scale-{k:09d}"


def milvus_ids(start: int, n: int) -> np.ndarray:
    from image_search.records import milvus_id_for

    return np.array([milvus_id_for(row_sha(k)) for k in range(start, start + n)], dtype=np.int64)


def image_rows(start: int, n: int, t0: datetime) -> list[dict[str, Any]]:
    """Rows of the `image` table as the Indexer writes them (content-derived keys)."""
    from image_search.records import milvus_id_for, object_key_for

    rows = []
    for k in range(start, start + n):
        sha = row_sha(k)
        at = t0 + timedelta(microseconds=k)  # distinct, increasing: the list's order
        rows.append({
            "meta_uuid": meta_uuid(k), "hash_code": hashlib.md5(sha.encode()).hexdigest(),
            "sha256": sha, "milvus_id": milvus_id_for(sha), "file_name": f"scale-{k}.jpg",
            "file_path": object_key_for(sha, "jpg"), "mime": "image/jpeg",
            "size_bytes": 150_000, "width": 1024, "height": 768, "tags": "[]",
            "created_at": at, "updated_at": at,
        })  # fmt: skip
    return rows


def content_rows(images: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One live `content` row per image row, refs 1, no writer in flight."""
    from image_search.stores.base import LIVE
    from image_search.stores.metadata import MIGRATED_TOKEN

    return [{"milvus_id": r["milvus_id"], "sha256": r["sha256"], "file_path": r["file_path"],
             "refs": 1, "pins": 0, "state": LIVE, "token": MIGRATED_TOKEN,
             "updated_at": r["updated_at"]} for r in images]  # fmt: skip


def fill_metadata(uri: str, n: int) -> float:
    """Create the schema and insert n rows (and their content rows) in bulk; seconds taken."""
    from sqlalchemy import insert

    from image_search.stores.metadata import Content, Image, SqlMetadataStore

    store = SqlMetadataStore(uri, timeout_s=30)
    store.create_schema()
    began = time.monotonic()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for start in range(0, n, SQL_BATCH):
        rows = image_rows(start, min(SQL_BATCH, n - start), t0)
        with store.engine.begin() as conn:
            conn.execute(insert(Content), content_rows(rows))
            conn.execute(insert(Image), rows)
    store.recount()  # the rows went around the store's kept count
    store.engine.dispose()
    return time.monotonic() - began


# -- recall ----------------------------------------------------------------------------------------
def exact_topk(basis: Basis, n: int, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Row numbers of each query's k nearest of the n indexed vectors, by brute force."""
    best_d = np.full((len(queries), k), np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    q = queries.astype(np.float32)
    for start, x in chunks(basis, n):
        d = 2.0 - 2.0 * (q @ x.T)  # squared L2 of unit vectors
        kk = min(k, d.shape[1])
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        cand_d = np.concatenate([best_d, np.take_along_axis(d, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(cand_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cand_d, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_i


def recall_at_k(
    found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], k: int = K
) -> float:
    """Mean share of each query's true k nearest found in its first k results."""
    if not truth:
        return float("nan")
    hits = [len(set(list(f)[:k]) & set(list(t)[:k])) / k for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank, so p99 of 100 values is the 99th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


# -- processes and memory --------------------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tree_rss_mb(pid: int) -> float | None:
    """RSS of a process and its descendants (Milvus standalone runs as one or a few)."""
    pids, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
                pids.add(int(child))
                frontier.append(int(child))
    values = [v for p in pids if (v := rss_mb(p)) is not None]
    return sum(values) if values else None


def replica_pids(workdir: Path, deployment: str) -> list[int]:
    """Ray replica processes of one deployment of the service running in workdir.

    Workers retitle themselves `ray::ServeReplica:<app>:<deployment>`, and inherit the
    service's environment, whose RAY_TMPDIR names workdir: only our service's replicas match.
    """
    marker = f"RAY_TMPDIR={workdir}".encode()
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes()
            if b"ServeReplica" not in cmd or f":{deployment}".encode() not in cmd:
                continue
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                out.append(int(proc.name))
        except OSError:
            continue
    return sorted(out)


class PeakSampler:
    """The highest RSS a process tree reaches while it runs (sampled every `every_s`)."""

    def __init__(self, pid: Callable[[], int | None], every_s: float = 2.0) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            pid = self.pid()
            if pid is not None:
                self.peak = max(self.peak, tree_rss_mb(pid) or 0.0)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# -- stores ----------------------------------------------------------------------------------------
@dataclass
class Stores:
    """Where one run's data lives, and how to stop what serves it (the fields with defaults are
    keyword-only: a field added among them must not shift what a caller passes)."""

    kind: str
    metadata_uri: str
    small_metadata_uri: str
    vectors_uri: str  # what the service is given: a server URI or a Lite data path
    endpoint: str  # the gRPC URI
    vector_pid: Callable[[], int | None]
    _: KW_ONLY
    env: dict[str, str] = field(default_factory=dict)
    buffer_mb: int | None = None  # MariaDB's InnoDB buffer pool, as the server reports it
    stop: Callable[[], None] = lambda: None
    # The vector server's exit status once it has exited, None while it runs. Lite's server is
    # a daemon of the service's own (not our child), so its status is not known: None.
    vector_exit: Callable[[], int | None] = lambda: None


class StoreDied(RuntimeError):
    """The vector server exited while the benchmark used it."""


def exit_reason(status: int) -> str:
    """A child's exit status (Popen.returncode) in words."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    if -status == signal.SIGKILL:
        # The benchmark stops its servers with SIGTERM, so a SIGKILL came from elsewhere;
        # release()'s docstring says when the kernel sent it in this benchmark's runs.
        return (f"was killed by {name}, which on Linux, when nobody sent it, is the kernel's "
                "out-of-memory killer (`dmesg` says)")  # fmt: skip
    return f"was killed by {name}"


def server_stores(
    workdir: Path,
    segment_mb: int = 0,
    buffer_mb: int = 0,
    milvus_settings: Sequence[tuple[str, int | float | str]] = (),
    milvus_gomaxprocs: int = 0,
) -> Stores:
    """The test plugin's Milvus 2.3.5 standalone and MariaDB, on free loopback ports;
    segment_mb > 0: Milvus seals segments of about that size (0: Milvus's default);
    buffer_mb > 0: MariaDB caches up to that many MB of tables (0: the test server's default);
    milvus_settings: more milvus.yaml keys to set, after those (--milvus-set; the server refuses
    to start on one its milvus.yaml does not hold); milvus_gomaxprocs > 0: Milvus's GOMAXPROCS
    (--milvus-gomaxprocs)."""
    sys.path.insert(0, str(ROOT))  # tests/ is a package of the project, not an installed one
    from tests.servers.mariadb_server import MariaDB
    from tests.servers.milvus import MilvusServer

    milvus = MilvusServer(workdir / "milvus", gomaxprocs=milvus_gomaxprocs)
    maria = MariaDB(workdir / "mariadb")
    if segment_mb:
        # Milvus searches every sealed segment with its own HNSW graph: at its defaults (512 MB,
        # sealed at 23%) a million 1280-d vectors make ~40 segments, and a search costs ~40
        # graph walks. Sealed near segment_mb, the same vectors make a few.
        milvus.config.set("dataCoord.segment.maxSize", segment_mb)
        milvus.config.set("dataCoord.segment.sealProportion", 0.9)
        # A growing segment is also sealed at 32 binlog files, one per 16 MB buffer flushed:
        # that sealed 1280-d segments at ~160k rows (820 MB) whatever maxSize said, so a
        # million made 7. Fewer, larger flushes leave the size to decide.
        milvus.config.set("dataNode.segment.insertBufSize", 256 << 20)
        milvus.config.set("dataCoord.segment.maxBinlogFileNumber", 1024)
    for key, value in milvus_settings:
        milvus.config.set(key, value)

    def stop() -> None:
        with SIGNALS.uninterrupted():
            milvus.stop(timeout=30)
            maria.stop(timeout=30)

    try:
        milvus.start()
        maria.start()
        if buffer_mb:
            # The test server's small pool suits tests, not a million rows (the image and content
            # tables and their indexes take ~0.9 GB): each search's hit rows were then read
            # from the OS's page cache, the slowest step of a search at 16 clients (py-spy:
            # waiting on MariaDB). A production server sizes this to its tables.
            maria.sql(f"SET GLOBAL innodb_buffer_pool_size = {buffer_mb << 20}")
        # Read back rather than echoed: the report then states what the server holds, whatever
        # the test server's default is and however MariaDB rounds a resize.
        [(pool,)] = maria.sql("SELECT @@innodb_buffer_pool_size")
        big, small = maria.create_database("ise_scale"), maria.create_database("ise_small")
    except BaseException:
        stop()
        raise
    return Stores("server", big, small, milvus.uri, milvus.uri,
                  lambda: milvus.proc.pid if milvus.proc else None, stop=stop,
                  buffer_mb=int(pool) >> 20,
                  vector_exit=lambda: milvus.proc.poll() if milvus.proc else None)  # fmt: skip


def lite_stores(workdir: Path) -> Stores:
    """Milvus Lite (served locally, as the service runs it) and SQLite: the embedded default."""
    from image_search.stores.lite_server import _read_state, ensure_lite_server, stop_lite_server

    data, port = workdir / "vectors.db", free_port()
    endpoint = ensure_lite_server(data, port)

    def pid() -> int | None:
        state = _read_state(data.resolve())
        return state["pid"] if state else None

    def stop() -> None:
        with SIGNALS.uninterrupted():
            stop_lite_server(data)

    return Stores("lite", f"sqlite:///{workdir}/meta.db", f"sqlite:///{workdir}/meta-small.db",
                  str(data), endpoint, pid, env={"ISE__STORES__LITE_PORT": str(port)},
                  stop=stop)  # fmt: skip


@dataclass(frozen=True)
class IndexChoice:
    index_type: str
    index_params: dict[str, Any]
    search_params: dict[str, Any]
    # The searches' consistency level (stores.search_consistency_level). Strong makes a Milvus
    # server wait for its next time tick (~200 ms) before each search.
    consistency: str = "Session"

    def label(self) -> str:
        params = {**self.index_params, **self.search_params}
        text = ",".join(f"{k}={v}" for k, v in params.items())
        return f"{self.index_type} {text} {self.consistency}"


def vector_index(endpoint: str, choice: IndexChoice, timeout_s: float = 5.0,
                 lite: bool = False) -> Any:  # fmt: skip
    """The store layer's MilvusVectorIndex on the configured collection and model, opened as
    the service opens it (no keepalive pings to Milvus Lite: it answers them with GOAWAY)."""
    from image_search.config import load_settings
    from image_search.embedding import model_card
    from image_search.stores.vectors import MilvusVectorIndex

    settings = load_settings(ROOT / "config.yaml")
    st = settings.stores
    return MilvusVectorIndex(
        uri=endpoint, collection=st.collection, dim=model_card(settings.model.name).dim,
        model_id=settings.model.model_id, index_type=choice.index_type,
        index_params=choice.index_params, search_params=choice.search_params,
        consistency_level=st.consistency_level, search_consistency_level=choice.consistency,
        timeout_s=timeout_s, keepalive=not lite,
    )  # fmt: skip


def fill_vectors(stores: Stores, choice: IndexChoice, basis: Basis, n: int) -> dict[str, float]:
    """Insert n vectors (new keys) in batches, flush, and wait until the index covers every
    row."""
    lite = stores.kind == "lite"
    index = vector_index(stores.endpoint, choice, timeout_s=600, lite=lite)
    if not lite:
        release(stores.endpoint, index)
    began = time.monotonic()
    last_log = began
    for start, x in chunks(basis, n):
        ids = milvus_ids(start, len(x))
        for b in range(0, len(x), WRITE_BATCH):
            index.insert_new(ids[b : b + WRITE_BATCH].tolist(), x[b : b + WRITE_BATCH])
        if time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            rate = (start + len(x)) / (last_log - began)
            logger.info("  %d / %d vectors, %.0f/s", start + len(x), n, rate)
    index.flush()
    inserted = time.monotonic() - began
    built = wait_indexed(stores.endpoint, index.collection, n, lite=lite)
    quiet = wait_quiet(stores.vector_pid)
    if quiet > QUIET_WINDOW_S and not lite:  # it may have changed the segments meanwhile
        log_segments(stores.endpoint, index.collection)
    # Milvus Lite builds what it has not built yet on the first search (a 150k fill's first
    # search outlived a 60 s deadline): timed here, under this client's long deadline.
    began = time.monotonic()
    index.search(chunk(basis, 0, 1, stream=1)[0], SEARCH_LIMIT + 16)
    first = time.monotonic() - began
    return {"insert_s": inserted, "index_wait_s": built, "quiet_wait_s": quiet,
            "first_search_s": first, "vectors_per_s": n / inserted}  # fmt: skip


def release(endpoint: str, index: Any) -> None:
    """Release a Milvus server's collection for a bulk load (wait_indexed loads it again).

    Loaded, the query node holds every unsealed row as a growing segment (5 GB for a million
    1280-d vectors) until their sealed segment's index is built and loaded, beside the build's
    own copies: Milvus 2.3.5 then reached 22 GB and the kernel killed it on a 24 GB machine
    (README). Released, the rows go to the data node only: insert, index, then load, the bulk
    order Milvus's documentation gives.
    """
    index.ping()  # connects, which creates the collection and loads it as the service does
    client = admin_client(endpoint, lite=False)
    try:
        client.release_collection(index.collection, timeout=60)
    finally:
        client.close()


def wait_quiet(pid: Callable[[], int | None], max_s: float = QUIET_MAX_S) -> float:
    """Seconds until the vector store's process is quiet (QUIET_*): at least one window."""
    began = time.monotonic()
    while time.monotonic() - began < max_s:
        p = pid()
        first = processes.proc_info(p) if p else None
        time.sleep(QUIET_WINDOW_S)
        last = processes.proc_info(p) if p else None
        if first is None or last is None:
            break  # no process of its own to watch (or it is gone: the run will say so)
        cores = (last.cpu_s - first.cpu_s) / QUIET_WINDOW_S
        if cores < QUIET_CORES:
            break
        logger.info("  the vector store is busy on its own (%.2f cores); waiting", cores)
    took = time.monotonic() - began
    logger.info("  vector store quiet after %.0fs", took)
    return took


def admin_client(endpoint: str, lite: bool) -> Any:
    """A client of its own for the bench's questions to the store, pinging only a Milvus server.

    A shared connection that pings Milvus Lite's server is answered with GOAWAY ("Too many
    pings") while the bench waits, and the next client of that endpoint fails to connect.
    """
    from pymilvus import MilvusClient

    from image_search.stores.vectors import NO_KEEPALIVE

    return MilvusClient(uri=endpoint, timeout=60, dedicated=True,
                        grpc_options=NO_KEEPALIVE if lite else {})  # fmt: skip


def log_segments(endpoint: str, collection: str) -> None:
    """The Milvus server's segments (Milvus Lite has no segment listing)."""
    client = admin_client(endpoint, lite=False)
    try:
        with contextlib.suppress(Exception):  # a listing is worth a log line, not a failed run
            segments = client.list_loaded_segments(collection, timeout=60)
            logger.info("  %d segments loaded, rows each: %s", len(segments),
                        sorted(int(getattr(s, "num_rows", 0)) for s in segments))  # fmt: skip
    finally:
        client.close()


def wait_indexed(
    endpoint: str, collection: str, n: int, lite: bool, timeout_s: float = 7200
) -> float:
    """Seconds until the server reports every row indexed (and the collection loaded)."""
    client = admin_client(endpoint, lite)
    began, last_log = time.monotonic(), 0.0
    try:
        while time.monotonic() - began < timeout_s:
            names = client.list_indexes(collection, timeout=60) or ["vector"]
            info = client.describe_index(collection, names[0], timeout=60) or {}
            done, total = info.get("indexed_rows"), info.get("total_rows")
            if done is None or total is None or (total >= n and done >= total):
                break  # Milvus Lite builds its per-segment indexes while it flushes
            if time.monotonic() - last_log > 30:
                last_log = time.monotonic()
                logger.info("  index: %s / %s rows (%s)", done, total, info.get("state"))
            time.sleep(2)
        client.load_collection(collection, timeout=timeout_s)
        took = time.monotonic() - began
    finally:
        client.close()
    if not lite:
        log_segments(endpoint, collection)
    return took


# -- the service -----------------------------------------------------------------------------------
def start_service(workdir: Path, stores: Stores, choice: IndexChoice,
                  code: Path | None = None) -> processes.Server:  # fmt: skip
    """`image-search serve` on free loopback ports, pointed at the filled stores (`code`:
    another checkout's, see processes.start_service).

    In a folder of its own below workdir, not workdir itself: stopping the service stops
    every process that names its folder, and the stores' processes name theirs (one run's
    second service started without its MariaDB, stopped with the first)."""
    folder = workdir / "s"  # short: Ray's unix socket paths below it must stay under 107 bytes
    folder.mkdir(exist_ok=True)
    return processes.start_service(folder, {
        **stores.env,
        "ISE__STORES__METADATA_URI": stores.metadata_uri,
        "ISE__STORES__VECTORS_URI": stores.vectors_uri,
        "ISE__STORES__INDEX_TYPE": choice.index_type,
        "ISE__STORES__INDEX_PARAMS": json.dumps(choice.index_params),
        "ISE__STORES__SEARCH_PARAMS": json.dumps(choice.search_params),
        "ISE__STORES__SEARCH_CONSISTENCY_LEVEL": choice.consistency,
    }, code=code)  # fmt: skip


def commit_of(checkout: Path) -> str:
    """The checkout's commit, short, with `+` when its tracked files differ from it."""

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(checkout), *cmd], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass
class GetOutcome:
    latencies_s: list[float] = field(default_factory=list)
    # When each of latencies_s began, in seconds into the phase: where a tail sits in time
    # (spread out, or requests that began together, such as one batch) is in the JSON.
    started_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    bodies: dict[int, Any] = field(default_factory=dict)
    wall_s: float = 0.0


async def drive_get(url: str, paths: Sequence[str], clients: int, deadline_s: float,
                    keep_bodies: bool = False) -> GetOutcome:  # fmt: skip
    """GET every path, `clients` at a time (closed loop); none started past the deadline.
    Each client keeps one connection (bench.http_get: the lean client, so that the load
    generator takes little of the cores the service runs on)."""
    out = GetOutcome()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(paths)):
        queue.put_nowait(i)
    began = time.perf_counter()

    async def worker() -> None:
        conn = http_get.Connection(url, timeout_s=60)
        try:
            while not queue.empty() and time.perf_counter() - began < deadline_s:
                i = queue.get_nowait()
                t = time.perf_counter()
                try:
                    r = await conn.get(paths[i])
                except (OSError, TimeoutError, asyncio.IncompleteReadError,
                        http_get.ProtocolError) as exc:  # fmt: skip
                    out.statuses[type(exc).__name__] += 1
                    continue
                out.statuses[str(r.status)] += 1
                if r.status == 200:
                    out.latencies_s.append(time.perf_counter() - t)
                    out.started_s.append(t - began)
                    if keep_bodies:
                        out.bodies[i] = json.loads(r.body)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    out.wall_s = time.perf_counter() - began
    out.statuses["not sent"] += queue.qsize()
    return out


def latency_summary(
    lat_s: Sequence[float], statuses: Counter[str], wall_s: float
) -> dict[str, Any]:
    ms = [v * 1000 for v in lat_s]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms, default=None),
            "req_s": len(ms) / wall_s if wall_s else None,
            "non_200": {k: v for k, v in statuses.items() if k != "200" and v}}  # fmt: skip


def search_paths(rows: Sequence[int]) -> list[str]:
    return [f"/sample/meta/{meta_uuid(k)}?limit={SEARCH_LIMIT}" for k in rows]


def measure_stored(server: processes.Server, n: int, clients: list[int], requests: int,
                   deadline_s: float, rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    """Search by stored image at each concurrency, after a short warm-up, with the CPU each
    process spent per search (the service's, the stores' beside it, and this load
    generator's)."""
    out: dict[str, Any] = {}
    marker = str(server.workdir.parent)  # the run's folder: the service's and the stores'
    warm = search_paths(rng.integers(n, size=20).tolist())
    asyncio.run(drive_get(server.url, warm, 4, deadline_s))
    for c in clients:
        paths = search_paths(rng.integers(n, size=requests).tolist())
        logger.info("  GET /sample/meta x%d clients: measuring", c)  # a mark to attach a profiler
        before = cpu.sample(server.proc.pid, marker)
        res = asyncio.run(drive_get(server.url, paths, c, deadline_s))
        after = cpu.sample(server.proc.pid, marker)
        summary = latency_summary(res.latencies_s, res.statuses, res.wall_s)
        summary["cpu"] = cpu.spent(before, after, res.wall_s, len(res.latencies_s))
        summary["trace"] = [
            [round(t, 4), round(v * 1000, 2)]
            for t, v in zip(res.started_s, res.latencies_s, strict=True)
        ]
        out[f"stored_c{c}"] = summary
        logger.info("  GET /sample/meta x%d clients: %s", c,
                    json.dumps({k: v for k, v in summary.items()
                                if k not in ("cpu", "trace")}))  # fmt: skip
        logger.info("    CPU: %s", cpu.describe(summary["cpu"], top=8))
    return out


def measure_http(server: processes.Server, n: int, clients: list[int], requests: int,
                 file_requests: int, deadline_s: float, rng: np.random.Generator
                 ) -> dict[str, Any]:  # fmt: skip
    """Search by stored image at each concurrency; a few uploads searched at 1 client."""
    out = measure_stored(server, n, clients, requests, deadline_s, rng)
    photos = [to_jpeg(a) for a in list(real_photos().values())[:file_requests]]
    reqs: list[Request] = [({"file": (f"q{i}.jpg", p, "image/jpeg")}, {"limit": str(SEARCH_LIMIT)})
                           for i, p in enumerate(photos)]  # fmt: skip
    res_f = asyncio.run(drive(server.url, "/sample/file", reqs, 1, deadline_s))
    out["file_c1"] = latency_summary(res_f.latencies_s, res_f.statuses, res_f.wall_s)
    logger.info("  POST /sample/file x1 client: %s", json.dumps(out["file_c1"]))
    for path in ("/meta/image/count", "/meta/image?offset=0&limit=20",
                 f"/meta/image?offset={max(0, n - 20)}&limit=20"):  # fmt: skip
        r = asyncio.run(drive_get(server.url, [path] * 5, 1, deadline_s))
        out[f"GET {path}"] = latency_summary(r.latencies_s, r.statuses, r.wall_s)
    return out


def served_rows(n: int, queries: int) -> np.ndarray:
    """Stored rows to search with, all from the first chunk (rows are iid, so no bias)."""
    rng = np.random.default_rng([SEED, 7])
    return rng.choice(min(n, GEN_CHUNK), size=min(queries, n), replace=False)


def served_recall(server: processes.Server, rows: np.ndarray, truth: list[list[int]],
                  deadline_s: float) -> float | None:  # fmt: skip
    """recall@10 of GET /sample/meta/{meta_uuid} against the exact neighbours of those rows."""
    res = asyncio.run(drive_get(server.url, search_paths(rows.tolist()), 4, deadline_s, True))
    found = [[int(h["milvus_id"]) for h in body["data"]] for body in res.bodies.values()]
    wanted = [truth[i] for i in res.bodies]
    return recall_at_k(found, wanted) if found else None


class _IdMap:
    """Row number -> milvus_id, computed on demand (hashing 1M rows takes a few seconds)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cache: dict[int, int] = {}

    def __getitem__(self, row: int) -> int:
        row = int(row)
        if row not in self._cache:
            self._cache[row] = int(milvus_ids(row, 1)[0])
        return self._cache[row]


def exact_truth(basis: Basis, n: int, queries: np.ndarray) -> tuple[list[list[int]], float]:
    """The exact k nearest milvus_ids of each query (one pass over the N vectors), seconds."""
    began = time.monotonic()
    rows = exact_topk(basis, n, queries)
    id_of = _IdMap(n)
    return [[id_of[r] for r in t] for t in rows], time.monotonic() - began


def direct_recall(endpoint: str, choice: IndexChoice, queries: np.ndarray,
                  truth: list[list[int]], efs: Sequence[int],
                  lite: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """recall@10 and latency of VectorIndex.search for fresh perturbations not in the index."""
    variants = [choice] + [
        IndexChoice(choice.index_type, choice.index_params, {**choice.search_params, "ef": ef},
                    choice.consistency)
        for ef in efs if ef != choice.search_params.get("ef")
    ]  # fmt: skip
    other = "Session" if choice.consistency == "Strong" else "Strong"
    # What the time-tick wait costs (or saves), same index and params.
    variants.append(IndexChoice(choice.index_type, choice.index_params,
                                choice.search_params, other))  # fmt: skip
    out = []
    for v in variants:
        index = vector_index(endpoint, v, timeout_s=60, lite=lite)
        found, lat = [], []
        for vec in queries:
            t = time.perf_counter()
            # What the service asks for a page of 10: limit + 16 (image_search.indexing).
            hits = index.search(vec, SEARCH_LIMIT + 16)
            lat.append((time.perf_counter() - t) * 1000)
            found.append([h.id for h in hits[:K]])
        row = {"params": {**v.search_params, "consistency": v.consistency},
               "recall": recall_at_k(found, truth),
               "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}  # fmt: skip
        logger.info("  VectorIndex.search %s: recall@10 %.4f, p50 %.1f ms, p99 %.1f ms",
                    row["params"], row["recall"], row["p50_ms"], row["p99_ms"])  # fmt: skip
        out.append(row)
    return out


# -- metadata queries ------------------------------------------------------------------------------
def time_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm: connection, statement cache
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def metadata_latencies(uri: str, n: int, reps: int = 15) -> dict[str, float]:
    """Median ms of each query the service runs on the metadata store, at n rows."""
    from sqlalchemy import func, select

    from image_search.stores.metadata import Image, SqlMetadataStore

    store = SqlMetadataStore(uri, timeout_s=30)
    rng = np.random.default_rng([SEED, 3])
    mids = milvus_ids(int(rng.integers(max(1, n - 26))), 26).tolist()
    one = meta_uuid(int(rng.integers(n)))
    # Row ids are 1..n in insert order (fill_metadata): the cursors of the same deep pages.
    mid_cursor, end_cursor = n - n // 2 + 1, 21

    def count_rows() -> int:  # the baseline: what count() ran before the kept counter
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count(Image.id))).scalar_one())

    try:
        return {
            "count": time_ms(store.count, reps),
            "count rows (COUNT(*))": time_ms(count_rows, reps),
            "page offset 0": time_ms(lambda: store.page(0, 20), reps),
            "page offset n/2": time_ms(lambda: store.page(n // 2, 20), reps),
            "page offset n-20": time_ms(lambda: store.page(max(0, n - 20), 20), reps),
            "page before n/2": time_ms(lambda: store.page(0, 20, before=mid_cursor), reps),
            "page before n-20": time_ms(lambda: store.page(0, 20, before=end_cursor), reps),
            "get meta_uuid": time_ms(lambda: store.get(one), reps),
            "by_milvus_ids x26": time_ms(lambda: store.by_milvus_ids(mids), reps),
            # Every replica runs it when it starts (IndexService.ensure_stores).
            "create_schema": time_ms(store.create_schema, 3),
        }
    finally:
        store.engine.dispose()


# -- one store -------------------------------------------------------------------------------------
def run_store(kind: str, args: argparse.Namespace, basis: Basis, workdir: Path) -> dict[str, Any]:
    choice = IndexChoice(args.index_type, args.index_params, args.search_params, args.consistency)
    logger.info("== %s: %d vectors, %s", kind, args.vectors, choice.label())
    out: dict[str, Any] = {
        "store": kind,
        "vectors": args.vectors,
        "index": choice.label(),
        "segment_mb": args.segment_mb if kind == "server" else None,
    }
    stores = (server_stores(workdir, args.segment_mb, args.mariadb_buffer_mb, args.milvus_set,
                            args.milvus_gomaxprocs)
              if kind == "server" else lite_stores(workdir))  # fmt: skip
    if kind == "server":
        out["milvus_settings"] = dict(args.milvus_set)
        out["milvus_gomaxprocs"] = args.milvus_gomaxprocs or None
    out["mariadb_buffer_mb"] = stores.buffer_mb
    server: processes.Server | None = None
    peak = PeakSampler(stores.vector_pid)
    try:
        with peak:
            out["metadata_insert_s"] = fill_metadata(stores.metadata_uri, args.vectors)
            logger.info("  %d metadata rows in %.0fs", args.vectors, out["metadata_insert_s"])
            fill_metadata(stores.small_metadata_uri, args.small_rows)
            out["fill"] = fill_vectors(stores, choice, basis, args.vectors)
            logger.info("  vectors: %s", json.dumps(out["fill"]))
            out["metadata_ms"] = {
                "small": metadata_latencies(stores.small_metadata_uri, args.small_rows),
                "large": metadata_latencies(stores.metadata_uri, args.vectors),
            }
            fresh = chunk(basis, 0, args.queries, stream=1)  # not in the index
            rows = served_rows(args.vectors, args.queries)
            stored = chunk(basis, 0, min(GEN_CHUNK, args.vectors))[rows]
            truth, out["exact_numpy_s"] = exact_truth(basis, args.vectors,
                                                      np.concatenate([fresh, stored]))  # fmt: skip
            out["recall_direct"] = direct_recall(stores.endpoint, choice, fresh,
                                                 truth[: len(fresh)], args.ef_sweep,
                                                 lite=stores.kind == "lite")  # fmt: skip
            server = start_service(workdir, stores, choice)
            processes.wait_ready(server, "/readyz", args.ready_timeout)
            indexer = replica_pids(server.workdir, "Indexer")
            rss_start = [rss_mb(p) for p in indexer]
            rng = np.random.default_rng([SEED, 5])
            out["http"] = measure_http(server, args.vectors, args.clients, args.requests,
                                       args.file_requests, args.deadline, rng)  # fmt: skip
            out["recall_served"] = served_recall(server, rows, truth[len(fresh) :],
                                                 args.deadline)  # fmt: skip
            out["rss_mb"] = {
                "indexer_pids": indexer, "indexer_start": rss_start,
                "indexer_end": [rss_mb(p) for p in indexer],
                "vector_server": tree_rss_mb(stores.vector_pid() or -1),
                "vector_server_peak": peak.peak or None,
            }  # fmt: skip
            for ef in args.serve_ef:
                with SIGNALS.uninterrupted():
                    processes.stop(server)
                server = None
                params = {**choice.search_params, "ef": ef}
                other = IndexChoice(choice.index_type, choice.index_params, params,
                                    choice.consistency)  # fmt: skip
                logger.info("  the service again with %s", other.label())
                server = start_service(workdir, stores, other)
                processes.wait_ready(server, "/readyz", args.ready_timeout)
                at = measure_stored(server, args.vectors, args.clients, args.requests,
                                    args.deadline, rng)  # fmt: skip
                at["recall_served"] = served_recall(server, rows, truth[len(fresh) :],
                                                    args.deadline)  # fmt: skip
                logger.info("  served recall@10 at ef %d: %s", ef, fmt(at["recall_served"], 4))
                out.setdefault("http_at_ef", {})[str(ef)] = at
            if args.alternate_code is not None:
                sides = [("this", ROOT), ("other", args.alternate_code)]
                out["alternated"] = {"commits": {k: commit_of(c) for k, c in sides}}
                for r in range(args.rounds):
                    # This code first in even rounds, the other in odd ones: a drift over the
                    # run (the host's neighbours, the store's caches) falls on both alike.
                    for label, code in sides if r % 2 == 0 else sides[::-1]:
                        with SIGNALS.uninterrupted():
                            processes.stop(server)
                        server = None
                        logger.info("  round %d: the service of %s (%s)", r + 1, label,
                                    out["alternated"]["commits"][label])  # fmt: skip
                        server = start_service(workdir, stores, choice, code)
                        processes.wait_ready(server, "/readyz", args.ready_timeout)
                        # The same searches for both sides of a round.
                        same = np.random.default_rng([SEED, 11, r])
                        at = measure_stored(server, args.vectors, args.clients, args.requests,
                                            args.deadline, same)  # fmt: skip
                        out["alternated"].setdefault(label, []).append(at)
    except Exception as exc:
        status = stores.vector_exit()
        if status is None:
            raise
        # What failed is then only the symptom (a refused connection, many frames deep): say
        # what happened to the server instead.
        symptom = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StoreDied(
            f"{kind}: the vector server (pid {stores.vector_pid()}) "
            f"{exit_reason(status)}; its memory peaked at {peak.peak:.0f} MB "
            f"(sampled every {peak.every_s:.0f} s); then {symptom}"
        ) from exc
    finally:
        if server is not None:
            with SIGNALS.uninterrupted():
                processes.stop(server)
        stores.stop()
    return out


def milvus_setting(text: str) -> tuple[str, int | float | str]:
    """`section.key=value` for --milvus-set, the value typed as YAML will read it back (a
    number, true/false, else a string): the test server checks each key against what its
    milvus.yaml holds when it starts (tests.servers.milvus.check_written)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if raw.lower() in ("true", "false"):
        return key.strip(), raw.lower() == "true"
    value: int | float | str = raw
    for kind in (int, float):
        try:
            value = kind(raw)
            break
        except ValueError:
            continue
    return key.strip(), value


def gomaxprocs(text: str) -> int:
    """--milvus-gomaxprocs: 0 (Go's default) or more; Go ignores anything else, silently."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0 or a positive count, got {text!r}")
    return int(text)


# -- report ----------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"search at scale: {args.vectors:,} vectors of dim 1280 (real views mixed and "
        f"perturbed), limit {SEARCH_LIMIT}; recall@{K} against exact brute force (=1.00)"
    ]
    server = next((r for r in results if r["store"] == "server"), None)
    if server is not None:
        sealed = f"near {args.segment_mb} MB" if args.segment_mb else "at its defaults"
        pool = fmt(server.get("mariadb_buffer_mb"))
        lines.append(f"server: MariaDB's buffer pool {pool} MB, Milvus segments sealed {sealed}")
        settings = [f"{k}={v}" for k, v in args.milvus_set]
        if args.milvus_gomaxprocs:
            settings.append(f"GOMAXPROCS={args.milvus_gomaxprocs}")
        if settings:
            lines.append("Milvus settings: " + ", ".join(settings))
    head = (f"{'store':>6} | {'index':<42} | {'insert s':>8} | {'index s':>7} | "
            + " | ".join(f"{'p50/p99 ms x' + str(c):>16}" for c in args.clients)
            + f" | {'file p50 ms':>11} | {'recall served':>13} | {'recall direct':>13} | "
              f"{'Indexer MB':>10} | {'Milvus MB (peak)':>16}")  # fmt: skip
    lines += [head, "-" * len(head)]
    for r in results:
        h, rss = r["http"], r["rss_mb"]
        cells = [f"{fmt(h[f'stored_c{c}']['p50_ms'])}/{fmt(h[f'stored_c{c}']['p99_ms'])}"
                 for c in args.clients]  # fmt: skip
        direct = r["recall_direct"][0]["recall"]
        idx = [v for v in rss["indexer_end"] if v is not None]
        lines.append(
            f"{r['store']:>6} | {r['index']:<42} | {fmt(r['fill']['insert_s']):>8} | "
            f"{fmt(r['fill']['index_wait_s']):>7} | " + " | ".join(f"{c:>16}" for c in cells)
            + f" | {fmt(h['file_c1']['p50_ms']):>11} | {fmt(r['recall_served'], 4):>13} | "
              f"{fmt(direct, 4):>13} | {fmt(max(idx) if idx else None):>10} | "
              f"{fmt(rss['vector_server']) + ' (' + fmt(rss['vector_server_peak']) + ')':>16}"
        )  # fmt: skip
    for r in results:
        lines.append(f"{r['store']}: VectorIndex.search by params (recall@{K}, p50/p99 ms):")
        for row in r["recall_direct"]:
            lines.append(f"    {json.dumps(row['params']):<24} recall {row['recall']:.4f}  "
                         f"{fmt(row['p50_ms'], 1)}/{fmt(row['p99_ms'], 1)} ms")  # fmt: skip
        small, large = r["metadata_ms"]["small"], r["metadata_ms"]["large"]
        lines.append(f"{r['store']}: metadata queries, median ms at {args.small_rows:,} rows vs "
                     f"{args.vectors:,} rows (ratio)")  # fmt: skip
        for q in small:
            ratio = large[q] / small[q] if small[q] else None
            lines.append(f"    {q:<20} {small[q]:8.2f} {large[q]:9.2f}  ({fmt(ratio, 1)}x)")
        idx_start = [v for v in r["rss_mb"]["indexer_start"] if v is not None]
        first = max(idx_start) if idx_start else None
        last = max(idx) if idx else None
        lines.append(f"{r['store']}: Indexer RSS MB after start {fmt(first)}, "
                     f"after the searches and lists {fmt(last)}")  # fmt: skip
        for ef, at in r.get("http_at_ef", {}).items():
            runs = [(c, at[f"stored_c{c}"]) for c in args.clients]
            cells = [f"{fmt(m['p50_ms'])}/{fmt(m['p99_ms'])} ms ({fmt(m['req_s'], 1)}/s) x{c}"
                     for c, m in runs]  # fmt: skip
            lines.append(f"{r['store']}: served at ef {ef}: " + ", ".join(cells)
                         + f"; recall served {fmt(at['recall_served'], 4)}")  # fmt: skip
        alt = r.get("alternated")
        if alt:
            lines.append(f"{r['store']}: alternated, this code ({alt['commits']['this']}) "
                         f"against the other ({alt['commits']['other']}), searches by stored "
                         "image, p50/p99 ms (searches/s), CPU ms a search:")  # fmt: skip
            for label in ("this", "other"):
                for i, at in enumerate(alt.get(label, [])):
                    cells = [f"{fmt(m['p50_ms'])}/{fmt(m['p99_ms'])} ({fmt(m['req_s'], 1)}/s, "
                             f"{fmt(m['cpu']['ms_per_request'], 1)}) x{c}"
                             for c in args.clients
                             if (m := at.get(f"stored_c{c}"))]  # fmt: skip
                    lines.append(f"    {label:<5} round {i + 1}: " + ", ".join(cells))
        http_lists = {k: v["p50_ms"] for k, v in r["http"].items() if k.startswith("GET ")}
        lines.append(f"{r['store']}: HTTP p50 ms: " +
                     ", ".join(f"{k[4:]} {fmt(v, 1)}" for k, v in http_lists.items()))  # fmt: skip
    return lines


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from image_search.config import load_settings

    st = load_settings(ROOT / "config.yaml").stores
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--store", choices=("server", "lite", "both"), default="both")
    ap.add_argument("--clients", default="1,16", help="concurrent clients, e.g. 1,16")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    ap.add_argument("--short", action="store_true", help=f"CI smoke run: {SHORT}")
    ap.add_argument("--views", type=int, default=1_500, help="real views embedded")
    ap.add_argument("--evalset", type=Path, default=DEFAULT_EVALSET,
                    help="built evaluation set (scripts/eval-photos.sh), if present")  # fmt: skip
    ap.add_argument("--queries", type=int, default=300, help="recall queries")
    ap.add_argument("--requests", type=int, default=400, help="searches per concurrency")
    ap.add_argument("--file-requests", type=int, default=8, help="POST /sample/file at 1 client")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds per phase at most")
    ap.add_argument("--small-rows", type=int, default=SMALL_ROWS, help="metadata baseline rows")
    ap.add_argument("--index-type", default=st.index_type)
    ap.add_argument("--index-params", type=json.loads, default=st.index_params, help="JSON")
    ap.add_argument("--search-params", type=json.loads, default=st.search_params, help="JSON")
    ap.add_argument("--consistency", default=st.search_consistency_level,
                    help="the searches' consistency level (Strong or Session)")  # fmt: skip
    ap.add_argument(
        "--segment-mb",
        type=int,
        default=0,
        help="Milvus server: seal segments near this size in MB (0: its default)",
    )
    ap.add_argument("--mariadb-buffer-mb", type=int, default=MARIADB_BUFFER_MB,
                    help="MariaDB: InnoDB buffer pool, MB (0: the test server's)")  # fmt: skip
    ap.add_argument("--milvus-set", type=milvus_setting, action="append", default=[],
                    metavar="KEY=VALUE", help="Milvus server: set a milvus.yaml key, e.g. "
                    "queryNode.segcore.knowhereThreadPoolNumRatio=1 (repeatable)")  # fmt: skip
    # Measured and not kept as advice; the figures are in docs/performance.md ("Nor is it Go's
    # scheduler in Milvus").
    ap.add_argument("--milvus-gomaxprocs", type=gomaxprocs, default=0, metavar="N",
                    help="Milvus server: Go's GOMAXPROCS (0: Go's default, one per core); "
                         "Milvus sizes its thread pools from it too")  # fmt: skip
    ap.add_argument("--ef-sweep", default="64,256,512", help="more HNSW ef to measure recall at")
    ap.add_argument("--serve-ef", default="",
                    help="HNSW ef to serve again with after the configured one (HTTP searches "
                         "by stored image and served recall at each), e.g. 64")  # fmt: skip
    ap.add_argument("--alternate-code", type=Path, metavar="DIR",
                    help="another checkout of the project (e.g. `git worktree add DIR "
                         "<commit>`): after the other phases, serve it and this code in turn "
                         "on the same filled stores and measure the searches by stored image "
                         "of each, --rounds times")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=2, help="rounds of --alternate-code")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    args = ap.parse_args(argv)
    if args.short:
        for key, value in SHORT.items():
            setattr(args, key, value)
    args.clients = [int(c) for c in str(args.clients).split(",") if c]
    args.ef_sweep = [int(e) for e in str(args.ef_sweep).split(",") if e]
    args.serve_ef = [int(e) for e in str(args.serve_ef).split(",") if e]
    if args.index_type != "HNSW":
        args.ef_sweep, args.serve_ef = [], []
    other = args.alternate_code
    if other is not None and not (other / "serve_config.yaml").is_file():
        ap.error(f"--alternate-code: {args.alternate_code} holds no serve_config.yaml, so it is "
                 "not a checkout of this project")  # fmt: skip
    if args.rounds < 1:
        ap.error(f"--rounds: at least 1, not {args.rounds}")
    args.queries = min(args.queries, args.vectors)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    SIGNALS.install()
    host = machine()
    began = time.monotonic()
    views = embed_views(args.views, None if args.short else args.evalset, args.cache)
    basis = Basis.of(views)
    sample = perturb(basis, np.random.default_rng([SEED, 9]), 2000)
    nearest_view = (2 - 2 * sample @ basis.views.T).min(axis=1)
    logger.info("perturbed vector to its nearest real view: median squared L2 %.3f "
                "(a real view to its nearest other view: %.3f)", float(np.median(nearest_view)),
                float(np.median(np.sort(2 - 2 * views @ views.T, axis=1)[:, 1])))  # fmt: skip
    kinds = ["server", "lite"] if args.store == "both" else [args.store]
    results: list[dict[str, Any]] = []
    try:
        for kind in kinds:
            workdir = Path(tempfile.mkdtemp(prefix=f"ise-ss-{kind}-", dir="/tmp"))
            try:
                results.append(run_store(kind, args, basis, workdir))
            finally:
                if not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            # Each store's figures as soon as they exist: a long run stopped later keeps them.
            finish(results, args, host, began)
    except KeyboardInterrupt:
        logger.error("interrupted; everything started is stopped")
        return 130
    except StoreDied as exc:
        logger.error("%s. Everything started is stopped.", exc)
        return 1
    return 0


def finish(results: list[dict[str, Any]], args: argparse.Namespace, host: dict[str, Any],
           began: float) -> None:  # fmt: skip
    """Print the table of the stores measured so far and write them as JSON."""
    host = {**host, "loadavg_at_end": list(os.getloadavg())}
    logger.info("")
    logger.info("machine: %d CPUs, %s; load average at start %s, at end %s (shared machine: "
                "other work moves these figures); %.0f min in all", host["cpu_count"],
                host["cpu_model"], host["loadavg_at_start"], host["loadavg_at_end"],
                (time.monotonic() - began) / 60)  # fmt: skip
    for line in report(results, args):
        logger.info("%s", line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": host, "results": results}, indent=2,
                                       default=str) + "\n")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
