"""Region search, measured: which strategy finds a picture from a crop, a thumbnail or a collage.

On the evaluation set of bench/evalset.py (docs/evaluation.md), with the engine's default
embedder (model, runtime and precision as `auto` resolves them here) and brute-force search,
each strategy's recall@1 and @5 per query kind, on the tuning half and then the held-out half:

  a  global only: one vector per image and per query (today's behaviour);
  b  query-side multi-crop: the query's 2x2 (and 3x3) grid cells embedded too, each searched
     against the global vectors, an image scored by its best match;
  c  index-side regions from the stored image's feature map (before global pooling), pooled
     over R-MAC's multi-scale square regions (GeM or average, then L2 as the engine does) and
     stored as extra vectors: from the engine's own pass (224 centre crop; its global vector
     is asserted equal to the engine's), or from an extra pass over the whole, uncropped
     image at a short side of 224 or 448;
  d  index-side multi-crop: the same regions cut from the stored image and embedded one by one
     (a forward pass each): the quality ceiling, at its ingest cost;
  +t a thumbnail view stored too: the image embedded as a 96 px thumbnail of itself (a small
     thumbnail query has lost the detail its original's global vector is made of);
  +q the query's cells cut and embedded (b); +q1 the same cells pooled from one pass over the
     whole query.

A region or cell match scores its distance plus a penalty (one for query cells, one for stored
regions), so that a whole-picture match is preferred at equal distance, and with query cells
each query vector's distances are lowered by beta x its mean distance to its nearest images
(Params). These are chosen on the tuning half and then applied unchanged to the held-out half.
Costs: vectors per image, forward passes and embed time per stored image and per query.
Vectors are cached in DIR/cache, keyed by the model id and the set's bytes, so a second run
only searches.

    scripts/eval-photos.sh DIR
    python -m bench.regions_eval DIR [--threads 2] [--runtime auto] [--precision auto]
        [--only "a  global,d  crops"]
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.evalset import GROUPS, EvalSet, Query, load, thumbnail

logger = logging.getLogger("bench.regions_eval")

Box01 = tuple[float, float, float, float]  # left, top, right, bottom as fractions of the image
BATCH = 16
DRAFT = 1024  # JPEG draft size for cutting cells and regions: 3x3 cells keep >= 256 px
MAX_ASPECT = 2.5  # a whole-image pass cuts longer images to this aspect ratio first
GOAL = 0.98
GRIDS = (2, 3)  # query-side cells: 2x2, 3x3
# What choose() tries on the tuning half (Params says what each does).
PENALTIES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
REGION_PENALTIES = (0.0, 0.025, 0.05, 0.1, 0.2)
BETAS = (0.0, 0.5, 1.0)
K_NEAREST = 10
# A query is cut into n x n cells only if each keeps this many px a side (half the model's
# input): a thumbnail's cells are too blurred to match anything, so they only add noise.
MIN_CELL = 112


# -- geometry ---------------------------------------------------------------------------------


def _starts(length: float, side: float, max_step: float) -> list[float]:
    if length - side < 1e-9:
        return [0.0]
    n = math.ceil((length - side) / max_step - 1e-9) + 1
    return [(length - side) * i / (n - 1) for i in range(n)]


def rmac_regions(w: float, h: float, levels: int, overlap: float = 0.4) -> list[tuple[int, Box01]]:
    """R-MAC's multi-scale regions of a w x h image, as fractions.

    At level l, squares of side 2 min(w, h) / (l + 1), spread evenly over each axis with at
    most `overlap` of a side between neighbours: 1, 2x2, 3x3 squares on a square image, more
    along the long side of others (2 + 8 + 15 for 16:10 at three levels).
    """
    out: list[tuple[int, Box01]] = []
    for level in range(1, levels + 1):
        side = 2 * min(w, h) / (level + 1)
        step = (1 - overlap) * side
        for y in _starts(h, side, step):
            for x in _starts(w, side, step):
                out.append((level, (x / w, y / h, (x + side) / w, (y + side) / h)))
    return out


def grid_cells(n: int) -> list[Box01]:
    """The n x n cells of an image, row-major."""
    return [(c / n, r / n, (c + 1) / n, (r + 1) / n) for r in range(n) for c in range(n)]


def map_slice(box: Box01, hm: int, wm: int) -> tuple[slice, slice]:
    """The feature-map cells a region covers (at least one; borders rounded half up)."""

    def span(a: float, b: float, n: int) -> slice:
        lo = min(n - 1, math.floor(a * n + 0.5))
        return slice(lo, max(lo + 1, math.floor(b * n + 0.5)))

    return span(box[1], box[3], hm), span(box[0], box[2], wm)


def pixel_box(box: Box01, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    return (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))


# -- pooling ------------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def pool_regions(fmap: np.ndarray, boxes: Sequence[Box01], how: str) -> np.ndarray:
    """(C, H, W) map -> (R, C) unit vectors: GeM p=3 (the engine's global pooling) or mean."""
    _, hm, wm = fmap.shape
    cubed = np.clip(fmap, 1e-6, None) ** 3 if how == "gem" else fmap
    rows = []
    for box in boxes:
        ys, xs = map_slice(box, hm, wm)
        rows.append(cubed[:, ys, xs].mean(axis=(1, 2)))
    pooled = np.stack(rows)
    return unit(np.cbrt(pooled) if how == "gem" else pooled)


# -- the engine's model, and its feature map -----------------------------------------------------


class Engine:
    """The engine's embedder as load_embedder gives it, plus the feature map of the same pass."""

    def __init__(self, threads: int, runtime: str, precision: str) -> None:
        from image_search.config import LimitSettings, ModelSettings
        from image_search.embedding import load_embedder, model_card
        from image_search.embedding.pixels import Normaliser

        cfg = ModelSettings.model_validate(
            {"threads": threads, "runtime": runtime, "precision": precision}
        )
        self.model = load_embedder(cfg)
        card = model_card(cfg.name)
        self.spec = card.spec
        self.max_pixels = LimitSettings().max_pixels
        self.normalise = Normaliser(card.mean, card.std)
        self._run = self._onnx_maps(threads) if self.model.choice.runtime == "onnx" else None
        self._openvino_maps: Callable[[np.ndarray], np.ndarray] | None = None
        if self.model.choice.runtime == "openvino":
            from image_search.embedding.feature_maps import load_feature_maps

            self._openvino_maps = load_feature_maps(self.model, cfg.name, threads)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def _onnx_maps(self, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
        """The engine's own ONNX graph, with the GeM input as a second output and any H x W.

        Same file, same nodes: only an output is added and the spatial input dims are freed
        (the graph has no shape-dependent op; padding is folded into the convs).
        """
        from image_search.embedding.feature_maps import onnx_feature_map_session

        path = self.model.path  # type: ignore[attr-defined]
        session, name, _ = onnx_feature_map_session(path, threads, self.model.model_id)

        def run(x: np.ndarray) -> list[np.ndarray]:
            out: list[np.ndarray] = session.run(None, {name: x})
            return out

        return run

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self.model.embed(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
            or [np.zeros((0, self.model.dim), np.float32)]
        )

    def maps(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) of any H, W -> (the global unit vectors, the (N, C, h, w) maps)."""
        if self._openvino_maps is not None:
            # The map the engine's own compiled graph makes, GeM-pooled over the whole of it.
            fmap = self._openvino_maps(pixels)
            return np.stack([pool_regions(m, [(0.0, 0.0, 1.0, 1.0)], "gem")[0] for m in fmap]), fmap
        x = self.normalise(pixels)
        if self._run is not None:
            feats, fmap = self._run(x)
            return unit(feats), fmap
        import torch

        from image_search.embedding.base import gem

        net = self.model.network.net  # type: ignore[attr-defined]  # efficientnet's _LiteGeM
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self.model.choice.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    fm = net.extract_features(t.contiguous(memory_format=torch.channels_last))
            else:
                fm = net.extract_features(t)
            fm = fm.float()
            return unit(gem(fm).numpy()), fm.numpy()

    # Pixels, as the engine's Decoder makes them and as the views below cut them.

    def pixels(self, data: bytes) -> np.ndarray:
        from image_search.imaging import decode

        return decode(data, self.spec, self.max_pixels).pixels

    def opened(self, data: bytes, draft: int = DRAFT) -> Image.Image:
        from image_search.imaging import open_rgb

        return open_rgb(data, self.max_pixels, draft_to=draft)[0]

    def cut(self, im: Image.Image, boxes: Sequence[Box01]) -> list[np.ndarray]:
        """Each box cut from the image and made model-ready the engine's way."""
        from image_search.imaging import resize_crop

        return [resize_crop(im.crop(pixel_box(b, im.size)), self.spec) for b in boxes]


def whole_input(im: Image.Image, short: int) -> Image.Image:
    """The whole picture, short side `short`, long side a multiple of 32 (no centre crop)."""
    w, h = im.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        cw, ch = min(w, int(MAX_ASPECT * h)), min(h, int(MAX_ASPECT * w))
        im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        w, h = im.size
    scale = short / min(w, h)
    size = (max(short, 32 * round(w * scale / 32)), max(short, 32 * round(h * scale / 32)))
    return im.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)


# -- views: the vectors a strategy stores per image, or computes per query ----------------------


@dataclass
class Vectors:
    vecs: np.ndarray  # (V, D) unit rows
    owner: np.ndarray  # (V,) the item each row belongs to, ascending
    level: np.ndarray  # (V,) 0 = the engine's global vector; else a region level or grid size
    seconds: float  # to make them all, decoding included
    passes: int  # forward passes (images through the network)


def _collect(rows: list[tuple[int, int, np.ndarray]], seconds: float, passes: int) -> Vectors:
    rows.sort(key=lambda r: r[0])
    return Vectors(
        np.concatenate([r[2] for r in rows]).astype(np.float32),
        np.concatenate([np.full(len(r[2]), r[0], np.int32) for r in rows]),
        np.concatenate([np.full(len(r[2]), r[1], np.int8) for r in rows]),
        seconds,
        passes,
    )


def view_global(engine: Engine, items: Sequence[bytes]) -> Vectors:
    start = time.perf_counter()
    vecs = engine.embed(np.stack([engine.pixels(d) for d in items]))
    rows = [(i, 0, vecs[i : i + 1]) for i in range(len(items))]
    return _collect(rows, time.perf_counter() - start, len(items))


def view_lowres(engine: Engine, items: Sequence[bytes], side: int) -> Vectors:
    """Each image as a small thumbnail (long side `side`, JPEG 75) would show it, embedded.

    A thumbnail query has lost the detail the global vector of the full-size picture is made
    of; this stores what the model sees of the picture at that size instead.
    """
    start = time.perf_counter()
    pixels = [engine.pixels(thumbnail(engine.opened(d, draft=4 * side), side, 75)) for d in items]
    vecs = engine.embed(np.stack(pixels))
    rows = [(i, 1, vecs[i : i + 1]) for i in range(len(items))]
    return _collect(rows, time.perf_counter() - start, len(items))


Regions = list[tuple[int, Box01]]  # (level, box)


def view_cut(
    engine: Engine, items: Sequence[bytes], boxes_of: Callable[[Image.Image], Regions]
) -> Vectors:
    """Boxes cut from each image and embedded one by one (grid cells, stored-image regions)."""
    rows: list[tuple[int, int, np.ndarray]] = []
    start, passes = time.perf_counter(), 0
    for i, data in enumerate(items):
        im = engine.opened(data)
        boxes = boxes_of(im)
        pix = np.stack(engine.cut(im, [b for _, b in boxes]))
        vecs = engine.embed(pix)
        passes += len(pix)
        rows.extend((i, level, vecs[j : j + 1]) for j, (level, _) in enumerate(boxes))
    return _collect(rows, time.perf_counter() - start, passes)


def grid_regions(w: float, h: float, levels: int) -> Regions:
    """The 2x2 ... n x n grid cells (level n), for query-side cells pooled from one pass."""
    del w, h
    return [(n, box) for n in range(2, levels + 1) for box in grid_cells(n)]


def view_maps(
    engine: Engine,
    items: Sequence[bytes],
    short: int | None,
    levels: int,
    regions_of: Callable[[float, float, int], Regions] | None = None,
) -> dict[str, Vectors]:
    """R-MAC regions pooled from one pass, GeM and mean: the engine's pass (short=None, regions
    of its 224 centre crop; its global vector must equal the engine's) or a pass over the
    whole image at this short side."""
    rows: dict[str, list[tuple[int, int, np.ndarray]]] = {"gem": [], "avg": []}
    start, passes, checking, pooling = time.perf_counter(), 0, 0.0, 0.0
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        nonlocal passes, checking, pooling
        pix = np.stack([p for _, p in batch])
        globals_, fmaps = engine.maps(pix)
        passes += len(batch)
        if short is None:
            t = time.perf_counter()
            want = engine.embed(pix)
            gap = float(np.abs(globals_ - want).max())
            assert gap < 1e-4, f"the feature map's pass differs from the engine's ({gap})"
            checking += time.perf_counter() - t
        t = time.perf_counter()
        for (i, _), fmap in zip(batch, fmaps, strict=True):
            regions = (regions_of or rmac_regions)(fmap.shape[2], fmap.shape[1], levels)
            if short is None:  # level 1 of the centre crop's square map is the global itself
                regions = [r for r in regions if r[0] > 1]
            for how in ("gem", "avg"):
                vecs = pool_regions(fmap, [b for _, b in regions], how)
                rows[how].extend((i, lv, vecs[j : j + 1]) for j, (lv, _) in enumerate(regions))
        pooling += (time.perf_counter() - t) / 2  # both poolings were timed: one is stored
        batch.clear()

    # Batches of one input shape: whole images differ in aspect ratio.
    inputs = []
    for i, data in enumerate(items):
        if short is None:
            inputs.append((i, engine.pixels(data)))
        else:
            im = whole_input(engine.opened(data, draft=2 * short), short)
            inputs.append((i, np.asarray(im, dtype=np.uint8)))
    inputs.sort(key=lambda t: t[1].shape)
    for _, group in itertools.groupby(inputs, key=lambda t: t[1].shape):
        for item in group:
            batch.append(item)
            if len(batch) == BATCH:
                flush()
        if batch:
            flush()
    # The engine's own pass costs nothing more than the pooling; another pass costs its all.
    seconds = pooling if short is None else time.perf_counter() - start - checking - pooling
    return {how: _collect(r, seconds, passes) for how, r in rows.items()}


class Views:
    """Every view of the index and of the queries, computed once and cached on disk."""

    def __init__(self, engine: Engine, evalset: EvalSet, cache: Path) -> None:
        self.engine = engine
        self.index = [im.data for im in evalset.index]
        self.queries = [q.data for q in evalset.queries]
        safe = engine.model_id.replace(":", "-")
        self.cache = cache / f"vectors-{safe}-{evalset.digest()}"
        self.cache.mkdir(parents=True, exist_ok=True)

    def _cached(self, name: str, make: Callable[[], dict[str, Vectors]]) -> dict[str, Vectors]:
        path = self.cache / f"{name}.npz"
        if path.exists():
            z = np.load(path)
            parts = sorted({k.split(".")[0] for k in z.files})
            return {
                p: Vectors(z[f"{p}.vecs"], z[f"{p}.owner"], z[f"{p}.level"],
                           float(z[f"{p}.seconds"]), int(z[f"{p}.passes"]))
                for p in parts
            }  # fmt: skip
        logger.info("computing %s", name)
        made = make()
        arrays = {}
        for p, v in made.items():
            arrays.update({f"{p}.vecs": v.vecs, f"{p}.owner": v.owner, f"{p}.level": v.level})
            arrays.update({f"{p}.seconds": np.float64(v.seconds),
                           f"{p}.passes": np.int64(v.passes)})  # fmt: skip
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        for p, v in made.items():
            logger.info("  %s.%s: %d vectors, %d passes, %.1f s", name, p, len(v.vecs),
                        v.passes, v.seconds)  # fmt: skip
        return made

    def get(self, name: str) -> Vectors:
        """A view by name: index:global, index:crops3, index:maps-centrex3.gem,
        index:maps-448x3.avg, query:global, query:grid2, ..."""
        side, _, rest = name.partition(":")
        view, _, part = rest.partition(".")
        items = self.index if side == "index" else self.queries
        engine = self.engine

        def make() -> dict[str, Vectors]:
            if view == "global":
                return {"v": view_global(engine, items)}
            if view.startswith("grid"):
                n = int(view.removeprefix("grid"))
                return {"v": view_cut(engine, items, lambda im: [(n, b) for b in grid_cells(n)])}
            if view.startswith("crops"):
                lv = int(view.removeprefix("crops"))
                return {"v": view_cut(engine, items, lambda im: rmac_regions(*im.size, lv))}
            if view.startswith("lowres"):
                return {"v": view_lowres(engine, items, int(view.removeprefix("lowres")))}
            if view.startswith("cellmaps-"):  # query cells pooled from one whole-image pass
                short = int(view.removeprefix("cellmaps-"))
                return view_maps(engine, items, short, max(GRIDS), grid_regions)
            if view.startswith("maps-"):
                where, lv = view.removeprefix("maps-").split("x")
                return view_maps(engine, items, None if where == "centre" else int(where), int(lv))
            raise ValueError(f"unknown view {name}")

        made = self._cached(f"{side}-{view}", make)
        return made[part or "v"]


# -- search ---------------------------------------------------------------------------------------


@dataclass
class QueryRows:
    """Every query vector a strategy may use (global, 2x2 and 3x3 cells), grouped by query."""

    vecs: np.ndarray
    owner: np.ndarray
    level: np.ndarray  # 0 = the query's global vector, n = a cell of its n x n grid
    seconds: dict[int, float]  # to embed the queries' global vectors (0) and cells (n)


def query_rows(views: Views, cells: str) -> QueryRows:
    """cells: "crops" (each cell cut and embedded: a pass each) or a pooled view such as
    "cellmaps-448.avg" (all cells pooled from one pass over the whole query)."""
    if cells == "crops":
        parts = [views.get("query:global")] + [views.get(f"query:grid{n}") for n in GRIDS]
        level = np.concatenate([np.full(len(p.owner), lv, np.int8)
                                for p, lv in zip(parts, (0, *GRIDS), strict=True)])  # fmt: skip
        seconds = {lv: p.seconds for p, lv in zip(parts, (0, *GRIDS), strict=True)}
    else:
        pooled = views.get(f"query:{cells}")
        parts = [views.get("query:global"), pooled]
        level = np.concatenate([np.zeros(len(parts[0].owner), np.int8), pooled.level])
        # One pass gives every grid: its time is counted once, with the largest grid.
        seconds = {0: parts[0].seconds, **{n: 0.0 for n in GRIDS}}
        seconds[max(GRIDS)] = pooled.seconds
    owner = np.concatenate([p.owner for p in parts])
    order = np.argsort(owner, kind="stable")
    return QueryRows(np.concatenate([p.vecs for p in parts])[order], owner[order], level[order],
                     seconds)  # fmt: skip


def per_image_min(qvecs: np.ndarray, stored: Vectors, n_images: int) -> np.ndarray:
    """(query vectors, images): the smallest squared L2 to any of an image's stored vectors."""
    out = np.full((len(qvecs), n_images), np.inf, np.float32)
    starts = np.flatnonzero(np.r_[True, stored.owner[1:] != stored.owner[:-1]])
    images = stored.owner[starts]
    for lo in range(0, len(qvecs), 2048):
        d = np.maximum(0.0, 2.0 - 2.0 * (qvecs[lo : lo + 2048] @ stored.vecs.T))
        out[lo : lo + 2048, images] = np.minimum.reduceat(d, starts, axis=1)
    return out


Part = tuple[str, tuple[int, ...]]  # an index view and the levels of it that are stored


@dataclass(frozen=True)
class Strategy:
    name: str
    grids: tuple[int, ...]  # query-side cells besides the global vector: 2 = 2x2, 3 = 3x3
    parts: tuple[Part, ...] = ()  # stored besides the global vectors
    cells: str = "crops"  # how the query's cells are made (query_rows)


def part_passes(view: str, per_image: float) -> float:
    """Forward passes per stored image that a part adds (per_image: its vectors per image)."""
    if view.startswith("maps-centre"):
        return 0.0  # pooled from the engine's own pass
    if view.startswith(("maps-", "lowres")):
        return 1.0
    return per_image  # crops: one pass each


LOWRES = ("lowres96", (1,))
INDEX_CONFIGS: tuple[tuple[str, tuple[Part, ...]], ...] = (
    ("", ()),
    ("centre224 L2-3 gem", (("maps-centrex3.gem", (2, 3)),)),
    ("centre224 L2-3 avg", (("maps-centrex3.avg", (2, 3)),)),
    ("whole224 L1-2 avg", (("maps-224x3.avg", (1, 2)),)),
    ("whole448 L1-2 gem", (("maps-448x3.gem", (1, 2)),)),
    ("whole448 L1-2 avg", (("maps-448x3.avg", (1, 2)),)),
    ("whole448 L1-3 avg", (("maps-448x3.avg", (1, 2, 3)),)),
    ("crops L1-2", (("crops3", (1, 2)),)),
    ("crops L1-3", (("crops3", (1, 2, 3)),)),
)


def strategies() -> list[Strategy]:
    """Each index-side configuration alone, with the thumbnail view (+t), and with both that
    and the query's cells (+t +q); query-side cells alone as b."""
    out = [Strategy("a  global", ()), Strategy("a  +t", (), (LOWRES,)),
           Strategy("b  +q", GRIDS), Strategy("b  +t +q", GRIDS, (LOWRES,))]  # fmt: skip
    for name, parts in INDEX_CONFIGS[1:]:
        family = "d" if parts[0][0].startswith("crops") else "c"
        out.append(Strategy(f"{family}  {name}", (), parts))
        out.append(Strategy(f"{family}  {name} +t", (), (*parts, LOWRES)))
        out.append(Strategy(f"{family}  {name} +t +q", GRIDS, (*parts, LOWRES)))
        # The query's cells pooled from one pass over it (448 short side) instead.
        for pool in ("avg", "gem"):
            out.append(Strategy(f"{family}  {name} +t +q1 {pool}", GRIDS, (*parts, LOWRES),
                                f"cellmaps-448.{pool}"))  # fmt: skip
    for pool in ("avg", "gem"):
        out.append(Strategy(f"b  +t +q1 {pool}", GRIDS, (LOWRES,), f"cellmaps-448.{pool}"))
    return out


@dataclass(frozen=True)
class Params:
    """How matches of cells and regions count against whole-picture ones."""

    pen_cells: float = 0.0  # added to a query cell's distances
    pen_regions: float = 0.0  # added to a stored region's distances
    # Query-adaptive: each query vector's distances less beta x its mean distance to its K
    # nearest images, so a bland cell (sky, blur) near many images counts for less than a
    # distinctive one near few (the query side of CSLS, a remedy for hubness).
    beta: float = 0.0

    def __str__(self) -> str:
        return f"{self.pen_cells:.3f}/{self.pen_regions:.3f}/{self.beta:.1f}"


def grid_of(s: Strategy) -> list[Params]:
    cells = PENALTIES if s.grids else (0.0,)
    regions = REGION_PENALTIES if s.parts else (0.0,)
    betas = BETAS if s.grids else (0.0,)
    return [Params(c, r, b) for c, r, b in itertools.product(cells, regions, betas)]


@dataclass
class Search:
    """A strategy's distance matrices, scored for any Params."""

    rows: QueryRows  # only the rows the strategy uses
    whole: np.ndarray  # (rows, images): to the image's global vector
    regions: np.ndarray | None  # (rows, images): to the nearest of its stored regions

    def scores(self, p: Params) -> np.ndarray:
        d = self.whole if self.regions is None else np.minimum(self.whole, self.regions)
        if p.beta:
            knn = np.partition(d, K_NEAREST, axis=1)[:, :K_NEAREST].mean(axis=1)
        if self.regions is not None and p.pen_regions:
            d = np.minimum(self.whole, self.regions + p.pen_regions)
        if p.beta:
            d = d - p.beta * knn[:, None]
        if p.pen_cells:
            d = d + p.pen_cells * (self.rows.level > 0)[:, None]
        starts = np.flatnonzero(np.r_[True, self.rows.owner[1:] != self.rows.owner[:-1]])
        scored: np.ndarray = np.minimum.reduceat(d, starts, axis=0)
        return scored


class Searches:
    """The distance matrices of every strategy, from the views (computed once each)."""

    def __init__(self, views: Views, n_images: int, short_sides: np.ndarray, cells: str) -> None:
        self.views, self.n, self.short_sides = views, n_images, short_sides
        self.rows = query_rows(views, cells)
        self.whole = per_image_min(self.rows.vecs, views.get("index:global"), n_images)
        self._regions: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def regions(self, part: Part) -> np.ndarray:
        if part not in self._regions:
            v = self.views.get(f"index:{part[0]}")
            keep = np.isin(v.level, part[1])
            kept = Vectors(v.vecs[keep], v.owner[keep], v.level[keep], v.seconds, v.passes)
            self._regions[part] = per_image_min(self.rows.vecs, kept, self.n)
        return self._regions[part]

    def of(self, s: Strategy) -> Search:
        # A query's n x n cells are used only where a cell keeps at least MIN_CELL px a side.
        short = self.short_sides[self.rows.owner]
        use = (self.rows.level == 0) | (
            np.isin(self.rows.level, s.grids) & (short >= MIN_CELL * self.rows.level)
        )
        rows = QueryRows(self.rows.vecs[use], self.rows.owner[use], self.rows.level[use],
                         self.rows.seconds)  # fmt: skip
        regions = None
        for part in s.parts:
            r = self.regions(part)[use]
            regions = r if regions is None else np.minimum(regions, r)
        return Search(rows, self.whole[use], regions)


def query_size(data: bytes) -> tuple[int, int]:
    """The upright size of a query (EXIF orientation applied, as the engine decodes it)."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (h, w) if turned else (w, h)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0 = the original ranks first; ties count against it."""
    own = scores[np.arange(len(targets)), targets]
    ranks: np.ndarray = (scores <= own[:, None]).sum(axis=1) - 1
    return ranks


def recall_table(ranks: np.ndarray, queries: Sequence[Query], k: int) -> dict[str, float]:
    out: dict[str, float] = {}
    hits = ranks < k
    for key in sorted({q.kind for q in queries}) + list(GROUPS):
        sel = np.array([key in (q.kind, q.group) for q in queries])
        if sel.any():
            out[key] = float(hits[sel].mean())
    return out


def choose(search: Search, s: Strategy, queries: Sequence[Query], targets: np.ndarray,
           tuning: np.ndarray, baseline_edit: float) -> Params:  # fmt: skip
    """On the tuning half: the Params that maximise the worst of crop/thumbnail/collage
    recall@1 while edits stay at least as good as global-only search; ties go to the better
    edits, then the better mean of the three, then the smallest settings."""
    tq = [q for q, t in zip(queries, tuning, strict=True) if t]
    best: tuple[Any, ...] = ()
    chosen = Params()
    for p in grid_of(s):
        table = recall_table(target_ranks(search.scores(p)[tuning], targets[tuning]), tq, 1)
        three = [table["crop"], table["thumbnail"], table["collage"]]
        ok = table["edit"] >= baseline_edit
        key = (ok, min(three), table["edit"], sum(three), -p.pen_cells, -p.pen_regions, -p.beta)
        if key > best:
            best, chosen = key, p
    return chosen


# -- report ---------------------------------------------------------------------------------------

KINDS_SHOWN = ("crop", "crop_centre", "crop_random", "crop_corner", "thumbnail", "collage",
               "collage_2x2", "collage_3x3", "edit")  # fmt: skip


def run(root: Path, threads: int, runtime: str, precision: str, only: str = "") -> None:
    evalset = load(root)
    queries = evalset.queries
    keys = {im.key: i for i, im in enumerate(evalset.index)}
    targets = np.array([keys[q.target] for q in queries])
    tuning = np.array([q.split == "tuning" for q in queries])
    nq, ni = len(queries), len(evalset.index)
    engine = Engine(threads, runtime, precision)
    logger.info("%s (%s); %d indexed images, %d queries (%d tuning, %d held-out), set %s",
                engine.model_id, engine.model.choice.reason, ni, nq, tuning.sum(),
                (~tuning).sum(), evalset.digest())  # fmt: skip
    views = Views(engine, evalset, root / "cache")
    short_sides = np.array([min(query_size(q.data)) for q in queries])
    by_cells: dict[str, Searches] = {}

    def searches(s: Strategy) -> Searches:
        if s.cells not in by_cells:
            by_cells[s.cells] = Searches(views, ni, short_sides, s.cells)
        return by_cells[s.cells]

    base = target_ranks(searches(Strategy("a", ())).of(Strategy("a", ())).scores(Params()), targets)
    tuning_queries = [q for q, t in zip(queries, tuning, strict=True) if t]
    base_edit = recall_table(base[tuning], tuning_queries, 1)["edit"]

    rows: list[Row] = []
    for s in strategies():
        if only and not any(part in s.name for part in only.split(",")):
            continue
        search = searches(s).of(s)
        params = choose(search, s, queries, targets, tuning, base_edit)
        scores = search.scores(params)
        ranks = target_ranks(scores, targets)
        result = {}
        for split, sel in (("tuning", tuning), ("held-out", ~tuning)):
            sq = [q for q, t in zip(queries, sel, strict=True) if t]
            result[split] = (recall_table(ranks[sel], sq, 1), recall_table(ranks[sel], sq, 5))
        rows.append(Row(s, params, result, cost(views, searches(s).rows, s, ni, nq), ranks,
                        scores.argmin(axis=1)))  # fmt: skip
    report(rows)
    misses(evalset, rows)


@dataclass
class Row:
    strategy: Strategy
    params: Params
    result: dict[str, tuple[dict[str, float], dict[str, float]]]  # split -> (recall@1, @5)
    cost: dict[str, float]
    ranks: np.ndarray  # per query, of its original
    top1: np.ndarray  # per query, the image ranked first


def cost(views: Views, rows: QueryRows, s: Strategy, ni: int, nq: int) -> dict[str, float]:
    """Index size, forward passes and embedding time (ms: decode, preprocessing, passes)."""
    ig = views.get("index:global")
    vectors, passes, seconds = 1.0, 1.0, ig.seconds
    for view, levels in s.parts:
        v = views.get(f"index:{view}")
        per_image = float(np.isin(v.level, levels).sum()) / ni
        vectors += per_image
        passes += part_passes(view, per_image)
        # Crops: only the levels kept would be embedded. (The centre-crop maps' seconds are
        # their pooling alone: their pass is the engine's.)
        share = per_image / (len(v.vecs) / ni) if view.startswith("crops") else 1.0
        seconds += v.seconds * share
    q_s = rows.seconds[0] + sum(rows.seconds[n] for n in s.grids)
    passes_q = 1 + (sum(n * n for n in s.grids) if s.cells == "crops" else bool(s.grids))
    return {"vectors": vectors, "passes_q": passes_q, "passes_i": passes,
            "ms_i": 1000 * seconds / ni, "ms_q": 1000 * q_s / nq}  # fmt: skip


def report(rows: list[Row]) -> None:
    head = " ".join(f"{k.replace('collage_', 'col').replace('crop_', ''):>7}" for k in KINDS_SHOWN)
    for split in ("tuning", "held-out"):
        logger.info("")
        logger.info("recall@1 (@5 for crop/thumbnail/collage below), %s half", split)
        logger.info("%-34s %s %s", "strategy", head, "   cells/regions/beta")
        for row in rows:
            r1 = row.result[split][0]
            cells = " ".join(f"{r1.get(k, float('nan')):7.3f}" for k in KINDS_SHOWN)
            logger.info("%-34s %s    %s", row.strategy.name, cells, row.params)
        logger.info("%-34s %s", "  (recall@5)", "")
        for row in rows:
            r5 = row.result[split][1]
            cells = " ".join(f"{r5.get(k, float('nan')):7.3f}" for k in KINDS_SHOWN)
            logger.info("%-34s %s", row.strategy.name, cells)
    logger.info("")
    logger.info("cost: vectors per image (index size x), forward passes per query / per stored "
                "image, embed ms per query / per stored image (decode included)")  # fmt: skip
    for row in rows:
        c, held = row.cost, row.result["held-out"][0]
        goal = all(held[g] >= GOAL for g in ("crop", "thumbnail", "collage"))
        logger.info("%-34s %6.1f vec  %4.0f / %4.1f passes  %7.1f / %7.1f ms  %s",
                    row.strategy.name, c["vectors"], c["passes_q"], c["passes_i"], c["ms_q"],
                    c["ms_i"], "meets 0.98 held-out" if goal else "")  # fmt: skip


def misses(evalset: EvalSet, rows: list[Row]) -> None:
    """What global search and each family's best strategy miss on the held-out half."""
    families: dict[str, Row] = {}
    for row in rows:
        held = row.result["held-out"][0]
        key = (min(held["crop"], held["thumbnail"], held["collage"]), -row.cost["vectors"])
        fam = row.strategy.name[0] + ("+q" if row.strategy.grids else "")
        best = families.get(fam)
        if best is None or key > (
            min(best.result["held-out"][0][g] for g in ("crop", "thumbnail", "collage")),
            -best.cost["vectors"],
        ):
            families[fam] = row
    for fam, row in sorted(families.items()):
        logger.info("")
        logger.info("held-out misses at rank 1 of %s (%s):", row.strategy.name, fam)
        for i, q in enumerate(evalset.queries):
            if q.split == "heldout" and row.ranks[i] > 0:
                logger.info("  %-40s %-18s rank %3d, first: %s", q.key, q.note,
                            row.ranks[i] + 1, evalset.index[row.top1[i]].key)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="the folder scripts/eval-photos.sh filled")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--only", default="", help="strategies whose name contains one of these")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args.root, args.threads, args.runtime, args.precision, args.only)


if __name__ == "__main__":
    main()
