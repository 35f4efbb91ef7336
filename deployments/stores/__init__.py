"""Store factories: the URI in settings picks the implementation of each protocol."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.config import Settings
from deployments.stores.base import (
    ImageRecord,
    MetadataStore,
    NewImage,
    ObjectStore,
    VectorHit,
    VectorIndex,
    milvus_id_for,
    object_key_for,
    thumbnail_key_for,
)

__all__ = [
    "ImageRecord",
    "MetadataStore",
    "NewImage",
    "ObjectStore",
    "Stores",
    "VectorHit",
    "VectorIndex",
    "milvus_id_for",
    "object_key_for",
    "open_metadata",
    "open_objects",
    "open_stores",
    "open_vectors",
    "thumbnail_key_for",
]


@dataclass
class Stores:
    metadata: MetadataStore
    objects: ObjectStore
    vectors: VectorIndex


def open_metadata(settings: Settings) -> MetadataStore:
    from deployments.stores.metadata import SqlMetadataStore

    return SqlMetadataStore(settings.stores.metadata_uri, settings.stores.connect_timeout_s)


def open_objects(settings: Settings) -> ObjectStore:
    uri = settings.stores.objects_uri
    if uri.startswith("file://"):
        from deployments.stores.objects import LocalObjectStore

        return LocalObjectStore(uri.removeprefix("file://"))
    if uri.startswith("s3://"):
        from deployments.stores.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    raise ValueError(f"unsupported objects_uri {uri!r}: use file://DIR or s3://BUCKET")


def vectors_endpoint(settings: Settings) -> str:
    """The gRPC URI to use: a server URI as is, or a local Milvus Lite server for a path."""
    uri = settings.stores.vectors_uri
    if uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        return uri
    from deployments.stores.lite_server import ensure_lite_server

    return ensure_lite_server(uri, settings.stores.lite_port)


def open_vectors(
    settings: Settings, dim: int, model_id: str, collection: str | None = None
) -> VectorIndex:
    from deployments.stores.vectors import MilvusVectorIndex

    st = settings.stores
    return MilvusVectorIndex(
        uri=vectors_endpoint(settings),
        collection=collection or st.collection,
        dim=dim,
        model_id=model_id,
        index_type=st.index_type,
        index_params=st.index_params,
        search_params=st.search_params,
        consistency_level=st.consistency_level,
        timeout_s=st.connect_timeout_s,
        token=st.vectors_token,
    )


def open_stores(settings: Settings, dim: int, model_id: str) -> Stores:
    return Stores(
        metadata=open_metadata(settings),
        objects=open_objects(settings),
        vectors=open_vectors(settings, dim, model_id),
    )
