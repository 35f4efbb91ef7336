"""reconcile's scan walks a library in parts of the id space and finds exactly what one pass
over the whole library finds, however the parts cut it; no read of rows or vectors covers the
library, and the objects are listed once."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_search.indexing import IndexService
from image_search.records import id_parts, milvus_id_for, object_key_for, thumbnail_key_for
from image_search.stores import Stores
from pipelines import findings
from pipelines.findings import Findings, part_digits, scan
from tests.fakes import DIM, unit_vector
from tests.unit.image_search.test_indexing import item, svc  # noqa: F401 (svc: a fixture)
from tests.unit.image_search.test_regions import MemoryRegionIndex, RegionVectorIndex

ROWS = 40


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


@pytest.fixture
def stores(request: pytest.FixtureRequest) -> Stores:
    """A library of ROWS images with one of every disagreement planted in it."""
    service: IndexService = request.getfixturevalue("svc")  # test_indexing's: SQLite, a folder
    st_ = service.stores
    recs = [service.ingest(item(seed)) for seed in range(ROWS)]
    objs = st_.objects
    objs.put(object_key_for(sha("lone"), "png"), b"lone", "image/png")  # orphan object
    st_.vectors.upsert([milvus_id_for(sha("crashed"))], unit_vector(1)[None])  # orphan vector
    objs.put(object_key_for(sha("crashed"), "jpg"), b"crashed", "image/jpeg")  # ...and its object
    st_.vectors.upsert([4242], unit_vector(2)[None])  # orphan vector with no object
    for size in (64, 256):  # thumbnails of a row and of nothing, in two size folders
        objs.put(thumbnail_key_for(recs[0].sha256, size), b"t", "image/jpeg")
        objs.put(thumbnail_key_for(sha("deleted"), size), b"t", "image/jpeg")
    objs.put("exports/notes.txt", b"x", "text/plain")  # foreign: reported only
    objs.put("meta/image/not-a-sha.png", b"x", "image/png")
    # Odd keys: named by a sha but outside the layout, one in a folder named like a prefix.
    objs.put(f"meta/image/{recs[1].sha256[:2]}/{sha('nested')}.png", b"x", "image/png")
    objs.put(f"thumb/{recs[2].sha256}.jpg", b"x", "image/jpeg")
    objs.put(f"thumb/{sha('gone')}.jpg", b"x", "image/jpeg")
    st_.vectors.delete([recs[3].milvus_id])  # a row without its vector
    objs.delete(recs[4].file_path)  # a row without its object
    return st_


def normalised(f: Findings) -> dict[str, Any]:
    out = asdict(f)
    for name, value in out.items():
        if isinstance(value, list):
            out[name] = sorted(value, key=repr)
    out["image_keys_by_id"] = {k: sorted(v) for k, v in f.image_keys_by_id.items()}
    return out


def test_scan_finds_every_planted_disagreement(stores: Stores) -> None:
    f = scan(stores)
    recs = stores.metadata.page(0, ROWS)
    by_seed_order = sorted(recs, key=lambda r: r.id)
    assert (f.rows, f.contents, f.vectors) == (ROWS, ROWS, ROWS - 1 + 2)
    assert sorted(f.orphan_objects) == sorted([
        object_key_for(sha("lone"), "png"), object_key_for(sha("crashed"), "jpg"),
        thumbnail_key_for(sha("deleted"), 64), thumbnail_key_for(sha("deleted"), 256),
        f"meta/image/{by_seed_order[1].sha256[:2]}/{sha('nested')}.png",
        f"thumb/{sha('gone')}.jpg",
    ])  # fmt: skip
    assert sorted(f.orphan_vectors) == sorted([milvus_id_for(sha("crashed")), 4242])
    assert f.image_keys_by_id == {
        milvus_id_for(sha("crashed")): [object_key_for(sha("crashed"), "jpg")]
    }
    assert [c.sha256 for c in f.rows_without_vector] == [by_seed_order[3].sha256]
    assert [c.sha256 for c in f.rows_without_object] == [by_seed_order[4].sha256]
    assert sorted(f.foreign_objects) == ["exports/notes.txt", "meta/image/not-a-sha.png"]
    # Every object counted once: images, their planted neighbours, thumbnails, odd and foreign.
    assert f.objects == ROWS - 1 + 2 + 4 + 2 + 3
    assert not f.consistent


@pytest.mark.parametrize(("part_contents", "lookup"), [(1, 500), (5, 7), (39, 1)])
def test_scan_in_parts_finds_what_one_pass_finds(
    stores: Stores, part_contents: int, lookup: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = normalised(scan(stores))
    monkeypatch.setattr(findings, "_LOOKUP", lookup)  # objects judged a few keys at a time
    assert part_digits(ROWS, part_contents) > 0  # the library is really cut
    assert normalised(scan(stores, part_contents)) == whole


class Recording:
    """Wraps a store and records how many items each listing call returned."""

    def __init__(self, inner: Any, methods: tuple[str, ...]) -> None:
        self._inner, self._methods = inner, methods
        self.calls: list[tuple[str, Any, int]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def listing(*args: Any) -> Iterator[Any]:
            items = list(attr(*args))
            self.calls.append((name, args, len(items)))
            yield from items

        return listing


def test_no_store_read_covers_the_library_when_cut(stores: Stores) -> None:
    md = Recording(stores.metadata, ("iter_content",))
    vecs = Recording(stores.vectors, ("ids",))
    objs = Recording(stores.objects, ("keys",))
    scan(Stores(md, objs, vecs), part_contents=5)
    assert len(md.calls) == len(vecs.calls) == 8
    assert all(args for _, args, _ in md.calls + vecs.calls)  # each read names its part
    assert max(n for *_, n in md.calls) < ROWS and max(n for *_, n in vecs.calls) < ROWS
    assert sum(n for *_, n in md.calls) == ROWS  # and together they cover it exactly once
    # The objects: one streamed pass over all of them, however many parts, and one over the
    # images once the vectors are read, for the orphans' objects.
    assert [args for _, args, _ in objs.calls] == [("",), ("meta/image/",)]


@pytest.mark.parametrize(
    ("rows", "digits"),
    [(0, 0), (50_000, 0), (50_001, 1), (400_000, 1), (400_001, 2), (1_000_000, 2)],
)
def test_part_digits(rows: int, digits: int) -> None:
    assert part_digits(rows) == digits


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=3))
def test_each_content_falls_in_the_part_of_its_sha_prefix(data: bytes, digits: int) -> None:
    h = hashlib.sha256(data).hexdigest()
    parts = id_parts(digits)
    (at,) = [i for i, (lo, hi) in enumerate(parts) if lo <= milvus_id_for(h) < hi]
    # The part is the prefix's number without its top bit: two prefixes share each part.
    assert at == (int(h[:digits], 16) % len(parts) if digits else 0)
    assert parts[0][0] == 0 and parts[-1][1] == 2**63
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))


@pytest.fixture
def region_stores(stores: Stores) -> Stores:
    """The same library with region vectors: every image but one has parts, and two images
    without a row have parts, one of them with its object still stored."""
    vectors = RegionVectorIndex(DIM, "test-model:fp32")
    vectors.rows = dict(stores.vectors.rows)  # type: ignore[attr-defined]
    regions = MemoryRegionIndex()
    ids = [m for _, m, _ in stores.metadata.iter_content()]
    owners = [*ids[1:], milvus_id_for(sha("parted")), 777]
    regions.upsert_parts(
        owners, [unit_vector(5)[None]] * len(owners), [[(0, 0, 1, 1)]] * len(owners)
    )
    stores.objects.put(object_key_for(sha("parted"), "jpg"), b"p", "image/jpeg")
    return Stores(stores.metadata, stores.objects, vectors, regions)


@pytest.mark.parametrize("part_contents", [1, 10**9])
def test_scan_with_region_vectors(region_stores: Stores, part_contents: int) -> None:
    f = scan(region_stores, part_contents)
    first = next(region_stores.metadata.iter_content())
    parted = milvus_id_for(sha("parted"))
    assert [c.milvus_id for c in f.rows_without_regions] == [first[1]]
    assert sorted(f.orphan_regions) == sorted([parted, 777]) and f.region_owners == ROWS - 1 + 2
    # An orphan owner is aged by its object like an orphan vector is.
    assert f.image_keys_by_id[parted] == [object_key_for(sha("parted"), "jpg")]
    assert 777 not in f.image_keys_by_id


def test_a_row_stored_outside_the_layout_is_not_lost(stores: Stores) -> None:
    """An older writer's path: the listing does not count it as an image, the row still has it."""
    it = item(1000)
    legacy = dataclasses.replace(it.new, file_path=f"legacy/{it.new.sha256}.png")
    IndexService(stores, thumbnail_size=64).ingest(dataclasses.replace(it, new=legacy))
    f = scan(stores, part_contents=5)
    assert legacy.file_path in f.foreign_objects  # reported, never deleted
    assert legacy.sha256 not in {c.sha256 for c in f.rows_without_object}
    stores.objects.delete(legacy.file_path)
    assert legacy.sha256 in {c.sha256 for c in scan(stores).rows_without_object}


def test_an_ingest_landing_mid_scan_keeps_its_vector_young(stores: Stores) -> None:
    """Its object is written after the first listing, its vector before its part is read: the
    orphan vector must still be aged by that object, or reconcile would delete it at once."""
    late = sha("landing")
    key = object_key_for(late, "jpg")
    objs = stores.objects

    class Landing:
        def __getattr__(self, name: str) -> Any:
            return getattr(objs, name)

        def keys(self, prefix: str = "") -> Iterator[str]:
            yield from objs.keys(prefix)
            if prefix == "":  # the ingest writes while the first listing ends
                objs.put(key, b"x", "image/jpeg")
                stores.vectors.upsert([milvus_id_for(late)], unit_vector(9)[None])

    f = scan(Stores(stores.metadata, Landing(), stores.vectors), part_contents=5)
    assert milvus_id_for(late) in f.orphan_vectors
    assert f.image_keys_by_id[milvus_id_for(late)] == [key]
