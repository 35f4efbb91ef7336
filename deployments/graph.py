"""The Ray Serve deployments (Decoder, Embedder, Indexer, Ingress) and the one graph builder.

Each deployment is a thin shell over a Ray-free core class (imaging, embedding, indexing), so
the backfill pipeline runs the very same code. Replica counts, autoscaling and batch sizes live
in serve_config.yaml, not here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments import metrics
from deployments.backend import ServeBackend
from deployments.config import Settings, load_settings, settings_from_json, settings_to_json
from deployments.embedding import Embedding, load_embedder, model_spec
from deployments.errors import SearchEngineError, StoreUnavailable
from deployments.http import app, set_backend
from deployments.imaging import ContentInfo, DecodedImage, decode
from deployments.indexing import Hit, IndexService, IngestItem, Plan
from deployments.stores import ImageRecord, NewImage, object_key_for

logger = logging.getLogger("ray.serve")
T = TypeVar("T")


@serve.deployment
class Decoder:
    """bytes -> validated, upright RGB pixels sized for the model. CPU only, no model."""

    def __init__(self, settings_json: str) -> None:
        settings = settings_from_json(settings_json)
        self.spec = model_spec(settings.model.name)
        self.max_pixels = settings.limits.max_pixels

    def decode(self, data: bytes) -> DecodedImage:
        return decode(data, self.spec, self.max_pixels)


@serve.deployment
class Embedder:
    """Batched embedding: concurrent requests are stacked into one forward pass."""

    def __init__(self, settings_json: str) -> None:
        settings = settings_from_json(settings_json)
        self.model = load_embedder(settings.model)
        self._warm()

    def _warm(self) -> None:
        # The first forward pass allocates and picks kernels; pay it before taking traffic.
        spec = self.model.spec
        self.model.embed(np.zeros((1, spec.crop, spec.crop, 3), dtype=np.uint8))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batched: Any = self.embed  # @serve.batch adds these setters; mypy cannot see them
        batched.set_max_batch_size(int(user_config.get("max_batch_size", 16)))
        batched.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.01)))

    async def _forward(self, images: list[DecodedImage]) -> list[Embedding]:
        batch = np.stack([im.pixels for im in images])
        started = time.perf_counter()
        # In a thread, so the replica keeps collecting the next batch meanwhile.
        vectors = await asyncio.to_thread(self.model.embed, batch)
        metrics.observe_batch(len(images), time.perf_counter() - started)
        return [Embedding(self.model.model_id, v) for v in vectors]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, images: list[DecodedImage]) -> list[Embedding]:
        return await self._forward(images)

    async def embed_many(self, images: list[DecodedImage]) -> list[Embedding]:
        """An explicit batch (batch upload): one forward pass for the whole request."""
        return await self._forward(images)

    def info(self) -> dict[str, Any]:
        return {"model_id": self.model.model_id, "dim": self.model.dim}


@serve.deployment
class Indexer:
    """Owns the store clients; every write follows the consistency protocol in indexing.py."""

    def __init__(self, settings_json: str) -> None:
        self.svc = IndexService.from_settings(settings_from_json(settings_json))
        self._prepared = False
        try:
            self._prepare()
        except StoreUnavailable as exc:
            # Start anyway: /readyz reports the store, and calls retry until it is back.
            logger.warning("stores not ready at start: %s", exc.message)
        self._stop = threading.Event()
        threading.Thread(target=self._flush_loop, daemon=True, name="vector-flush").start()

    def _prepare(self) -> None:
        if not self._prepared:
            self.svc.prepare()  # raises ConfigError on a model/collection mismatch
            self._prepared = True

    def _flush_loop(self) -> None:
        flush_if_due = getattr(self.svc.stores.vectors, "flush_if_due", None)
        while flush_if_due and not self._stop.wait(0.5):
            try:
                flush_if_due()
            except SearchEngineError as exc:
                logger.warning("periodic flush failed: %s", exc.message)

    def _vector(self, emb: Embedding | None) -> np.ndarray | None:
        """Refuse a vector from another model than the collection's, e.g. mid rolling update."""
        if emb is None:
            return None
        expected = self.svc.stores.vectors.model_id
        if emb.model_id != expected:
            raise StoreUnavailable(
                f"the embedder runs {emb.model_id} but the index holds {expected}; "
                "a model switch is in progress, retry shortly",
                "vectors",
            )
        return emb.vector

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            self._prepare()
            return fn(*args)

        return await asyncio.to_thread(call)

    async def readiness(self) -> dict[str, str]:
        return await asyncio.to_thread(self.svc.readiness)

    async def plan(self, items: list[tuple[str, str]]) -> list[Plan]:
        return await self._run(self.svc.plan, items)

    async def ingest(
        self,
        meta: tuple[str, str, ContentInfo],
        data: bytes,
        decoded: DecodedImage,
        embedding: Embedding | None,
        tags: tuple[str, ...] = (),
    ) -> ImageRecord:
        item = IngestItem(_new_image(meta, decoded, tags), data, self._vector(embedding))
        return await self._run(self.svc.ingest, item)

    async def ingest_many(
        self,
        metas: Sequence[tuple[str, str, ContentInfo]],
        datas: Sequence[bytes],
        decoded: Sequence[DecodedImage],
        embeddings: Sequence[Embedding | None],
    ) -> list[ImageRecord | SearchEngineError]:
        items = [
            IngestItem(_new_image(m, d), b, self._vector(e))
            for m, b, d, e in zip(metas, datas, decoded, embeddings, strict=True)
        ]
        return await self._run(self.svc.ingest_many, items)

    async def search(
        self, embedding: Embedding, offset: int, limit: int, threshold: float | None
    ) -> list[Hit]:
        vector = self._vector(embedding)
        return await self._run(self.svc.search, vector, offset, limit, threshold)

    async def vector_of(self, meta_uuid: str) -> Embedding:
        vector = await self._run(self.svc.vector_of, meta_uuid)
        return Embedding(self.svc.stores.vectors.model_id, vector)

    async def get(self, meta_uuid: str) -> ImageRecord:
        return await self._run(self.svc.get, meta_uuid)

    async def page(self, offset: int, limit: int) -> tuple[list[ImageRecord], int]:
        return await self._run(self.svc.page, offset, limit)

    async def counts(self) -> tuple[int, int]:
        return await self._run(self.svc.counts)

    async def delete(self, meta_uuid: str) -> ImageRecord:
        return await self._run(self.svc.delete, meta_uuid)

    async def delete_all(self) -> int:
        return await self._run(self.svc.delete_all)

    async def object_bytes(self, key: str) -> bytes:
        return await self._run(self.svc.object_bytes, key)

    async def presigned_url(self, key: str) -> str | None:
        return await self._run(self.svc.stores.objects.presigned_url, key)

    async def thumbnail(self, meta_uuid: str) -> bytes:
        return await self._run(self.svc.thumbnail, meta_uuid)


def _new_image(
    meta: tuple[str, str, ContentInfo], decoded: DecodedImage, tags: tuple[str, ...] = ()
) -> NewImage:
    meta_uuid, file_name, info = meta
    return NewImage(
        meta_uuid=meta_uuid,
        hash_code=info.md5,
        sha256=info.sha256,
        file_name=file_name,
        file_path=object_key_for(info.sha256, info.ext),
        mime=info.mime,
        size_bytes=info.size,
        width=decoded.width,
        height=decoded.height,
        tags=tags,
    )


@serve.deployment
@serve.ingress(app)
class Ingress:
    """FastAPI ingress: routes live in deployments/http.py and call these handles."""

    def __init__(
        self,
        decoder: DeploymentHandle[Decoder],
        embedder: DeploymentHandle[Embedder],
        indexer: DeploymentHandle[Indexer],
        settings_json: str,
    ) -> None:
        set_backend(ServeBackend(decoder, embedder, indexer, settings_from_json(settings_json)))


def build_app(args: dict[str, Any]) -> Application:
    """The one graph builder, for `serve run serve_config.yaml` and `image-search serve`.

    args: {"config": path to config.yaml (optional), "overrides": {"dotted.key": value},
    "deployment_options": {name: options}}. The last is for `serve.run` from Python (tests),
    which has no serve_config.yaml: pass `serve_config_options()` to get the same replicas.
    """
    settings: Settings = load_settings(args.get("config"), overrides=args.get("overrides"))
    sj = settings_to_json(settings)
    opts: dict[str, dict[str, Any]] = args.get("deployment_options") or {}

    def opt(d: Any) -> Any:
        return d.options(**opts[d.name]) if d.name in opts else d

    graph: Application = opt(Ingress).bind(
        opt(Decoder).bind(sj), opt(Embedder).bind(sj), opt(Indexer).bind(sj), sj
    )
    return graph


def serve_config_options(path: str | Path = "serve_config.yaml") -> dict[str, dict[str, Any]]:
    """Per-deployment options from serve_config.yaml, for `serve.run` from Python."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for dep in doc["applications"][0].get("deployments", []):
        dep = dict(dep)
        out[dep.pop("name")] = dep
    return out
