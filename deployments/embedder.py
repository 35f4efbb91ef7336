"""The Embedder deployment: concurrent requests are stacked into one batched forward pass.

The batch size and wait come from serve_config.yaml (user_config); the defaults below apply
only to a deployment started without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.hops import Call, run_many
from deployments.replica_port import listen_on_node_address
from image_search.config import settings_from_json
from image_search.decoding import Decoding
from image_search.embedding import EmbeddedUpload, Embedding, load_embedder
from image_search.embedding.feature_maps import RegionEmbedder, load_feature_maps
from image_search.imaging import DecodedImage
from image_search.regions import RegionVectors

logger = logging.getLogger(__name__)
MAX_BATCH_SIZE = 16
BATCH_WAIT_TIMEOUT_S = 0.01
# Decodes at once in one replica (queries, and the uploads the Ingress sends here undecoded:
# IngressFlows.index_one): as many as the 2 cores, so that decodes under load queue here
# instead of taking the CPU from the forward pass they feed (PIL and ONNX Runtime both release
# the GIL, so these threads and the model's run side by side).
DECODE_THREADS = 2


@serve.deployment
class Embedder:
    def __init__(self, settings_json: str) -> None:
        listen_on_node_address()
        settings = settings_from_json(settings_json)
        self.model = load_embedder(settings.model)
        self.model_settings = settings.model
        self.decoding = Decoding.from_settings(settings)
        self._decode_pool = ThreadPoolExecutor(DECODE_THREADS, "decode")
        self._regions: RegionEmbedder | None = None  # loaded on the first image with views
        # The first forward pass allocates and picks kernels; pay it before taking traffic.
        spec = self.model.spec
        self.model.embed(np.zeros((1, spec.crop, spec.crop, 3), dtype=np.uint8))
        choice = self.model.choice
        logger.info("embedder ready: %s (runtime %s, precision %s: %s)", self.model.model_id,
                    choice.runtime, choice.precision, choice.reason)  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batched: Any = self.embed  # @serve.batch adds these setters; mypy cannot see them
        batched.set_max_batch_size(int(user_config.get("max_batch_size", MAX_BATCH_SIZE)))
        batched.set_batch_wait_timeout_s(
            float(user_config.get("batch_wait_timeout_s", BATCH_WAIT_TIMEOUT_S))
        )

    async def _forward(self, images: list[DecodedImage]) -> list[Embedding]:
        batch = np.stack([im.pixels for im in images])
        started = time.perf_counter()
        # In a thread, so the replica keeps collecting the next batch meanwhile.
        vectors = await asyncio.to_thread(self.model.embed, batch)
        metrics.observe_batch(len(images), time.perf_counter() - started)
        out = [Embedding(self.model.model_id, v) for v in vectors]
        with_views = [i for i, im in enumerate(images) if im.views is not None]
        if with_views:
            # Region search's extra passes, after (and apart from) the global one.
            extra = await asyncio.to_thread(self._extra, [images[i] for i in with_views])
            for i, regions in zip(with_views, extra, strict=True):
                out[i] = Embedding(self.model.model_id, vectors[i], regions)
        return out

    def _extra(self, images: list[DecodedImage]) -> list[RegionVectors]:
        if self._regions is None:
            cfg = self.model_settings
            self._regions = RegionEmbedder(self.model, load_feature_maps(self.model, cfg.name,
                                                                         cfg.threads))  # fmt: skip
        return self._regions.embed([im.views for im in images if im.views is not None])

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def embed(self, images: list[DecodedImage]) -> list[Embedding]:
        return await self._forward(images)

    async def embed_query(self, data: bytes, regions: bool = False) -> Embedding:
        """A search's query, from its bytes: decoded here, then batched with the concurrent
        ones. A query needs no size or thumbnail, so no part of its decode has to go anywhere
        else, and decoding it where its bytes arrive saves the trip through the Decoder: one
        hop fewer per search, 9-12 ms of a one-client search on 2 cores (README, bench.compare)."""
        embedded: Embedding = await self.embed(await self._decode(data, False, regions))
        return embedded

    async def embed_upload(self, image: DecodedImage) -> EmbeddedUpload:
        """An uploaded file's vector (batched with the concurrent ones) and the facts of its
        decode that the Indexer stores: the pixels stop here, they go no further."""
        return EmbeddedUpload(await self.embed(image), image.facts())

    async def embed_upload_bytes(self, data: bytes, regions: bool = False) -> EmbeddedUpload:
        """An uploaded file's vector and facts, from its bytes: the Decoder's work done here,
        in the decode threads, for an upload that arrives while few others are under way
        (IngressFlows.index_one says when). The same recipe as the Decoder's, so the same
        bytes give the same vector whichever way they came."""
        return await self.embed_upload(await self._decode(data, True, regions))

    async def _decode(self, data: bytes, for_index: bool, regions: bool) -> DecodedImage:
        """Decoding.decode in the decode threads (DECODE_THREADS says why there)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, self.decoding.decode, data,
                                          for_index, regions)  # fmt: skip

    async def many(self, calls: list[Call]) -> list[Any]:
        """Several of the Ingress's embed_upload, embed_upload_bytes and embed_query calls
        in one hop (deployments/hops.py); their images go through `embed` together."""
        return await run_many(self, ("embed_upload", "embed_upload_bytes", "embed_query"), calls)

    def info(self) -> dict[str, Any]:
        """model_id, dim, and the runtime and precision it resolved to, with the reason."""
        return {"model_id": self.model.model_id, "dim": self.model.dim,
                **self.model.choice.as_dict()}  # fmt: skip
