"""What each call of an upload carries, single or batch. An upload with few others under way
sends its bytes to the Embedder (which decodes it) and to the Indexer (which stores them), its
pixels nowhere; past `direct_decode_max` uploads under way, the pixels come out of the Decoder
and go into the Embedder and no other call, and the bytes go to the Decoder and the Indexer. No
call returns the bytes. A search's bytes go to the Embedder alone, and its pixels nowhere.
(These count the calls' arguments and results; the Ingress passes each result on,
deployments.flows says why.)"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from deployments.hops import BatchedHandle
from tests.fakes import FakeHandle
from tests.unit.deployments.conftest import Service, jpeg


def parts(value: Any) -> Iterator[Any]:
    """`value` and everything inside it: dataclass fields, sequences, dict values."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from parts(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from parts(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from parts(v)


class Recording:
    """Wraps a stand-in handle; counts, per deployment, the calls' arguments as they arrive
    (resolved, as a replica receives them) and what each call returns."""

    def __init__(self, name: str, inner: FakeHandle, seen: Counter[tuple[str, str]],
                 datas: set[bytes]) -> None:  # fmt: skip
        self._name, self._inner, self._seen, self._datas = name, inner, seen, datas

    def __getattr__(self, method: str) -> Any:
        fn = getattr(self._inner._target, method)

        async def recorded(*args: Any) -> Any:
            self._note(f"{self._name} in", args)
            out = fn(*args)
            if asyncio.iscoroutine(out):
                out = await out
            self._note(f"{self._name} out", out)
            return out

        return getattr(FakeHandle(SimpleNamespace(**{method: recorded})), method)

    def _note(self, where: str, value: Any) -> None:
        for part in parts(value):
            if isinstance(part, np.ndarray) and part.dtype == np.uint8 and part.ndim == 3:
                self._seen[(where, "pixels")] += 1
            elif isinstance(part, bytes) and part in self._datas:
                self._seen[(where, "bytes")] += 1


def record(service: Service, datas: set[bytes]) -> Counter[tuple[str, str]]:
    seen: Counter[tuple[str, str]] = Counter()
    flows = service.flows
    for name in ("decoder", "embedder", "indexer"):
        recording = Recording(name, getattr(flows, name), seen, datas)
        setattr(flows, name, recording)
        # The hot path's calls go through the batched handles (deployments/hops.py).
        setattr(flows, f"to_{name}", BatchedHandle(recording, name))
    return seen


def crossings(seen: Counter[tuple[str, str]], what: str) -> dict[str, int]:
    return {where: n for (where, kind), n in seen.items() if kind == what}


def test_an_upload_alone_sends_its_bytes_to_the_embedder_and_the_indexer_and_no_pixels(
    service: Service,
) -> None:
    data = jpeg(7, (640, 480))
    seen = record(service, {data})
    r = service.client.post("/meta/image/file", files={"file": ("a.jpg", data)})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["width"] == 640  # the size still reaches the record
    # Decoded where its bytes arrive, as a query is: no trip through the Decoder.
    assert crossings(seen, "bytes") == {"embedder in": 1, "indexer in": 1}
    assert crossings(seen, "pixels") == {}


def test_an_upload_through_the_decoder_sends_its_pixels_once(service: Service) -> None:
    service.flows.set_direct_decode_max(0)  # the Decoder always decodes
    data = jpeg(7, (640, 480))
    seen = record(service, {data})
    r = service.client.post("/meta/image/file", files={"file": ("a.jpg", data)})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["width"] == 640
    # Out of the Decoder once, into the Embedder once; never into the Indexer.
    assert crossings(seen, "pixels") == {"decoder out": 1, "embedder in": 1}
    assert crossings(seen, "bytes") == {"decoder in": 1, "indexer in": 1}


def test_uploads_past_direct_decode_max_go_through_the_decoder(service: Service) -> None:
    service.flows.set_direct_decode_max(2)
    datas = [jpeg(20 + i, (320, 240)) for i in range(3)]
    seen = record(service, set(datas))

    async def at_once() -> list[Any]:
        return await asyncio.gather(
            *(service.flows.index_one(d, f"{i}.jpg", None) for i, d in enumerate(datas))
        )

    records = asyncio.run(at_once())
    assert sorted(r.meta_uuid for r in records) == sorted(hashlib.md5(d).hexdigest()
                                                          for d in datas)  # fmt: skip
    # Three under way when each chose: each went through the Decoder.
    assert crossings(seen, "pixels") == {"decoder out": 3, "embedder in": 3}
    assert crossings(seen, "bytes") == {"decoder in": 3, "indexer in": 3}
    assert service.flows._uploads_in_flight == 0  # each counted out when its trip ended


def test_an_upload_gets_the_same_vector_and_facts_either_way(make_service: Any) -> None:
    data = jpeg(11, (800, 600))
    got = []
    for direct in (4, 0):
        service = make_service()
        service.flows.set_direct_decode_max(direct)
        r = service.client.post("/meta/image/file", files={"file": ("a.jpg", data)})
        assert r.status_code == 200, r.text
        body = r.json()["data"]
        vector = service.vectors.get([body["milvus_id"]])[body["milvus_id"]]
        thumb = service.client.get(f"/meta/image/{body['meta_uuid']}/thumbnail").content
        got.append((vector, body["width"], body["height"], thumb))
    (v_direct, *facts_direct), (v_decoder, *facts_decoder) = got
    np.testing.assert_array_equal(v_direct, v_decoder)
    assert facts_direct == facts_decoder


def test_direct_decode_max_below_zero_is_refused(service: Service) -> None:
    with pytest.raises(ValueError, match="at least 0"):
        service.flows.set_direct_decode_max(-1)


def test_a_batch_upload_sends_pixels_only_for_new_content_and_never_back(
    service: Service,
) -> None:
    known = jpeg(9, (320, 240))
    r = service.client.post("/meta/image/file", files={"file": ("k.jpg", known)},
                            data={"meta_uuid": "kept"})  # fmt: skip
    assert r.status_code == 200, r.text
    new = [jpeg(1, (640, 480)), jpeg(2, (480, 640))]
    seen = record(service, {known, *new})
    files = [("file", (f"{i}.jpg", d)) for i, d in enumerate([*new, known])]
    body = service.client.post("/meta/image/files", files=files).json()
    # The known bytes under their md5: a new record of indexed content, with its own size.
    assert [(d["status"], d["data"]["width"]) for d in body["data"]] == [
        (200, 640), (200, 480), (200, 320),
    ]  # fmt: skip
    # Two new contents: their pixels go to the Embedder; the known one's stay in the Decoder.
    assert crossings(seen, "pixels") == {"decoder out": 2, "embedder in": 2}
    assert crossings(seen, "bytes") == {"decoder in": 3, "indexer in": 3}


def test_a_search_sends_its_bytes_once_to_the_embedder_and_its_pixels_nowhere(
    service: Service,
) -> None:
    stored = jpeg(5, (640, 480))
    r = service.client.post("/meta/image/file", files={"file": ("s.jpg", stored)})
    assert r.status_code == 200, r.text
    seen = record(service, {stored})
    r = service.client.post("/sample/file", files={"file": ("q.jpg", stored)})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["distance"] < 1e-6  # decoded as an upload is: it finds itself
    # Decoded where the bytes arrive: no trip through the Decoder, no pixels on any hop.
    assert crossings(seen, "bytes") == {"embedder in": 1}
    assert crossings(seen, "pixels") == {}
