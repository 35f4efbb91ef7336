"""The ingress's view of the graph: flows over DeploymentHandles, and response shaping."""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime
from typing import Any

from fastapi import Request
from ray.serve.handle import DeploymentHandle

from deployments.config import Settings
from deployments.errors import BadRequest, Conflict, SearchEngineError, StoreUnavailable
from deployments.imaging import DecodedImage, content_info, sniff
from deployments.indexing import Hit
from deployments.stores import ImageRecord

_MIME = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
         "bmp": "image/bmp", "tiff": "image/tiff"}  # fmt: skip


SWITCH_RETRIES = 40
SWITCH_WAIT_S = 0.5


def is_model_switch(err: SearchEngineError | None) -> bool:
    return isinstance(err, StoreUnavailable) and "model switch" in err.message


def find_domain_error(exc: BaseException) -> SearchEngineError | None:
    """Ray wraps replica exceptions (RayTaskError, chained across hops); find our own."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, SearchEngineError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    return None


def _iso(dt: datetime) -> str:
    return dt.isoformat()


class ServeBackend:
    def __init__(
        self,
        decoder: DeploymentHandle[Any],
        embedder: DeploymentHandle[Any],
        indexer: DeploymentHandle[Any],
        settings: Settings,
    ) -> None:
        self.decoder = decoder
        self.embedder = embedder
        self.indexer = indexer
        self.settings = settings
        lim = settings.limits
        # Multipart overhead is small; a whole batch may carry max_batch_files full uploads.
        self.max_body_bytes = lim.max_upload_bytes * lim.max_batch_files + 1024 * 1024

    # -- checks -----------------------------------------------------------------------------
    def check_limit(self, offset: int, limit: int) -> None:
        cap = self.settings.limits.max_search_limit
        if offset + limit > cap:
            raise BadRequest(f"offset + limit must be at most {cap}")

    def check_admin(self, request: Request) -> None:
        token = self.settings.server.admin_token
        given = request.headers.get("x-admin-token", "")
        if token and not hmac.compare_digest(token, given):
            raise BadRequest("this admin route needs the X-Admin-Token header")

    @staticmethod
    def mime_for(key: str) -> str:
        return _MIME.get(key.rsplit(".", 1)[-1], "application/octet-stream")

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            checks.update(await self.indexer.readiness.remote())
        except Exception as exc:  # readiness must answer, whatever the replica's state
            checks["indexer"] = f"unavailable: {type(exc).__name__}"
        try:
            info = await self.embedder.info.remote()
            checks["model"] = "ok" if info["dim"] > 0 else "not loaded"
        except Exception as exc:
            checks["model"] = f"unavailable: {type(exc).__name__}"
        return checks

    # -- flows ------------------------------------------------------------------------------
    async def index_one(
        self, data: bytes, file_name: str, meta_uuid: str | None, tags: tuple[str, ...] = ()
    ) -> ImageRecord:
        info = content_info(data)
        meta_uuid = meta_uuid or info.md5
        plan = (await self.indexer.plan.remote([(meta_uuid, info.sha256)]))[0]
        if plan == "conflict":
            raise Conflict(f"meta_uuid {meta_uuid!r} already exists")
        decoded = self.decoder.decode.remote(data)
        vector = self.embedder.embed.remote(decoded) if plan == "new" else None
        rec: ImageRecord = await self.indexer.ingest.remote(
            (meta_uuid, file_name, info), data, decoded, vector, tags
        )
        return rec

    async def index_many(
        self, uploads: list[tuple[bytes, str]]
    ) -> list[ImageRecord | SearchEngineError]:
        n = len(uploads)
        results: list[ImageRecord | SearchEngineError | None] = [None] * n
        infos: dict[int, Any] = {}
        uuids: set[str] = set()
        for i, (data, _) in enumerate(uploads):
            try:
                info = content_info(data)
            except SearchEngineError as exc:
                results[i] = exc
                continue
            if info.md5 in uuids:
                results[i] = Conflict(f"meta_uuid {info.md5!r} appears twice in this request")
                continue
            uuids.add(info.md5)
            infos[i] = info
        todo = list(infos)
        plans = await self.indexer.plan.remote([(infos[i].md5, infos[i].sha256) for i in todo])
        for i, plan in zip(todo, plans, strict=True):
            if plan == "conflict":
                results[i] = Conflict(f"meta_uuid {infos[i].md5!r} already exists")
        todo = [i for i, p in zip(todo, plans, strict=True) if p != "conflict"]
        is_new = {i for i, p in zip(list(infos), plans, strict=True) if p == "new"}
        decoded = await asyncio.gather(
            *(self.decoder.decode.remote(uploads[i][0]) for i in todo), return_exceptions=True
        )
        good: list[tuple[int, DecodedImage]] = []
        for i, d in zip(todo, decoded, strict=True):
            if isinstance(d, BaseException):
                results[i] = find_domain_error(d) or SearchEngineError(str(d))
            else:
                good.append((i, d))
        new = [(i, d) for i, d in good if i in is_new]
        vectors = await self.embedder.embed_many.remote([d for _, d in new]) if new else []
        vec_of = {i: v for (i, _), v in zip(new, vectors, strict=True)}
        written = await self.indexer.ingest_many.remote(
            [(infos[i].md5, uploads[i][1], infos[i]) for i, _ in good],
            [uploads[i][0] for i, _ in good],
            [d for _, d in good],
            [vec_of.get(i) for i, _ in good],
        ) if good else []  # fmt: skip
        for (i, _), res in zip(good, written, strict=True):
            results[i] = res
        return [r if r is not None else SearchEngineError("not processed") for r in results]

    async def search_bytes(
        self, data: bytes, offset: int, limit: int, threshold: float | None
    ) -> list[Hit]:
        sniff(data)  # a 415/400 right here, without a trip through the graph
        decoded = self.decoder.decode.remote(data)
        attempt = 0
        while True:
            vector = self.embedder.embed.remote(decoded)
            try:
                hits: list[Hit] = await self.indexer.search.remote(vector, offset, limit, threshold)
                return hits
            except Exception as exc:
                # During a rolling model switch the Embedder and the Indexer update separately;
                # for a few seconds one of them runs the other model. Wait that out, briefly.
                if attempt >= SWITCH_RETRIES or not is_model_switch(find_domain_error(exc)):
                    raise
            attempt += 1
            await asyncio.sleep(SWITCH_WAIT_S)

    # -- presentation -----------------------------------------------------------------------
    async def present(self, request: Request, records: list[ImageRecord]) -> list[dict[str, Any]]:
        """MetaResult dicts: the original's fields plus width/height/size and thumbnail_url."""
        base = (self.settings.server.public_url or str(request.base_url)).rstrip("/")
        presigned: dict[str, str | None] = {}
        if self.settings.stores.file_url_mode == "presigned" and records:
            urls = await asyncio.gather(
                *(self.indexer.presigned_url.remote(r.file_path) for r in records)
            )
            presigned = {r.file_path: u for r, u in zip(records, urls, strict=True)}
        out = []
        for r in records:
            rel = f"/files/{r.file_path}"
            out.append(
                {
                    "id": r.id,
                    "meta_uuid": r.meta_uuid,
                    "hash_code": r.hash_code,
                    "sha256": r.sha256,
                    "milvus_id": r.milvus_id,
                    "file_name": r.file_name,
                    "file_path": r.file_path,
                    "created_at": _iso(r.created_at),
                    "updated_at": _iso(r.updated_at),
                    "file_url": presigned.get(r.file_path) or base + rel,
                    "file_relative_url": rel,
                    "thumbnail_url": f"{base}/meta/image/{r.meta_uuid}/thumbnail",
                    "width": r.width,
                    "height": r.height,
                    "size_bytes": r.size_bytes,
                    "mime": r.mime,
                    "tags": list(r.tags),
                }
            )
        return out
