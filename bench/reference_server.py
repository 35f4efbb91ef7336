"""The original's design as one process, for bench.compare to measure ours against.

ponponon/image_search_engine serves synchronous FastAPI routes from one uvicorn worker (they run
in Starlette's thread pool) and does each request's work inline: read the bytes, write them to
storage, embed the one image, insert the vector and the row; a search embeds and asks the
index. This keeps that shape with in-process stand-ins for its services, so what differs from
ours is the architecture, not the model or the preprocessing:

- the same model and preprocessing as ours (load_embedder, image_search.imaging.decode with the
  model card's spec and our pixel limit), torch fp32, 2 threads, one image per forward pass;
- image bytes in a folder (the original: MinIO), rows in SQLite (the original: MySQL), vectors
  in one numpy array searched by brute force for squared L2 (the original: Milvus);
- the same routes, form fields and envelope as ours for POST /meta/image/file and
  POST /sample/file, so one client drives both. No thumbnails, tags or API keys: the original
  has none, so ours is charged for its extra work.

    python -m bench.reference_server --port 8100 --data DIR
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse

from image_search.config import ModelSettings, load_settings
from image_search.embedding import EmbeddingModel, load_embedder
from image_search.errors import Conflict, SearchEngineError
from image_search.imaging import decode, sniff

logger = logging.getLogger("bench.reference_server")
HOST = "127.0.0.1"  # loopback only: a benchmark target, never a service
THREADS = 2
# What the reference pins whatever config.yaml says; a key ModelSettings lacks is left out, so
# this works before and after `runtime` exists (see reference_model_settings).
PINNED_MODEL = {"runtime": "torch", "precision": "fp32", "threads": THREADS}


def reference_model_settings(config: ModelSettings) -> ModelSettings:
    """Our configured model (name, weights), pinned to torch fp32 on THREADS threads."""
    pinned = {k: v for k, v in PINNED_MODEL.items() if k in ModelSettings.model_fields}
    return ModelSettings.model_validate({**config.model_dump(), **pinned})


class ReferenceIndex:
    """Bytes in a folder, rows in SQLite, vectors in a numpy array; one lock around the index.

    Row i of the array is the image with rowid i + 1, so a hit's metadata is one query.
    """

    def __init__(self, data: Path, model: EmbeddingModel, max_pixels: int) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.objects = data / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.vectors = np.zeros((0, model.dim), dtype=np.float32)
        # One connection shared by the pool's threads, serialised by the lock.
        self.db = sqlite3.connect(data / "meta.db", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")  # as our embedded SQLite store
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS image (id INTEGER PRIMARY KEY, meta_uuid TEXT UNIQUE,"
            " hash_code TEXT, file_name TEXT, file_path TEXT, created_at TEXT)"
        )
        self.db.execute("DELETE FROM image")  # the array starts empty: so does the table
        self.db.commit()

    def embed(self, data: bytes) -> np.ndarray:
        pixels = decode(data, self.model.spec, self.max_pixels).pixels
        # As the Embedder stacks its batch (a copy: torch wants writable memory).
        vector: np.ndarray = self.model.embed(np.stack([pixels]))[0]
        return vector

    def add(self, data: bytes, file_name: str, meta_uuid: str | None) -> dict[str, Any]:
        ext, _ = sniff(data)
        hash_code = hashlib.md5(data).hexdigest()
        meta_uuid = meta_uuid or hash_code
        file_path = f"meta/image/{hash_code}.{ext}"
        target = self.objects / file_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        vector = self.embed(data)
        now = datetime.now(UTC).isoformat()
        with self.lock:
            try:
                cur = self.db.execute(
                    "INSERT INTO image (id, meta_uuid, hash_code, file_name, file_path,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (len(self.vectors) + 1, meta_uuid, hash_code, file_name, file_path, now),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"meta_uuid {meta_uuid!r} already exists") from None
            self.db.commit()
            self.vectors = np.vstack([self.vectors, vector[None]])
            row_id = cur.lastrowid
        return {"id": row_id, "meta_uuid": meta_uuid, "hash_code": hash_code,
                "milvus_id": row_id, "file_name": file_name, "file_path": file_path,
                "created_at": now}  # fmt: skip

    def search(
        self, data: bytes, offset: int, limit: int, threshold: float | None
    ) -> list[dict[str, Any]]:
        query = self.embed(data)
        with self.lock:
            diff = self.vectors - query
            distances = np.einsum("ij,ij->i", diff, diff)
            order = np.argsort(distances, kind="stable")[offset : offset + limit]
            hits = [(int(i), float(distances[i])) for i in order]
            if threshold is not None:
                hits = [(i, d) for i, d in hits if d <= threshold]
            ids = [i + 1 for i, _ in hits]
            rows = self.db.execute(
                "SELECT id, meta_uuid, hash_code, file_name, file_path, created_at FROM image"
                f" WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
        by_id = {r[0]: r for r in rows}
        out = []
        for i, distance in hits:
            rid, meta_uuid, hash_code, file_name, file_path, created_at = by_id[i + 1]
            out.append({"id": rid, "meta_uuid": meta_uuid, "hash_code": hash_code,
                        "milvus_id": rid, "file_name": file_name, "file_path": file_path,
                        "created_at": created_at, "distance": distance,
                        "score": (2.0 - distance) / 2.0 * 100.0})  # fmt: skip
        return out


def create_app(index: ReferenceIndex, model_settings: ModelSettings) -> FastAPI:
    app = FastAPI(title="reference (the original's design, one process)")

    @app.exception_handler(SearchEngineError)
    async def envelope(_: Any, err: SearchEngineError) -> JSONResponse:
        return JSONResponse({"succeed": False, "message": err.message}, status_code=err.status)

    @app.get("/readyz")
    def readyz() -> dict[str, Any]:
        # The model is loaded before the server listens: answering at all means ready.
        return {"succeed": True, "message": "ready", "model": model_settings.model_dump()}

    # Plain `def` routes, as the original's: Starlette runs them in its thread pool.
    @app.post("/meta/image/file")
    def upload(
        file: Annotated[UploadFile, File()], meta_uuid: Annotated[str | None, Form()] = None
    ) -> dict[str, Any]:
        data = file.file.read()
        rec = index.add(data, file.filename or "", meta_uuid)
        return {"succeed": True, "message": "indexed", "data": rec}

    @app.post("/sample/file")
    def search(
        file: Annotated[UploadFile, File()],
        offset: Annotated[int, Form(ge=0)] = 0,
        limit: Annotated[int, Form(ge=1)] = 100,
        threshold: Annotated[float | None, Form(ge=0.0, le=4.0)] = None,
    ) -> dict[str, Any]:
        data = file.file.read()
        return {"succeed": True, "message": "ok",
                "data": index.search(data, offset, limit, threshold)}  # fmt: skip

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", type=Path, required=True, help="folder for bytes and rows")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # config.yaml (and ISE__ variables) as ours reads them: the same model and pixel limit.
    settings = load_settings()
    model_settings = reference_model_settings(settings.resolved().model)
    model = load_embedder(model_settings)
    # The first forward pass allocates and picks kernels; ours pays it before serving too.
    model.embed(np.zeros((1, model.spec.crop, model.spec.crop, 3), dtype=np.uint8))
    args.data.mkdir(parents=True, exist_ok=True)
    index = ReferenceIndex(args.data, model, settings.limits.max_pixels)
    logger.info("reference server: %s on http://%s:%d", model.model_id, HOST, args.port)
    # One worker, as the original; uvicorn stops cleanly on SIGTERM and Ctrl-C.
    uvicorn.run(create_app(index, model_settings), host=HOST, port=args.port, workers=1,
                log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
