"""The Decoder deployment: bytes -> validated, upright RGB pixels sized for the model. CPU only."""

from __future__ import annotations

from ray import serve

from image_search.config import settings_from_json
from image_search.embedding import model_card
from image_search.imaging import DecodedImage, ImageFacts, decode, image_facts
from image_search.regions import index_views, query_views


@serve.deployment
class Decoder:
    def __init__(self, settings_json: str) -> None:
        settings = settings_from_json(settings_json)
        self.spec = model_card(settings.model.name).spec
        self.max_pixels = settings.limits.max_pixels
        self.thumbnail_size = settings.server.thumbnail_size
        self.pooled_cells = settings.search.query_cells == "pooled"

    def decode(self, data: bytes, for_index: bool = False, regions: bool = False) -> DecodedImage:
        """Pixels for the model; for an image being indexed, its stored thumbnail too; with
        `regions`, region search's extra inputs (a stored image's or a query's)."""
        size = self.thumbnail_size if for_index else 0
        out = decode(data, self.spec, self.max_pixels, thumbnail_size=size)
        if regions:
            # A second decode, at the draft size the extra views want: the global pixels
            # above stay exactly what they were without region search.
            if for_index:
                out.views = index_views(data, self.spec, self.max_pixels)
            else:
                out.views = query_views(data, self.spec, self.max_pixels, self.pooled_cells)
        return out

    def facts(self, data: bytes) -> ImageFacts:
        """For content already indexed: its size and thumbnail only; no pixels leave here."""
        return image_facts(data, self.max_pixels, self.thumbnail_size)
