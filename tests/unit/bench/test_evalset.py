"""The evaluation set's builders (bench/evalset.py), on synthetic pictures: no download.

The figures in docs/evaluation.md are only comparable across runs and strategies if the same
queries come out every time, and only mean what they say if a crop keeps the stated share of
the picture, a thumbnail has the stated size and a collage really holds the photo.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import evalset
from bench.evalset import (
    COLLAGE_CELL,
    Photo,
    collage,
    crop_box,
    fit,
    inner_box,
    queries_for,
    split_photos,
    thumbnail,
    tile_boxes,
)


def picture(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus noise: every region differs from every other."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) % 256], -1)
    noise = rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (2560, 1600), (333, 211)])
@pytest.mark.parametrize("area", [0.30, 0.45, 0.60])
@pytest.mark.parametrize("where", ["centre", "random", "tl", "tr", "bl", "br"])
def test_crops_keep_the_stated_area_inside_the_picture(
    size: tuple[int, int], area: float, where: str
) -> None:
    w, h = size
    left, top, right, bottom = crop_box(size, area, where, np.random.default_rng(1))
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    kept = (right - left) * (bottom - top) / (w * h)
    assert kept == pytest.approx(area, abs=0.01)
    assert (right - left) / (bottom - top) == pytest.approx(w / h, rel=0.02)  # aspect kept
    if where == "centre":
        assert abs(left - (w - right)) <= 1 and abs(top - (h - bottom)) <= 1
    if where in ("tl", "tr", "bl", "br"):
        assert (left == 0) == (where[1] == "l") and (right == w) == (where[1] == "r")
        assert (top == 0) == (where[0] == "t") and (bottom == h) == (where[0] == "b")


def test_random_crops_follow_the_generator() -> None:
    boxes = [crop_box((800, 600), 0.4, "random", np.random.default_rng(7)) for _ in range(2)]
    assert boxes[0] == boxes[1]
    spread = {crop_box((800, 600), 0.4, "random", np.random.default_rng(s)) for s in range(20)}
    assert len(spread) > 10


@pytest.mark.parametrize("size", [(2560, 1600), (1600, 2560), (640, 640)])
@pytest.mark.parametrize("side", [64, 96, 128])
def test_thumbnails_have_the_stated_long_side(size: tuple[int, int], side: int) -> None:
    data = thumbnail(picture(*size), side, 40)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert max(im.size) == side
        assert im.width / im.height == pytest.approx(size[0] / size[1], rel=0.05)


@pytest.mark.parametrize("grid", [2, 3])
def test_collages_hold_the_whole_photo_in_its_cell(grid: int) -> None:
    photo = picture(900, 600, seed=1)
    fillers = [picture(500, 500, seed=10 + i) for i in range(grid * grid - 1)]
    cell, gutter = COLLAGE_CELL[grid], evalset.COLLAGE_GUTTER
    for slot in range(grid * grid):
        made, (left, top, right, bottom) = collage(photo, fillers, grid, slot, cell)
        r, c = divmod(slot, grid)
        x0 = gutter + c * (cell[0] + gutter)
        y0 = gutter + r * (cell[1] + gutter)
        # The box lies in the slot's cell...
        assert x0 <= left and right <= x0 + cell[0] and y0 <= top and bottom <= y0 + cell[1]
        # ...and holds exactly the photo's pixels, scaled to fit the cell.
        placed = np.asarray(made.crop((left, top, right, bottom)))
        assert np.array_equal(placed, np.asarray(fit(photo, cell)))
        assert max((right - left) / cell[0], (bottom - top) / cell[1]) == pytest.approx(1, abs=0.01)


@pytest.mark.parametrize(("size", "tile"), [((2560, 1600), (512, 400)), ((1600, 2560), (400, 512))])
def test_tiles_do_not_overlap_and_turn_with_portraits(
    size: tuple[int, int], tile: tuple[int, int]
) -> None:
    boxes = tile_boxes(size)
    assert len(boxes) == 20
    assert {(right - left, bottom - top) for left, top, right, bottom in boxes} == {tile}
    covered = np.zeros(size[::-1], np.int32)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] += 1
    assert covered.max() == 1 and covered.min() == 1


def test_the_straightened_rotation_leaves_no_corners() -> None:
    white = Image.new("RGB", (800, 500), "white")
    box = inner_box(white.size, 4)
    turned = np.asarray(white.rotate(4, Image.Resampling.BICUBIC).crop(box))
    assert turned.min() > 200  # no black fill of the turned corners
    left, top, right, bottom = box
    assert (right - left) * (bottom - top) > 0.8 * 800 * 500


def photo(name: str, package: str = "pkg", role: str = "query") -> Photo:
    return Photo(name, Path(f"{name}.jpg"), role, name, package, "CC0-1.0")


def test_queries_are_the_same_bytes_every_time() -> None:
    im = picture(640, 480, seed=3)
    fillers = [picture(320, 240, seed=20 + i) for i in range(12)]
    runs = [list(queries_for(photo("a"), im, fillers, "tuning")) for _ in range(2)]
    assert [(q.key, q.data) for q in runs[0]] == [(q.key, q.data) for q in runs[1]]
    kinds = {q.kind for q in runs[0]}
    assert {"crop_centre", "crop_random", "crop_corner", "thumbnail", "collage_2x2",
            "collage_3x3", "edit_recompress", "edit_reencode_q50", "edit_resize_half",
            "edit_rotated_4deg"} <= kinds  # fmt: skip
    assert all(q.target == "a" and q.split == "tuning" for q in runs[0])
    other = list(queries_for(photo("b"), im, fillers, "tuning"))
    assert [q.data for q in other] != [q.data for q in runs[0]]  # each photo its own seed


def test_the_split_alternates_within_each_package() -> None:
    photos = [photo(f"p{i}", package=f"pkg{i % 3}") for i in range(30)]
    photos.append(photo("d", role="distractor"))
    splits = split_photos(photos)
    assert splits == split_photos(list(reversed(photos)))  # order of the manifest is irrelevant
    assert "d" not in splits
    for k in range(3):
        halves = [splits[p.name] for p in photos if p.package == f"pkg{k}" and p.name in splits]
        assert abs(halves.count("tuning") - halves.count("heldout")) <= 1


def test_build_indexes_originals_distractors_and_tiles_but_no_fillers(tmp_path: Path) -> None:
    rows = [("q1", "query"), ("q2", "query"), ("d1", "distractor"), ("t1", "tiles"),
            ("f1", "filler")]  # fmt: skip
    (tmp_path / "photos").mkdir()
    lines = ["name\tfile\trole\tseries\tpackage\tversion\tlicence\tauthor\tsha256_16"]
    for i, (name, role) in enumerate(rows):
        picture(400, 300, seed=i).save(tmp_path / "photos" / f"{name}.jpg", quality=90)
        lines.append(f"{name}\tphotos/{name}.jpg\t{role}\t{name}\tpkg\t1\tCC0-1.0\tme\t0")
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    built = evalset.build(tmp_path)
    keys = [im.key for im in built.index]
    assert keys[:3] == ["q1", "q2", "d1"]
    assert [k for k in keys if k.startswith("t1#")] == [f"t1#{i:02d}" for i in range(20)]
    assert not any(k.startswith("f1") for k in keys)
    assert {q.target for q in built.queries} == {"q1", "q2"}
    assert {q.split for q in built.queries} == {"tuning", "heldout"}
    assert evalset.build(tmp_path).digest() == built.digest()
    assert evalset.load(tmp_path).digest() == built.digest()  # builds, then caches
    assert evalset.load(tmp_path).digest() == built.digest()
