"""The Indexer's batched single-upload write: several callers' uploads in one call."""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.indexer import Indexer
from image_search.errors import Conflict
from image_search.imaging import content_info
from image_search.records import ImageRecord, Upload
from tests.unit.deployments.conftest import Service, jpeg


def test_a_batch_of_uploads_gets_one_answer_each(service: Service) -> None:
    decoder: Any = service.flows.decoder._target
    raw = Indexer.func_or_class.index.__wrapped__  # the body serve.batch calls with lists
    datas = [jpeg(1), jpeg(2), jpeg(1), jpeg(3)]
    uuids = ["a", "b", "c", "a"]  # "c" repeats a's bytes; the second "a" is taken by then
    uploads = [Upload(content_info(d), u, f"{u}.jpg") for d, u in zip(datas, uuids, strict=True)]
    decoded = [decoder.decode(d, True) for d in datas]
    embedded = [service.embedder.embed_upload(d) for d in decoded]
    indexer = service.flows.indexer._target
    out = asyncio.run(raw(indexer, uploads, datas, embedded))
    assert [type(r) for r in out] == [ImageRecord, ImageRecord, ImageRecord, Conflict]
    assert out[0].milvus_id == out[2].milvus_id  # same bytes: one content, one vector
    assert service.svc.counts() == (3, 2)
    assert service.svc.stores.metadata.ref_drift(lease_s=0) == []
