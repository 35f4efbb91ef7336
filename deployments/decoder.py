"""The Decoder deployment: an upload's bytes -> validated, upright RGB pixels sized for the
model, with its size and thumbnail. CPU only. A search's query is decoded by the Embedder
instead (Embedder.embed_query says why)."""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.hops import Call, run_many
from deployments.replica_port import listen_on_node_address
from image_search.config import settings_from_json
from image_search.decoding import Decoding
from image_search.imaging import DecodedImage, ImageFacts


@serve.deployment
class Decoder:
    def __init__(self, settings_json: str) -> None:
        listen_on_node_address()
        self.decoding = Decoding.from_settings(settings_from_json(settings_json))

    def decode(self, data: bytes, for_index: bool = False, regions: bool = False) -> DecodedImage:
        """Decoding.decode: pixels, and for an image being indexed its thumbnail too."""
        return self.decoding.decode(data, for_index, regions)

    def facts(self, data: bytes) -> ImageFacts:
        """For content already indexed: its size and thumbnail only; no pixels leave here."""
        return self.decoding.facts(data)

    async def many(self, calls: list[Call]) -> list[Any]:
        """Several of the Ingress's decode calls in one hop (deployments/hops.py)."""
        return await run_many(self, ("decode",), calls)
