"""RegionIndex contract (region search's second collection): Milvus Lite's local server and a
Milvus server, through one class: parts written and found per owner with their boxes, deletes
by owner, drop; an HNSW index on the server, searched deeper than its default ef."""

from __future__ import annotations

import numpy as np
import pytest

from image_search.regions import MAX_PARTS
from image_search.stores import milvus_region_index
from image_search.stores.vectors import MilvusRegionIndex, region_row_id
from tests.contract.conftest import DIM, MODEL_ID, settings, unique, vector_uri

_shared: dict[str, MilvusRegionIndex] = {}
Box = tuple[float, float, float, float]


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def boxes(n: int) -> list[Box]:
    """Part 0 the whole image (the thumbnail view), then regions of distinct boxes."""
    return [(0.0, 0.0, 1.0, 1.0)] + [(0.1 * p, 0.05 * p, 0.5 + 0.05 * p, 0.6) for p in range(1, n)]


@pytest.fixture(params=["lite", pytest.param("milvus", marks=pytest.mark.servers)])
def region_index(request: pytest.FixtureRequest) -> MilvusRegionIndex:
    """One region collection per implementation, emptied before each test (as vector_index)."""
    index = _shared.get(request.param)
    if index is None:
        uri = vector_uri(request, request.param)
        s = settings(vectors_uri=uri, connect_timeout_s=3.0)
        made = milvus_region_index(s, DIM, MODEL_ID, unique("contract_"))
        assert isinstance(made, MilvusRegionIndex)
        index = _shared[request.param] = made
    index.ping()  # creates the collection (again, after a test dropped it)
    index.delete(list(index.ids()))
    assert index.count() == 0
    return index


def test_parts_are_found_per_owner_with_their_boxes(region_index: MilvusRegionIndex) -> None:
    owners = {101: unit(3, 1), (1 << 62) + 5: unit(MAX_PARTS, 2), 7: unit(1, 3)}
    region_index.upsert_parts(list(owners), list(owners.values()),
                              [boxes(len(v)) for v in owners.values()])  # fmt: skip
    # No flush, no sleep: consistency Strong, as for the vector collection.
    assert region_index.count() == sum(len(v) for v in owners.values())
    assert sorted(region_index.owners()) == sorted(owners)
    assert region_index.owners_with_parts([101, 7, 999]) == {101, 7}
    queries = np.stack([owners[101][2], owners[7][0]])
    found = region_index.search_parts(queries, 4)  # one request, one list per query row
    assert len(found) == 2
    best = found[0][0]
    assert (best.owner, best.part) == (101, 2) and best.distance == pytest.approx(0.0, abs=1e-4)
    assert best.box == pytest.approx(boxes(3)[2])
    assert (found[1][0].owner, found[1][0].part, found[1][0].box) == (7, 0, (0.0, 0.0, 1.0, 1.0))
    for hits in found:
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    # Ids are derived from (owner, part): a rewrite of the same parts replaces them.
    region_index.upsert_parts([101], [owners[101]], [boxes(3)])
    assert region_index.count() == sum(len(v) for v in owners.values())
    assert set(region_index.get([region_row_id(101, p) for p in range(3)])) == {
        region_row_id(101, p) for p in range(3)
    }


def test_owners_within_a_part(region_index: MilvusRegionIndex) -> None:
    owners = [3, 1 << 60, (1 << 63) - 2]
    region_index.upsert_parts(owners, [unit(2, 6)] * 3, [boxes(2)] * 3)
    assert sorted(region_index.owners((0, 1 << 60))) == [3]
    assert sorted(region_index.owners((1 << 60, 1 << 63))) == [1 << 60, (1 << 63) - 2]


def test_delete_by_owner(region_index: MilvusRegionIndex) -> None:
    region_index.upsert_parts([1, 2], [unit(4, 4), unit(2, 5)], [boxes(4), boxes(2)])
    region_index.delete_owners([1, 12345])  # an owner without parts is a no-op
    region_index.delete_owners([])
    assert region_index.count() == 2
    assert list(region_index.owners()) == [2]
    assert region_index.owners_with_parts([1, 2]) == {2}
    assert {h.owner for h in region_index.search_parts(unit(4, 4), 10)[0]} == {2}


def test_more_parts_than_max_or_boxes_are_refused(region_index: MilvusRegionIndex) -> None:
    with pytest.raises(ValueError):
        region_index.upsert_parts([1], [unit(MAX_PARTS + 1, 6)], [boxes(MAX_PARTS + 1)])
    with pytest.raises(ValueError):
        region_index.upsert_parts([1], [unit(3, 6)], [boxes(2)])
    assert region_index.count() == 0


def test_deep_search_and_drop(region_index: MilvusRegionIndex) -> None:
    """Region search over-fetches (fetch_sizes: hundreds of parts per query vector): deeper
    than HNSW's default ef, which a Milvus server refuses unless ef is raised with it."""
    n_owners = 40
    vecs = unit(n_owners * 5, 7)
    region_index.upsert_parts(list(range(1, n_owners + 1)),
                              [vecs[5 * i : 5 * i + 5] for i in range(n_owners)],
                              [boxes(5)] * n_owners)  # fmt: skip
    hits = region_index.search_parts(vecs[:2], 150)
    assert [len(h) for h in hits] == [150, 150]
    assert (hits[0][0].owner, hits[0][0].part) == (1, 0)
    region_index.drop()
    region_index.ping()
    assert region_index.count() == 0


@pytest.mark.servers
def test_server_collection_is_hnsw(request: pytest.FixtureRequest) -> None:
    from pymilvus import MilvusClient

    uri = vector_uri(request, "milvus")
    index = milvus_region_index(settings(vectors_uri=uri, connect_timeout_s=3.0), DIM, MODEL_ID,
                                unique("contract_hnsw_"))  # fmt: skip
    assert isinstance(index, MilvusRegionIndex)
    index.ping()
    try:
        client = MilvusClient(uri=uri)
        described = client.describe_index(index.collection, "vector")
        assert described["index_type"] == "HNSW" and described["metric_type"] == "L2"
        client.close()
    finally:
        index.drop()
