"""Region search: the extra views of an image, their geometry, and the per-image merge.

docs/evaluation.md measured what finds a picture from a crop, a thumbnail or a collage, and
this module is that design (its "Recommended production design"):

- index side, per stored image, besides its global vector: a *thumbnail view* (the image as a
  96 px, JPEG 75 thumbnail of itself, embedded the engine's way: a small thumbnail query has
  lost the detail the full-size vector is made of) and R-MAC regions of levels 1-2,
  average-pooled from the feature map of one extra pass over the whole image at a short side
  of 448 px (8 regions on a 4:3 photo, 10 on 3:2, 11 on 16:9; at most MAX_REGIONS);
- query side: the global vector plus the query's 2x2 and 3x3 cells (a collage's parts), only
  when a cell keeps MIN_CELL px a side; cut and embedded one by one ("cut"), or pooled from
  one 448 px pass ("pooled", docs: q1);
- merge: each query vector's distances less its mean distance to its K_NEAREST nearest
  images (query-adaptive normalisation), a cell match plus CELL_PENALTY, an image scored by
  its best adjusted match.

Everything here is numpy and PIL: the decode cuts the views (image_search.decoding: a stored
image's in the Decoder, a query's in the Embedder), the Embedder pools them, the IndexService
merges the hits.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from image_search.imaging import PreprocessSpec, open_rgb, resize_crop

Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of an image

# Index side (tuned on the evaluation set's tuning half; docs/evaluation.md).
WHOLE_SHORT = 448  # the extra pass's short side
WHOLE_DRAFT = 2 * WHOLE_SHORT  # JPEG draft decode: keep 2x the input, as the Decoder does
MAX_ASPECT = 2.5  # longer images are cut to their centre at this aspect ratio first
STRIDE = 32  # the network's total stride: the whole input's sides are multiples of it
LEVELS = 2  # R-MAC levels 1..LEVELS
OVERLAP = 0.4  # at most this share of a region's side overlaps its neighbour
THUMB_VIEW = 96  # the thumbnail view's long side
THUMB_VIEW_QUALITY = 75
# Query side.
GRIDS = (2, 3)
MIN_CELL = 112  # a cell keeps this many px a side, else the grid is left out
CELL_DRAFT = 1024  # JPEG draft for cutting cells: 3x3 cells of a 1024 px image keep >= 256 px
# Merge (tuned: cells 0.05, regions 0, beta 1).
CELL_PENALTY = 0.05
REGION_PENALTY = 0.0
BETA = 1.0
K_NEAREST = 10

# What a collection records when built with region vectors (stores/vectors.py PROP_REGIONS):
# a change to the views or pooling above must change it, so old and new vectors never mix.
RECIPE = "thumb96q75+rmac448-l1-2-avg"
THUMB_PART = 0  # part number of the thumbnail view; regions are 1..n


# -- geometry -----------------------------------------------------------------------------------


def _starts(length: float, side: float, max_step: float) -> list[float]:
    if length - side < 1e-9:
        return [0.0]
    n = math.ceil((length - side) / max_step - 1e-9) + 1
    return [(length - side) * i / (n - 1) for i in range(n)]


def rmac_regions(w: float, h: float, levels: int = LEVELS, overlap: float = OVERLAP) -> list[Box]:
    """R-MAC's multi-scale square regions of a w x h map, as fractions of it.

    At level l, squares of side 2 min(w, h) / (l + 1), spread evenly over each axis with at
    most `overlap` of a side between neighbours: 1 + 4 on a square image, 2 + 6 on 4:3.
    """
    out: list[Box] = []
    for level in range(1, levels + 1):
        side = 2 * min(w, h) / (level + 1)
        step = (1 - overlap) * side
        for y in _starts(h, side, step):
            for x in _starts(w, side, step):
                out.append((x / w, y / h, (x + side) / w, (y + side) / h))
    return out


def grid_cells(n: int) -> list[Box]:
    """The n x n cells of an image, row-major."""
    return [(c / n, r / n, (c + 1) / n, (r + 1) / n) for r in range(n) for c in range(n)]


def whole_size(w: int, h: int) -> tuple[Box, tuple[int, int]]:
    """The window of a w x h image the whole pass sees (its centre, at most MAX_ASPECT) and
    the input size: short side WHOLE_SHORT, long side a multiple of STRIDE."""
    cw, ch = min(w, int(MAX_ASPECT * h)), min(h, int(MAX_ASPECT * w))
    left, top = (w - cw) // 2, (h - ch) // 2
    window = (left / w, top / h, (left + cw) / w, (top + ch) / h)
    scale = WHOLE_SHORT / min(cw, ch)
    size = (max(WHOLE_SHORT, STRIDE * round(cw * scale / STRIDE)),
            max(WHOLE_SHORT, STRIDE * round(ch * scale / STRIDE)))  # fmt: skip
    return window, size


# The most parts an image stores: the thumbnail view and the regions of the longest input.
_LONGEST = whole_size(round(MAX_ASPECT * 1000), 1000)[1]
MAX_PARTS = 1 + len(rmac_regions(_LONGEST[0] / STRIDE, _LONGEST[1] / STRIDE))


def within(window: Box, box: Box) -> Box:
    """A box given as fractions of `window` (itself fractions of an image), in the image."""
    wl, wt, wr, wb = window
    return (wl + box[0] * (wr - wl), wt + box[1] * (wb - wt),
            wl + box[2] * (wr - wl), wt + box[3] * (wb - wt))  # fmt: skip


def map_slice(box: Box, hm: int, wm: int) -> tuple[slice, slice]:
    """The feature-map cells a box covers (at least one; borders rounded half up)."""

    def span(a: float, b: float, n: int) -> slice:
        lo = min(n - 1, math.floor(a * n + 0.5))
        return slice(lo, max(lo + 1, math.floor(b * n + 0.5)))

    return span(box[1], box[3], hm), span(box[0], box[2], wm)


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def pool_average(fmap: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """(C, H, W) feature map -> (len(boxes), C) unit vectors, each box's cells averaged
    (average pooling measured as good as GeM for regions, and is not the global's pooling)."""
    _, hm, wm = fmap.shape
    rows = []
    for box in boxes:
        ys, xs = map_slice(box, hm, wm)
        rows.append(fmap[:, ys, xs].mean(axis=(1, 2)))
    return unit(np.stack(rows)) if rows else np.zeros((0, fmap.shape[0]), np.float32)


# -- views: what the Decoder cuts --------------------------------------------------------------


@dataclass
class RegionViews:
    """An image's extra inputs for region search, cut by the Decoder.

    whole: the whole pass's input (short side WHOLE_SHORT); window: where it lies in the
    image. Index side: thumb, the thumbnail view's model input. Query side: cells, each grid
    cell's model input (cut mode) with its box and label, or only the grid boxes (pooled mode,
    pooled from `whole`).
    """

    whole: np.ndarray | None = None
    window: Box = (0.0, 0.0, 1.0, 1.0)
    thumb: np.ndarray | None = None
    cells: np.ndarray | None = None  # (n, crop, crop, 3) in cut mode
    cell_boxes: list[Box] = field(default_factory=list)
    cell_labels: list[str] = field(default_factory=list)


def query_grids(width: int, height: int) -> list[int]:
    """The grids whose cells keep MIN_CELL px a side on this query (none for a thumbnail)."""
    return [n for n in GRIDS if min(width, height) >= MIN_CELL * n]


def _thumbnail_view(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    # Resized the way thumbnailers do (and the evaluation's thumbnail queries are made).
    w, h = im.size
    scale = THUMB_VIEW / max(w, h)
    small = im.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                      Image.Resampling.LANCZOS)  # fmt: skip
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=THUMB_VIEW_QUALITY)
    with Image.open(io.BytesIO(buf.getvalue())) as back:
        return resize_crop(back.convert("RGB"), spec)


def _whole(im: Image.Image) -> tuple[np.ndarray, Box]:
    window, size = whole_size(*im.size)
    w, h = im.size
    crop = (round(window[0] * w), round(window[1] * h), round(window[2] * w), round(window[3] * h))
    cut = im.crop(crop) if crop != (0, 0, w, h) else im
    pixels = np.asarray(cut.resize(size, Image.Resampling.BILINEAR, reducing_gap=None), np.uint8)
    return pixels, window


def index_views(data: bytes, spec: PreprocessSpec, max_pixels: int) -> RegionViews:
    """A stored image's extra inputs: the whole pass's and the thumbnail view's."""
    im, _ = open_rgb(data, max_pixels, draft_to=WHOLE_DRAFT)
    whole, window = _whole(im)
    return RegionViews(whole=whole, window=window, thumb=_thumbnail_view(im, spec))


def query_views(data: bytes, spec: PreprocessSpec, max_pixels: int, pooled: bool) -> RegionViews:
    """A query's cells: cut and made model-ready one by one, or (pooled) the whole pass's
    input they are pooled from. No grid for a query too small for cells."""
    im, (width, height) = open_rgb(data, max_pixels, draft_to=WHOLE_DRAFT if pooled else CELL_DRAFT)
    grids = query_grids(width, height)
    views = RegionViews()
    if not grids:
        return views
    for n in grids:
        views.cell_boxes.extend(grid_cells(n))
        views.cell_labels.extend(f"{n}x{n}:{i}" for i in range(n * n))
    if pooled:
        views.whole, views.window = _whole(im)
    else:
        w, h = im.size
        views.cells = np.stack([
            resize_crop(im.crop((round(b[0] * w), round(b[1] * h), round(b[2] * w),
                                 round(b[3] * h))), spec)
            for b in views.cell_boxes
        ])  # fmt: skip
    return views


# -- what the Embedder makes of them ---------------------------------------------------------


@dataclass
class RegionVectors:
    """An image's extra vectors. Stored image: part 0 the thumbnail view (the whole image),
    parts 1.. its regions, each with its box in the image. Query: its cells with their labels
    ("2x2:0" .. "3x3:8", row-major)."""

    vectors: np.ndarray  # (n, dim) unit rows
    boxes: list[Box]
    labels: list[str] = field(default_factory=list)  # query cells only


def stored_parts(views: RegionViews, thumb_vec: np.ndarray, fmap: np.ndarray) -> RegionVectors:
    """The vectors an image stores: thumbnail view (part 0) then the R-MAC regions of its
    whole-pass feature map (C, h, w), boxes in the image's own fractions."""
    boxes = rmac_regions(fmap.shape[2], fmap.shape[1])
    regions = pool_average(fmap, boxes)
    return RegionVectors(
        np.concatenate([thumb_vec.reshape(1, -1), regions]).astype(np.float32),
        [(0.0, 0.0, 1.0, 1.0)] + [within(views.window, b) for b in boxes],
    )


def query_cells(views: RegionViews, vecs: np.ndarray | None, fmap: np.ndarray | None
                ) -> RegionVectors:  # fmt: skip
    """A query's cell vectors: embedded one by one (vecs) or pooled from the whole pass."""
    if fmap is not None:
        vecs = pool_average(fmap, [_in_window(views.window, b) for b in views.cell_boxes])
    dim = 0 if vecs is None else vecs.shape[1]
    return RegionVectors(
        vecs if vecs is not None else np.zeros((0, dim), np.float32),
        list(views.cell_boxes), list(views.cell_labels),
    )  # fmt: skip


def _in_window(window: Box, box: Box) -> Box:
    """An image box in fractions of the window (clipped): where a cell lies in the whole pass."""
    wl, wt, wr, wb = window
    ww, wh = wr - wl, wb - wt

    def clip(v: float) -> float:
        return min(1.0, max(0.0, v))

    return (clip((box[0] - wl) / ww), clip((box[1] - wt) / wh),
            clip((box[2] - wl) / ww), clip((box[3] - wt) / wh))  # fmt: skip


# -- merge ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One stored vector found for one query vector."""

    owner: int  # the image's vector id (milvus_id)
    distance: float  # raw squared L2
    part: int = -1  # -1: the global vector; THUMB_PART: the thumbnail view; > 0: a region
    box: Box | None = None  # the region's box in the stored image


@dataclass(frozen=True)
class QueryHits:
    """What one query vector found: the global vector (cell None) or a cell's."""

    candidates: Sequence[Candidate]
    cell: str | None = None
    cell_box: Box | None = None


@dataclass(frozen=True)
class MatchedRegion:
    """Where the best match lies: a region of the stored image and/or a cell of the query.

    x, y, w, h: the stored image's part that matched, as fractions of it (the whole image
    when only a query cell matched); cell: the query's grid cell ("3x3:4") or None."""

    x: float
    y: float
    w: float
    h: float
    cell: str | None = None
    cell_box: tuple[float, float, float, float] | None = None  # x, y, w, h in the query

    def fields(self) -> dict[str, object]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "cell": self.cell,
                "cell_box": list(self.cell_box) if self.cell_box else None}  # fmt: skip


@dataclass(frozen=True)
class Scored:
    owner: int
    score: float  # adjusted: what orders results
    distance: float  # raw distance of the best match
    region: MatchedRegion | None


@dataclass(frozen=True)
class MergeParams:
    cell_penalty: float = CELL_PENALTY
    region_penalty: float = REGION_PENALTY
    beta: float = BETA
    k_nearest: int = K_NEAREST


def _xywh(box: Box) -> tuple[float, float, float, float]:
    return (box[0], box[1], box[2] - box[0], box[3] - box[1])


def merge(queries: Iterable[QueryHits], params: MergeParams | None = None) -> list[Scored]:
    """Per image, its best adjusted match over every query vector, best first.

    A query vector's match scores distance + penalty - beta x (its mean distance to its
    k_nearest nearest images, each image at its nearest stored vector). Ties go to the
    smaller vector id, so pages are stable.
    """
    p = params or MergeParams()
    best: dict[int, Scored] = {}
    for q in queries:
        nearest: dict[int, float] = {}
        for c in q.candidates:
            nearest[c.owner] = min(c.distance, nearest.get(c.owner, math.inf))
        if not nearest:
            continue
        knn = sorted(nearest.values())[: p.k_nearest]
        shift = p.beta * (sum(knn) / len(knn)) if p.beta else 0.0
        pen_cell = p.cell_penalty if q.cell is not None else 0.0
        for c in q.candidates:
            is_region = c.part > THUMB_PART
            score = c.distance + (p.region_penalty if is_region else 0.0) + pen_cell - shift
            prev = best.get(c.owner)
            if prev is not None and (prev.score, prev.distance) <= (score, c.distance):
                continue
            region = None
            if is_region or q.cell is not None:
                box = c.box if is_region and c.box is not None else (0.0, 0.0, 1.0, 1.0)
                cell_box = _xywh(q.cell_box) if q.cell_box is not None else None
                region = MatchedRegion(*_xywh(box), q.cell, cell_box)
            best[c.owner] = Scored(c.owner, score, max(0.0, c.distance), region)
    return sorted(best.values(), key=lambda s: (s.score, s.owner))


# The first fetch of parts asks for this many per image wanted, not MAX_PARTS: photos store
# 6-12 parts, and every part a search returns costs (measured ~50 us each in Milvus Lite, most
# of a region search at a page of 100). Fetched again at the bound only where it falls short.
TYPICAL_PARTS = 10


def first_part_fetch(images: int, bound: int) -> int:
    """How many parts to ask for first, per query vector (never more than the bound)."""
    return min(bound, images * TYPICAL_PARTS)


def parts_suffice(owners: Sequence[int], asked: int, images: int) -> bool:
    """Whether a query vector's nearest `asked` parts (their owners, nearest first) already
    hold what fetch_sizes' bound guarantees: every stored part (fewer came back than asked),
    or `images` distinct images (one with no part among them is beaten, through this vector,
    by all of those)."""
    return len(owners) < asked or len(set(owners)) >= images


def fetch_sizes(want: int) -> tuple[int, int]:
    """How many global and region vectors each query vector asks for (the over-fetch).

    Exact top-`want` merge: an image missing from a query vector's candidates is beaten
    through that vector by every candidate it returned, so `want` distinct images per query
    vector suffice, and the k_nearest mean needs at least K_NEAREST. The region collection
    holds up to MAX_PARTS vectors per image: want x MAX_PARTS of them hold >= want images.
    """
    images = max(want, K_NEAREST)
    return images, images * MAX_PARTS
