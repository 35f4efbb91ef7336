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

    def decode(self, data: bytes) -> DecodedImage:
        return decode(data, self.spec, self.max_pixels)
