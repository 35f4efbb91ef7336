"""The HTTP contract: the original's routes, fields and defaults, plus ours. Work is in flows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from deployments import metrics
from deployments.envelope import ERROR_RESPONSES, ok
from deployments.flows import IngressFlows
from deployments.responses import IMAGE_RESPONSE, batch_outcome, meta_results, mime_for, search_hits
from image_search.config import SearchMode
from image_search.errors import BadRequest, ImageTooLarge, NotFound
from image_search.records import ImageRecord, check_meta_uuid, parse_tags, valid_object_key

WEB_DIR = Path(__file__).parent / "web"
router = APIRouter(responses=ERROR_RESPONSES)
# A row id (BIGINT) is at most this; a larger cursor would overflow the query's parameter.
MAX_ROW_ID = 2**63 - 1
# Any page offset past this is past any library; larger ones overflow SQL's 64-bit OFFSET.
MAX_OFFSET = 2**31 - 1
# Region search per request (image_search/regions.py); default search.mode.
MODE_HELP = (
    "global: whole-picture search; regions: also finds a picture from a crop, a thumbnail or "
    "a collage containing it (409 where the collection has no region vectors). Default: "
    "search.mode (auto: regions where the collection has them)"
)
# Groups per page of the duplicate review (each holds two images or more).
MAX_DUPLICATE_GROUPS = 100
# Tags per answer of GET /tags (the most used first).
MAX_TAG_COUNTS = 1000
# A tag filter, the same on every route that takes one (parse_tags checks each value).
TAG_FILTER = (
    "Only images that carry every one of these tags (exact match, case included): repeat "
    "the field or separate tags with commas"
)
TagQuery = Annotated[list[str] | None, Query(description=TAG_FILTER)]
TagForm = Annotated[list[str] | None, Form(description=TAG_FILTER)]


async def _flows(request: Request) -> IngressFlows:
    # Set by create_app for the app of one Ingress replica: routes reach the graph through it.
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request.
    flows: IngressFlows = request.app.state.flows
    return flows


Flows = Annotated[IngressFlows, Depends(_flows)]


async def read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"{file.filename or 'file'} is over the {limit}-byte limit")
    return data


def cache_headers(flows: IngressFlows, policy: str) -> dict[str, str]:
    # Behind keys, a shared cache must not hand an image to someone without one.
    who = "private" if flows.settings.keys_required else "public"
    return {"Cache-Control": f"{who}, {policy}"}


async def shown(
    flows: IngressFlows, request: Request, records: list[ImageRecord]
) -> list[dict[str, Any]]:
    base = flows.settings.server.public_url or str(request.base_url)
    return meta_results(records, base, await flows.file_urls(records))


@router.get("/", response_model=None)
async def root(request: Request) -> Any:
    """The web page for browsers; the original's health probe for everyone else."""
    if "text/html" in request.headers.get("accept", "") and (WEB_DIR / "index.html").exists():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")
    return ok("Hello World")


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    return ok("alive")


@router.get("/readyz", response_model=None)
async def readyz(flows: Flows) -> JSONResponse:
    checks, model = await flows.readiness()
    ready = all(v == "ok" for v in checks.values())
    body = {"succeed": ready, "message": "ready" if ready else "not ready", "checks": checks,
            "model": model}  # fmt: skip
    return JSONResponse(body, status_code=200 if ready else 503)


@router.post("/meta/image/file")
async def upload(
    flows: Flows,
    request: Request,
    file: Annotated[UploadFile, File()],
    meta_uuid: Annotated[str | None, Form(max_length=64)] = None,
    tags: Annotated[str | None, Form(max_length=2000)] = None,
) -> dict[str, Any]:
    """Upload one image; `tags` is an optional comma-separated list of labels."""
    labels = parse_tags(tags)  # checked before the file is read
    data = await read_upload(file, flows.settings.limits.max_upload_bytes)
    rec = await flows.index_one(data, file.filename or "", check_meta_uuid(meta_uuid), labels)
    metrics.count_upload("indexed")
    return ok("indexed", data=(await shown(flows, request, [rec]))[0])


@router.post("/meta/image/files")
async def upload_many(
    flows: Flows, request: Request, file: Annotated[list[UploadFile], File()]
) -> dict[str, Any]:
    """Batch upload: many `file` parts, embedded as one batch; one outcome per file."""
    limits = flows.settings.limits
    if len(file) > limits.max_batch_files:
        raise BadRequest(f"{len(file)} files; at most {limits.max_batch_files} per request")
    # The parts are spooled to disk by the form parser; they are read and sent on a slice at a
    # time, so neither this process nor a replica ever holds the whole batch.
    names: list[str] = []
    results: list[Any] = []
    sliced: list[tuple[bytes, str]] = []
    for i, part in enumerate(file):
        sliced.append((await read_upload(part, limits.max_upload_bytes), part.filename or ""))
        names.append(part.filename or "")
        if i == len(file) - 1 or sum(len(d) for d, _ in sliced) >= limits.batch_slice_bytes:
            results.extend(await flows.index_many(sliced))
            sliced = []
    records = [r for r in results if isinstance(r, ImageRecord)]
    rows = iter(await shown(flows, request, records))
    items = [batch_outcome(name, res, rows) for name, res in zip(names, results, strict=True)]
    indexed = sum(1 for i in items if i["succeed"])
    duplicates = sum(1 for i in items if i["status"] == 409)
    metrics.count_upload("indexed", indexed)
    metrics.count_upload("duplicate", duplicates)
    metrics.count_upload("rejected", len(items) - indexed - duplicates)
    return ok(f"{indexed} of {len(items)} indexed", data=items)


@router.get("/meta/image")
async def list_images(
    flows: Flows,
    request: Request,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    tags: TagQuery = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
) -> dict[str, Any]:
    """A page, newest first, and `total`; with `tags`, of the images that carry them all.

    `next_before` is the cursor of the next page (pass it as `before`; null on the last page):
    a cursor page costs the same at any depth, where a deep `offset` reads every row it skips.
    """
    records, total = await flows.page(offset, limit, parse_tags(tags), before)
    next_before = records[-1].id if len(records) == limit else None
    return ok(data=await shown(flows, request, records), total=total, next_before=next_before)


@router.get("/meta/image/count")
async def count(flows: Flows, tags: TagQuery = None) -> dict[str, Any]:
    """`image_count` (with `tags`: of the images that carry them all), `vector_count`, and
    `regions`: whether the collection has region vectors (search `mode=regions` works)."""
    images, vectors = await flows.counts(parse_tags(tags))
    regions = await flows.collection_has_regions()
    return ok(image_count=images, vector_count=vectors, regions=regions)


@router.get("/tags")
async def tag_counts(
    flows: Flows, limit: Annotated[int, Query(ge=1, le=MAX_TAG_COUNTS)] = 200
) -> dict[str, Any]:
    """The most used tags, each with the number of images that carry it."""
    counts = await flows.tag_counts(limit)
    return ok(data=[{"tag": c.tag, "count": c.images} for c in counts])


@router.delete("/meta/image/images")
async def delete_all(flows: Flows) -> dict[str, Any]:
    """Delete every image. Admin scope (or X-Admin-Token): deployments/security.py checks it."""
    n = await flows.delete_all()
    return ok(f"deleted {n} images", deleted=n)


@router.get("/meta/image/{meta_uuid}")
async def get_image(meta_uuid: str, request: Request, flows: Flows) -> dict[str, Any]:
    rec = await flows.get(meta_uuid)
    return ok(data=(await shown(flows, request, [rec]))[0])


@router.delete("/meta/image/{meta_uuid}")
async def delete_image(meta_uuid: str, request: Request, flows: Flows) -> dict[str, Any]:
    rec = await flows.delete(meta_uuid)
    return ok("deleted", data=(await shown(flows, request, [rec]))[0])


@router.get("/meta/image/{meta_uuid}/thumbnail", response_class=Response, responses=IMAGE_RESPONSE)
async def thumbnail(meta_uuid: str, flows: Flows) -> Response:
    jpeg = await flows.thumbnail(meta_uuid)
    return Response(jpeg, media_type="image/jpeg", headers=cache_headers(flows, "max-age=86400"))


@router.get("/files/{key:path}", response_class=Response, responses=IMAGE_RESPONSE)
async def file_bytes(key: str, flows: Flows) -> Response:
    """Stored bytes through our own API (local store, or S3 in `api` mode). Keys are hashes."""
    if not valid_object_key(key):  # our keys are hashes; nothing else is served
        raise NotFound("no such file")
    data = await flows.object_bytes(key)
    headers = cache_headers(flows, "max-age=31536000, immutable")  # keys are content hashes
    return Response(data, media_type=mime_for(key), headers=headers)


@router.post("/sample/file")
async def search(
    flows: Flows,
    request: Request,
    file: Annotated[UploadFile, File()],
    offset: Annotated[int, Form(ge=0)] = 0,
    limit: Annotated[int, Form(ge=1)] = 100,
    threshold: Annotated[float | None, Form(ge=0.0, le=4.0)] = None,
    tags: TagForm = None,
    mode: Annotated[SearchMode | None, Form(description=MODE_HELP)] = None,
) -> dict[str, Any]:
    """Search by an image; with `tags`, among the images that carry them all."""
    labels = parse_tags(tags)  # checked before the file is read
    data = await read_upload(file, flows.settings.limits.max_upload_bytes)
    hits = await flows.search_bytes(data, offset, limit, threshold, labels, mode)
    metrics.count_search("file")
    return ok(data=search_hits(hits, await shown(flows, request, [h.record for h in hits])))


@router.get("/sample/meta/{meta_uuid}")
async def search_stored(
    flows: Flows,
    meta_uuid: str,
    request: Request,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1)] = 100,
    threshold: Annotated[float | None, Query(ge=0.0, le=4.0)] = None,
    tags: TagQuery = None,
    mode: Annotated[SearchMode | None, Query(description=MODE_HELP)] = None,
) -> dict[str, Any]:
    """Search with an image that is already stored: no upload, no embedding."""
    hits = await flows.search_stored(meta_uuid, offset, limit, threshold, parse_tags(tags), mode)
    metrics.count_search("stored")
    return ok(data=search_hits(hits, await shown(flows, request, [h.record for h in hits])))


@router.get("/duplicates")
async def duplicates(
    flows: Flows,
    request: Request,
    threshold: Annotated[
        float | None,
        Query(
            ge=0.0,
            allow_inf_nan=False,
            description="Max distance linking two images; default duplicates.threshold",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_DUPLICATE_GROUPS)] = 20,
) -> dict[str, Any]:
    """Groups of copies and near-duplicates, largest first, the copy to keep first in each;
    every member has its `distance` to it and a `match` (docs/duplicates.md)."""
    page = await flows.duplicates(threshold, offset, limit)
    records = [m.record for g in page.groups for m in g.members]
    rows = iter(await shown(flows, request, records))
    data = [
        {**g.fields(), "members": [{**next(rows), **m.fields()} for m in g.members]}
        for g in page.groups
    ]
    return ok(data=data, total=page.total, threshold=page.threshold, images=page.images,
              max_threshold=flows.settings.duplicates.max_threshold)  # fmt: skip
