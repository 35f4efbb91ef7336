"""Store factories: the URI in settings picks each implementation; the model picks the collection.

The vector collection is bound to the configured model's id and dimension, both derived here
from settings, so no caller restates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from image_search.config import Settings
from image_search.embedding import model_card
from image_search.stores.base import (
    MetadataStore,
    ObjectStore,
    RegionIndex,
    VectorHit,
    VectorIndex,
)

__all__ = [
    "MetadataStore",
    "ObjectStore",
    "RegionIndex",
    "Stores",
    "VectorHit",
    "VectorIndex",
    "milvus_index",
    "milvus_region_index",
    "open_metadata",
    "open_objects",
    "open_stores",
    "open_vectors",
    "records_regions",
    "vectors_endpoint",
]


@dataclass
class Stores:
    metadata: MetadataStore
    objects: ObjectStore
    vectors: VectorIndex
    # Region search's second collection (used only where `vectors` records regions).
    regions: RegionIndex | None = None


def open_metadata(settings: Settings) -> MetadataStore:
    from image_search.stores.metadata import SqlMetadataStore

    return SqlMetadataStore(settings.stores.metadata_uri, settings.stores.connect_timeout_s)


def open_objects(settings: Settings) -> ObjectStore:
    uri = settings.stores.objects_uri
    if uri.startswith("file://"):
        from image_search.stores.objects import LocalObjectStore

        return LocalObjectStore(uri.removeprefix("file://"))
    if uri.startswith("s3://"):
        from image_search.stores.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    raise ValueError(f"unsupported objects_uri {uri!r}: use file://DIR or s3://BUCKET")


def is_vectors_server(uri: str) -> bool:
    """A Milvus server's URI, as opposed to a path for the embedded Milvus Lite."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def vectors_endpoint(settings: Settings) -> str:
    """The gRPC URI to use: a server URI as is, or a local Milvus Lite server for a path."""
    uri = settings.stores.vectors_uri
    if is_vectors_server(uri):
        return uri
    from image_search.stores.lite_server import ensure_lite_server

    return ensure_lite_server(uri, settings.stores.lite_port)


def milvus_index(settings: Settings, dim: int, model_id: str, collection: str) -> VectorIndex:
    """A collection for an explicit model id and dimension (tests; open_vectors otherwise)."""
    from image_search.regions import RECIPE
    from image_search.stores.vectors import MilvusVectorIndex

    return MilvusVectorIndex(
        regions=RECIPE if settings.search.regions else "",
        collection=collection,
        dim=dim,
        model_id=model_id,
        **_milvus_options(settings),
    )


def _milvus_options(settings: Settings) -> dict[str, Any]:
    """What every Milvus collection of the service is opened with: endpoint, index, search
    parameters, consistency, timeout and credentials."""
    st = settings.stores
    return {
        "uri": vectors_endpoint(settings),
        # Keepalives for a server only (MilvusVectorIndex says why not for Milvus Lite).
        "keepalive": is_vectors_server(st.vectors_uri),
        "index_type": st.index_type,
        "index_params": st.index_params,
        "search_params": st.search_params,
        "consistency_level": st.consistency_level,
        "search_consistency_level": st.search_consistency_level,
        "timeout_s": st.connect_timeout_s,
        "token": st.vectors_token,
    }


def records_regions(vectors: VectorIndex) -> bool:
    """Whether a collection was built with region vectors (MilvusVectorIndex.has_regions:
    the recipe it records); a stand-in index without that method has none."""
    recorded = getattr(vectors, "has_regions", None)
    return bool(recorded is not None and recorded())


def region_collection(collection: str) -> str:
    return f"{collection}_regions"


def open_regions(settings: Settings, collection: str | None = None) -> RegionIndex:
    """The region collection beside a vector collection (created on first use)."""
    m = settings.model
    return milvus_region_index(settings, model_card(m.name).dim, m.model_id,
                               collection or settings.stores.collection)  # fmt: skip


def milvus_region_index(settings: Settings, dim: int, model_id: str, collection: str
                        ) -> RegionIndex:  # fmt: skip
    """The region collection beside `collection` for an explicit model id and dimension
    (tests; open_regions otherwise)."""
    from image_search.regions import MAX_PARTS
    from image_search.stores.vectors import MilvusRegionIndex

    return MilvusRegionIndex(
        collection=region_collection(collection),
        dim=dim,
        model_id=model_id,
        max_parts=MAX_PARTS,
        **_milvus_options(settings),
    )


def open_vectors(settings: Settings, collection: str | None = None) -> VectorIndex:
    """The configured model's collection (or another collection for the same model)."""
    m = settings.model
    dim = model_card(m.name).dim
    return milvus_index(settings, dim, m.model_id, collection or settings.stores.collection)


def open_stores(settings: Settings, vectors: VectorIndex | None = None) -> Stores:
    return Stores(
        metadata=open_metadata(settings),
        objects=open_objects(settings),
        vectors=vectors if vectors is not None else open_vectors(settings),
        # Only beside a Milvus collection (a stand-in index in tests has none).
        regions=open_regions(settings, getattr(vectors, "collection", None))
        if vectors is None or hasattr(vectors, "has_regions")
        else None,
    )
