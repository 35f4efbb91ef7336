"""What a Ray Data CPU task needs, built once per worker process and reused across its tasks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from image_search.config import Settings, settings_from_json
from image_search.embedding import model_card
from image_search.imaging import PreprocessSpec
from image_search.stores import MetadataStore, ObjectStore, open_metadata, open_objects


@dataclass(frozen=True)
class TaskContext:
    settings: Settings

    @functools.cached_property
    def spec(self) -> PreprocessSpec:
        return model_card(self.settings.model.name).spec

    @functools.cached_property
    def metadata(self) -> MetadataStore:
        metadata = open_metadata(self.settings)
        metadata.create_schema()
        return metadata

    @functools.cached_property
    def objects(self) -> ObjectStore:
        return open_objects(self.settings)


@functools.lru_cache(maxsize=2)
def task_context(settings_json: str) -> TaskContext:
    # Ray reuses worker processes across tasks: one set of clients per process, not per batch.
    return TaskContext(settings_from_json(settings_json))
