"""The region-search evaluation set: real photos, an index with distractors, and the queries.

The photos come from Debian packages (scripts/eval-photos.sh fetches them into a folder and
writes its manifest.tsv; docs/evaluation.md lists them with their licences). None of them is
one of bench/photos.py's photos or the int8 calibration photos, so nothing here was tuned on.

What is indexed: every `query` photo as its original file, every `distractor` photo, and the
non-overlapping tiles of every `tiles` photo (not the photo itself). Tiles are real photo
content at ordinary sizes, and since no tile overlaps a query's original, a query has exactly
one right answer; they are also what a crop query is most easily confused with, which makes
the set harder, not easier. `filler` photos are cut into tiles that fill the other cells of
collages and are never indexed, so a collage, too, has exactly one right answer.

What is asked: from each query photo, seeded and so the same on every run, crops of 30-60%
of its area (centred, anywhere, in a corner), thumbnails of 64-128 px long side re-saved at
JPEG quality 30-60, 2x2 and 3x3 collages with the photo in one cell, and simple edits
(bench/edits.py's, plus a re-encode at quality 50, a 50% resize and a small rotation).
The query photos are split in two halves, per source package: parameters are chosen on the
tuning half and reported on the held-out half.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import PIL
from PIL import Image, ImageOps

from bench import edits
from bench.edits import EDITS

logger = logging.getLogger("bench.evalset")

SEED = 20240611
Split = Literal["tuning", "heldout"]
Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL's crop box)
Edit = Callable[[Image.Image], bytes]

CROP_AREA = (0.30, 0.60)  # share of the photo's area a crop query keeps
THUMB_SIDE = (64, 128)  # long side of a thumbnail query, px
THUMB_QUALITY = (30, 60)  # its JPEG quality
TILE_GRID = (5, 4)  # columns x rows a tiles/filler photo is cut into (rows x cols if portrait)
COLLAGE_CELL = {2: (400, 300), 3: (300, 225)}  # cell size per grid, px
COLLAGE_GUTTER = 8
QUALITY = 90  # JPEG quality of everything built here that has no stated quality
# Queries of each kind per query photo; the kinds group as in the issue.
PER_PHOTO = {
    "crop_centre": 1,
    "crop_random": 2,
    "crop_corner": 1,
    "thumbnail": 2,
    "collage_2x2": 1,
    "collage_3x3": 1,
}
GROUPS = ("crop", "thumbnail", "collage", "edit")


def group_of(kind: str) -> str:
    return kind.split("_", 1)[0]


# ---------------------------------------------------------------------------------------------
# Builders: pure functions of their arguments (and of the generator they are handed).


def jpeg(im: Image.Image, quality: int = QUALITY) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def crop_box(
    size: tuple[int, int], area: float, where: str, rng: np.random.Generator | None = None
) -> Box:
    """A box keeping `area` of a w x h image with its aspect ratio.

    where: "centre", "random" (anywhere inside, from rng) or a corner "tl", "tr", "bl", "br".
    """
    w, h = size
    side = math.sqrt(area)
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    if where == "centre":
        x, y = (w - cw) // 2, (h - ch) // 2
    elif where == "random":
        if rng is None:
            raise ValueError("a random crop needs a generator")
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    elif where in ("tl", "tr", "bl", "br"):
        x = 0 if where[1] == "l" else w - cw
        y = 0 if where[0] == "t" else h - ch
    else:
        raise ValueError(f"unknown crop position {where!r}")
    return x, y, x + cw, y + ch


def thumbnail(im: Image.Image, long_side: int, quality: int) -> bytes:
    """The photo scaled to this long side (LANCZOS, as thumbnailers do), saved as JPEG."""
    w, h = im.size
    scale = long_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return jpeg(im.resize(size, Image.Resampling.LANCZOS), quality)


def fit(im: Image.Image, cell: tuple[int, int]) -> Image.Image:
    """The whole image scaled to fit in the cell, aspect ratio kept (collage apps' 'fit')."""
    scale = min(cell[0] / im.width, cell[1] / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def collage(
    photo: Image.Image,
    fillers: Sequence[Image.Image],
    grid: int,
    slot: int,
    cell: tuple[int, int],
    gutter: int = COLLAGE_GUTTER,
) -> tuple[Image.Image, Box]:
    """A grid x grid collage on white, the photo in cell `slot` (row-major), fillers elsewhere.

    Returns the collage and the box the photo's (scaled) pixels occupy in it.
    """
    if len(fillers) < grid * grid - 1:
        raise ValueError(f"a {grid}x{grid} collage needs {grid * grid - 1} fillers")
    cw, ch = cell
    canvas = Image.new("RGB", (grid * cw + (grid + 1) * gutter, grid * ch + (grid + 1) * gutter),
                       "white")  # fmt: skip
    others = iter(fillers)
    placed: Box = (0, 0, 0, 0)
    for i in range(grid * grid):
        r, c = divmod(i, grid)
        im = fit(photo if i == slot else next(others), cell)
        x = gutter + c * (cw + gutter) + (cw - im.width) // 2
        y = gutter + r * (ch + gutter) + (ch - im.height) // 2
        canvas.paste(im, (x, y))
        if i == slot:
            placed = (x, y, x + im.width, y + im.height)
    return canvas, placed


def tile_boxes(size: tuple[int, int], grid: tuple[int, int] = TILE_GRID) -> list[Box]:
    """Non-overlapping tiles of a w x h image, grid (cols, rows) turned to match portraits."""
    w, h = size
    cols, rows = grid if w >= h else grid[::-1]
    tw, th = w // cols, h // rows
    return [(c * tw, r * th, (c + 1) * tw, (r + 1) * th) for r in range(rows) for c in range(cols)]


def _save(im: Image.Image, quality: int) -> bytes:
    return jpeg(im, quality)


def reencode_q50(im: Image.Image) -> bytes:
    return _save(im, 50)


def resize_half(im: Image.Image) -> bytes:
    return _save(im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR), QUALITY)


def inner_box(size: tuple[int, int], degrees: float) -> Box:
    """The largest axis-aligned box inside a w x h image turned by `degrees` (same centre)."""
    w, h = size
    a = math.radians(abs(degrees))
    sin, cos = math.sin(a), math.cos(a)
    long, short = max(w, h), min(w, h)
    if short <= 2 * sin * cos * long:
        # Half-constrained: two corners of the box touch the longer sides.
        x = 0.5 * short
        bw, bh = (x / sin, x / cos) if w >= h else (x / cos, x / sin)
    else:
        cos2 = cos * cos - sin * sin
        bw, bh = (w * cos - h * sin) / cos2, (h * cos - w * sin) / cos2
    bw, bh = int(bw), int(bh)
    return (w - bw) // 2, (h - bh) // 2, (w - bw) // 2 + bw, (h - bh) // 2 + bh


def rotated_4deg(im: Image.Image) -> bytes:
    """Straightened by 4 degrees and cropped to the picture, as photo editors do."""
    turned = im.convert("RGB").rotate(4, Image.Resampling.BICUBIC)
    return _save(turned.crop(inner_box(im.size, 4)), QUALITY)


# bench/edits.py's ten edits (shared with the near-duplicate test) plus the three the issue
# names that it lacks. It has no flip, so neither does this set.
SIMPLE_EDITS: dict[str, Edit] = {
    **EDITS,
    "reencode_q50": reencode_q50,
    "resize_half": resize_half,
    "rotated_4deg": rotated_4deg,
}


# ---------------------------------------------------------------------------------------------
# The set.


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    role: str  # query, distractor, tiles, filler
    series: str  # photos of one scene share it
    package: str
    licence: str


@dataclass(frozen=True)
class IndexImage:
    key: str
    data: bytes
    source: str  # the photo it is, or is a tile of
    series: str


@dataclass(frozen=True)
class Query:
    key: str
    data: bytes
    kind: str  # crop_centre, thumbnail, collage_3x3, edit_grayscale, ...
    target: str  # the key of the original it must find
    split: Split
    note: str = ""  # the parameters it was made with, for the log

    @property
    def group(self) -> str:
        return group_of(self.kind)


@dataclass
class EvalSet:
    photos: list[Photo]
    index: list[IndexImage]
    queries: list[Query]
    splits: dict[str, Split] = field(default_factory=dict)

    def digest(self) -> str:
        """Names the set's bytes (embedding caches are keyed by it)."""
        h = hashlib.sha256()
        for item in [*self.index, *self.queries]:
            h.update(item.key.encode())
            h.update(hashlib.sha256(item.data).digest())
        return h.hexdigest()[:16]


def read_manifest(root: Path) -> list[Photo]:
    with open(root / "manifest.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [
        Photo(r["name"], root / r["file"], r["role"], r["series"], r["package"], r["licence"])
        for r in rows
    ]


def stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def split_photos(photos: Sequence[Photo]) -> dict[str, Split]:
    """Query photos in two halves, alternating within each package in a hashed order."""
    out: dict[str, Split] = {}
    for package in sorted({p.package for p in photos}):
        names = [p.name for p in photos if p.role == "query" and p.package == package]
        names.sort(key=lambda n: hashlib.sha256(f"{SEED}:{n}".encode()).hexdigest())
        for i, name in enumerate(names):
            out[name] = "tuning" if i % 2 == 0 else "heldout"
    return out


def open_photo(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return (ImageOps.exif_transpose(im) or im).convert("RGB")


def tiles_of(im: Image.Image) -> list[Image.Image]:
    return [im.crop(b) for b in tile_boxes(im.size)]


def queries_for(
    photo: Photo, im: Image.Image, fillers: Sequence[Image.Image], split: Split
) -> Iterator[Query]:
    """Every query made from one photo, from a generator seeded by its name alone."""
    rng = np.random.default_rng([SEED, stable_int(photo.name)])

    def q(kind: str, i: int, data: bytes, note: str) -> Query:
        return Query(f"{photo.name}/{kind}/{i}", data, kind, photo.name, split, note)

    for kind, count in PER_PHOTO.items():
        for i in range(count):
            if kind.startswith("crop_"):
                area = float(rng.uniform(*CROP_AREA))
                where = kind.removeprefix("crop_")
                if where == "corner":
                    where = str(rng.choice(["tl", "tr", "bl", "br"]))
                box = crop_box(im.size, area, where, rng)
                yield q(kind, i, jpeg(im.crop(box)), f"area {area:.2f} at {where}")
            elif kind == "thumbnail":
                side = int(rng.integers(THUMB_SIDE[0], THUMB_SIDE[1] + 1))
                quality = int(rng.integers(THUMB_QUALITY[0], THUMB_QUALITY[1] + 1))
                yield q(kind, i, thumbnail(im, side, quality), f"{side}px q{quality}")
            else:
                grid = int(kind[-1])
                slot = int(rng.integers(0, grid * grid))
                picks = rng.choice(len(fillers), size=grid * grid - 1, replace=False)
                made, _ = collage(im, [fillers[j] for j in picks], grid, slot, COLLAGE_CELL[grid])
                yield q(kind, i, jpeg(made), f"cell {slot}")
    for name, edit in SIMPLE_EDITS.items():
        yield q(f"edit_{name}", 0, edit(im), "")


def build(root: Path) -> EvalSet:
    """The whole set from a folder scripts/eval-photos.sh filled; the same bytes every run."""
    photos = read_manifest(root)
    splits = split_photos(photos)
    index: list[IndexImage] = []
    fillers: list[Image.Image] = []
    for p in photos:
        if p.role in ("query", "distractor"):
            index.append(IndexImage(p.name, p.path.read_bytes(), p.name, p.series))
        elif p.role == "tiles":
            for i, tile in enumerate(tiles_of(open_photo(p.path))):
                index.append(IndexImage(f"{p.name}#{i:02d}", jpeg(tile), p.name, p.series))
        elif p.role == "filler":
            fillers.extend(tiles_of(open_photo(p.path)))
    queries = [
        query
        for p in photos
        if p.role == "query"
        for query in queries_for(p, open_photo(p.path), fillers, splits[p.name])
    ]
    return EvalSet(photos, index, queries, splits)


def load(root: Path) -> EvalSet:
    """build(root), kept in root/cache: building takes a minute or two on 2 cores.

    The cache is keyed by the manifest, this module's and bench/edits.py's source and the
    Pillow and numpy versions (JPEG encoders and generators can change with them).
    """
    key = hashlib.sha256()
    for path in (root / "manifest.tsv", Path(__file__), Path(edits.__file__)):
        key.update(path.read_bytes())
    key.update(f"{PIL.__version__} {np.__version__}".encode())
    cached = root / "cache" / f"evalset-{key.hexdigest()[:16]}.pickle"
    if cached.exists():
        with open(cached, "rb") as f:
            evalset: EvalSet = pickle.load(f)  # our own file, written below
        return evalset
    logger.info("building the evaluation set from %s (cached in %s)", root, cached.parent)
    evalset = build(root)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(evalset, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(cached)
    return evalset
