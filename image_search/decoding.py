"""How the service turns an image's bytes into the model's inputs, as its settings say.

One recipe for the two places that decode: the Decoder deployment (uploads: pixels, size,
thumbnail) and the Embedder (a search's query, decoded where its bytes arrive; see
Embedder.embed_query). Both must give the model the same pixels for the same bytes, or a
photo would not find itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from image_search.config import Settings
from image_search.embedding import model_card
from image_search.imaging import DecodedImage, ImageFacts, PreprocessSpec, decode, image_facts
from image_search.regions import index_views, query_views


@dataclass(frozen=True)
class Decoding:
    spec: PreprocessSpec
    max_pixels: int
    thumbnail_size: int
    pooled_cells: bool  # search.query_cells == "pooled": how a query's cells are cut

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoding:
        return cls(
            spec=model_card(settings.model.name).spec,
            max_pixels=settings.limits.max_pixels,
            thumbnail_size=settings.server.thumbnail_size,
            pooled_cells=settings.search.query_cells == "pooled",
        )

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
        """For content already indexed: its size and thumbnail only."""
        return image_facts(data, self.max_pixels, self.thumbnail_size)
