"""The HTTP contract (the original's routes, fields and envelope, plus our additions)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics
from deployments.backend import ServeBackend, find_domain_error
from deployments.errors import BadRequest, ImageTooLarge, NotFound, SearchEngineError
from deployments.indexing import Hit
from deployments.stores import ImageRecord

logger = logging.getLogger("ray.serve")
WEB_DIR = Path(__file__).parent / "web"
_UUID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,36}$")

app = FastAPI(
    title="image-search-engine",
    description="Search by image (以图搜图) on Ray Serve. Envelope: {succeed, message, ...}.",
    version="0.1.0",
)
if WEB_DIR.is_dir():
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

_backend: ServeBackend | None = None

__all__ = ["app", "set_backend"]


def set_backend(backend: ServeBackend) -> None:
    global _backend
    _backend = backend


def backend() -> ServeBackend:
    if _backend is None:
        raise RuntimeError("backend not set: the Ingress deployment sets it at start")
    return _backend


Backend = Annotated[ServeBackend, Depends(backend)]


def ok(message: str = "ok", **fields: Any) -> dict[str, Any]:
    return {"succeed": True, "message": message, **fields}


def fail(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"succeed": False, "message": message, **fields}, status_code=status)


# -- errors: one envelope for everything ------------------------------------------------------
@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return fail(exc.status_code, str(exc.detail))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return fail(400, "invalid request: " + "; ".join(parts))


def _error_response(exc: BaseException) -> JSONResponse:
    err = find_domain_error(exc)
    if err is not None:
        store = getattr(err, "store", "")
        return fail(err.status, err.message, **({"store": store} if store else {}))
    logger.error("unhandled error", exc_info=exc)
    return fail(500, f"internal error: {type(exc).__name__}")


@app.exception_handler(SearchEngineError)
async def _domain_error(_: Request, exc: SearchEngineError) -> JSONResponse:
    return _error_response(exc)


@app.middleware("http")
async def _any_error(request: Request, call_next: Any) -> Any:
    """Ray-wrapped replica errors and anything unexpected still get the envelope.

    (Starlette re-raises after an `Exception` handler runs, which Serve turns into a bare 500.)
    """
    try:
        return await call_next(request)
    except Exception as exc:
        return _error_response(exc)


@app.middleware("http")
async def _reject_oversized(request: Request, call_next: Any) -> Any:
    """Refuse bodies over the limit from Content-Length, before they are spooled to disk."""
    limit = _backend.max_body_bytes if _backend else None
    length = request.headers.get("content-length")
    if limit and length and length.isdigit() and int(length) > limit:
        return fail(413, f"request body is {length} bytes; the limit is {limit}")
    return await call_next(request)


# -- health ---------------------------------------------------------------------------------
@app.get("/", response_model=None)
async def root(request: Request) -> Any:
    """The web page for browsers; the original's health probe for everyone else."""
    if "text/html" in request.headers.get("accept", "") and (WEB_DIR / "index.html").exists():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")
    return ok("Hello World")


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return ok("alive")


@app.get("/readyz", response_model=None)
async def readyz(be: Backend) -> Any:
    checks = await be.readiness()
    ready = all(v == "ok" for v in checks.values())
    body = {"succeed": ready, "message": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


# -- images ---------------------------------------------------------------------------------
def _check_uuid(meta_uuid: str | None) -> str | None:
    if not meta_uuid:
        return None  # the default, md5 of the bytes, is chosen once the bytes are read
    if not _UUID_RE.match(meta_uuid):
        raise BadRequest("meta_uuid must be 1-36 characters of letters, digits, _ . : -")
    return meta_uuid


async def _read(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"{file.filename or 'file'} is over the {limit}-byte limit")
    return data


@app.post("/meta/image/file")
async def upload(
    request: Request,
    be: Backend,
    file: Annotated[UploadFile, File()],
    meta_uuid: Annotated[str | None, Form(max_length=64)] = None,
    tags: Annotated[str | None, Form(max_length=2000)] = None,
) -> dict[str, Any]:
    """Upload one image; `tags` is an optional comma-separated list of labels."""
    data = await _read(file, be.settings.limits.max_upload_bytes)
    labels = tuple(t.strip() for t in (tags or "").split(",") if t.strip())
    rec = await be.index_one(data, file.filename or "", _check_uuid(meta_uuid), labels)
    metrics.count_upload("indexed")
    return ok("indexed", data=(await be.present(request, [rec]))[0])


def _outcome(
    name: str, res: ImageRecord | SearchEngineError, shown: Iterator[dict[str, Any]]
) -> dict[str, Any]:
    if isinstance(res, ImageRecord):
        return {"file_name": name, "succeed": True, "status": 200, "message": "indexed",
                "data": next(shown)}  # fmt: skip
    return {"file_name": name, "succeed": False, "status": res.status, "message": res.message}


@app.post("/meta/image/files")
async def upload_many(
    request: Request, be: Backend, file: Annotated[list[UploadFile], File()]
) -> dict[str, Any]:
    """Batch upload: many `file` parts, embedded as one batch; one outcome per file."""
    limits = be.settings.limits
    if len(file) > limits.max_batch_files:
        raise BadRequest(f"{len(file)} files; at most {limits.max_batch_files} per request")
    uploads = [(await _read(f, limits.max_upload_bytes), f.filename or "") for f in file]
    results = await be.index_many(uploads)
    records = [r for r in results if isinstance(r, ImageRecord)]
    shown = iter(await be.present(request, records))
    items = [_outcome(name, res, shown) for (_, name), res in zip(uploads, results, strict=True)]
    indexed = sum(1 for i in items if i["succeed"])
    duplicates = sum(1 for i in items if i["status"] == 409)
    metrics.count_upload("indexed", indexed)
    metrics.count_upload("duplicate", duplicates)
    metrics.count_upload("rejected", len(items) - indexed - duplicates)
    return ok(f"{indexed} of {len(items)} indexed", data=items)


@app.get("/meta/image")
async def list_images(
    request: Request,
    be: Backend,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    records, total = await be.indexer.page.remote(offset, limit)
    return ok(data=await be.present(request, records), total=total)


@app.get("/meta/image/count")
async def count(be: Backend) -> dict[str, Any]:
    images, vectors = await be.indexer.counts.remote()
    return ok(image_count=images, vector_count=vectors)


@app.delete("/meta/image/images")
async def delete_all(
    be: Backend, request: Request, recreate_table: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    be.check_admin(request)
    n = await be.indexer.delete_all.remote()
    return ok(f"deleted {n} images", deleted=n, recreate_table=recreate_table)


@app.get("/meta/image/{meta_uuid}")
async def get_image(meta_uuid: str, request: Request, be: Backend) -> dict[str, Any]:
    rec = await be.indexer.get.remote(meta_uuid)
    return ok(data=(await be.present(request, [rec]))[0])


@app.delete("/meta/image/{meta_uuid}")
async def delete_image(meta_uuid: str, request: Request, be: Backend) -> dict[str, Any]:
    rec = await be.indexer.delete.remote(meta_uuid)
    return ok("deleted", data=(await be.present(request, [rec]))[0])


@app.get("/meta/image/{meta_uuid}/thumbnail")
async def thumbnail(meta_uuid: str, be: Backend) -> Response:
    jpeg = await be.indexer.thumbnail.remote(meta_uuid)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


@app.get("/files/{key:path}")
async def file_bytes(key: str, be: Backend) -> Response:
    """Stored bytes through our own API (local store, or S3 in `api` mode). Keys are hashes."""
    if not key.startswith("meta/image/") or ".." in key:
        raise NotFound("no such file")
    data = await be.indexer.object_bytes.remote(key)
    return Response(
        data,
        media_type=be.mime_for(key),
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


# -- search ---------------------------------------------------------------------------------
def _hits(hits: list[Hit], shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**s, "distance": h.distance, "score": (2.0 - h.distance) / 2.0 * 100.0}
        for h, s in zip(hits, shown, strict=True)
    ]


@app.post("/sample/file")
async def search(
    request: Request,
    be: Backend,
    file: Annotated[UploadFile, File()],
    offset: Annotated[int, Form(ge=0)] = 0,
    limit: Annotated[int, Form(ge=1)] = 100,
    threshold: Annotated[float | None, Form(ge=0.0, le=4.0)] = None,
) -> dict[str, Any]:
    be.check_limit(offset, limit)
    data = await _read(file, be.settings.limits.max_upload_bytes)
    hits = await be.search_bytes(data, offset, limit, threshold)
    metrics.count_search("file")
    return ok(data=_hits(hits, await be.present(request, [h.record for h in hits])))


@app.get("/sample/meta/{meta_uuid}")
async def search_stored(
    meta_uuid: str,
    request: Request,
    be: Backend,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1)] = 100,
    threshold: Annotated[float | None, Query(ge=0.0, le=4.0)] = None,
) -> dict[str, Any]:
    """Search with an image that is already stored: no upload, no embedding."""
    be.check_limit(offset, limit)
    vector = be.indexer.vector_of.remote(meta_uuid)
    hits = await be.indexer.search.remote(vector, offset, limit, threshold)
    metrics.count_search("stored")
    return ok(data=_hits(hits, await be.present(request, [h.record for h in hits])))
