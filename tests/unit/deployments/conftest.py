"""The ingress app over stand-in handles: the real Decoder and Indexer code, a cheap embedder."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deployments.decoder import Decoder
from deployments.flows import IngressFlows
from deployments.indexer import Indexer
from deployments.ingress import create_app
from image_search.config import Settings, load_settings, settings_to_json
from image_search.decoding import Decoding
from image_search.indexing import IndexService
from image_search.stores import Stores
from image_search.stores.metadata import SqlMetadataStore
from image_search.stores.objects import LocalObjectStore
from tests.fakes import FakeEmbedder, FakeHandle, MemoryVectorIndex

MODEL_ID = "fake:fp32"


def jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def stand_in_indexer(svc: IndexService) -> Any:
    """The Indexer deployment's own class, given a service instead of building one.

    Its __init__ would open the configured stores; everything else runs as in a replica.
    """
    cls = Indexer.func_or_class
    indexer = cls.__new__(cls)
    indexer.svc = svc
    indexer._ready = True
    indexer._start_batching()
    return indexer


class Service:
    """One app and what is behind it, for assertions on the stores too."""

    def __init__(self, tmp: Path, embedder: FakeEmbedder, **overrides: Any) -> None:
        overrides = {"server.thumbnail_size": 64, **overrides}
        self.settings: Settings = load_settings(environ={}, overrides=overrides)
        self.vectors = MemoryVectorIndex(model_id=MODEL_ID)
        stores = Stores(
            SqlMetadataStore(f"sqlite:///{tmp}/meta.db"), LocalObjectStore(tmp / "objects"),
            self.vectors,
        )  # fmt: skip
        self.svc = IndexService(stores, thumbnail_size=self.settings.server.thumbnail_size)
        self.svc.ensure_stores()
        self.embedder = embedder
        embedder.decoding = Decoding.from_settings(self.settings)
        decoder = Decoder.func_or_class(settings_to_json(self.settings))
        self.flows = IngressFlows(
            FakeHandle(decoder), FakeHandle(embedder), FakeHandle(stand_in_indexer(self.svc)),
            self.settings,
        )  # fmt: skip
        self.client = TestClient(create_app(self.flows), raise_server_exceptions=False)


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(embedder: FakeEmbedder | None = None, **overrides: Any) -> Service:
        service = Service(tmp_path / f"s{len(made)}", embedder or FakeEmbedder(MODEL_ID),
                          **overrides)  # fmt: skip
        made.append(service)
        return service

    yield make
    for service in made:
        service.client.close()


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()


@pytest.fixture
def client(service: Service) -> TestClient:
    return service.client
