"""The Decoder deployment: bytes -> validated, upright RGB pixels sized for the model. CPU only."""

from __future__ import annotations

from ray import serve

from image_search.config import settings_from_json
from image_search.embedding import model_card
from image_search.imaging import DecodedImage, decode


@serve.deployment
class Decoder:
    def __init__(self, settings_json: str) -> None:
        settings = settings_from_json(settings_json)
        self.spec = model_card(settings.model.name).spec
        self.max_pixels = settings.limits.max_pixels
        self.thumbnail_size = settings.server.thumbnail_size

    def decode(self, data: bytes, for_index: bool = False) -> DecodedImage:
        """Pixels for the model; for an image being indexed, its stored thumbnail too."""
        size = self.thumbnail_size if for_index else 0
        return decode(data, self.spec, self.max_pixels, thumbnail_size=size)
