"""Where an upload's decode goes, step by step, with libjpeg-turbo's own API beside Pillow's.

For each photo size, distinct real photos (bench.compare's) are decoded as the Decoder decodes
an upload (image_search.imaging.decode: the JPEG at a reduced DCT scale, the model's resize,
the thumbnail's resize and encode, the crop), each step timed alone, then the whole. Where
`simplejpeg` is installed (it is not a dependency: `pip install simplejpeg`), its decode at
the same scale is timed beside Pillow's, with whether the pixels are the same: both wrap
libjpeg-turbo, and the issue that asked for reduced-scale decoding left the choice to whichever
measures faster. One thread, median over photos and rounds.

    python -m bench.decoding [--photos 24] [--rounds 3] [--sizes 640x480,1600x1200,4000x3000]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from image_search.embedding import model_card
from image_search.imaging import (
    PreprocessSpec,
    _crop,
    _resize_short,
    _shrink_to_thumbnail,
    _thumbnail_jpeg_bytes,
    decode,
    open_rgb,
)

logger = logging.getLogger("bench.decoding")
MAX_PIXELS = 10**8
THUMBNAIL = 256  # server.thumbnail_size's default
STEPS = ("JPEG decode", "model resize", "thumbnail resize", "thumbnail encode", "crop", "whole")


def _timed(times: dict[str, list[float]], step: str, fn: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    out = fn(*args)
    times.setdefault(step, []).append(time.perf_counter() - started)
    return out


def _draft_factor(width: int, height: int, draft_to: int) -> int:
    """The DCT scale Pillow's draft picks: the largest of 1/8, 1/4, 1/2 keeping both sides at
    least `draft_to`."""
    return next((f for f in (8, 4, 2) if width // f >= draft_to and height // f >= draft_to), 1)


def steps(photos: list[bytes], spec: PreprocessSpec, rounds: int) -> dict[str, float]:
    """Median ms of each step of an upload's decode over the photos, `rounds` times."""
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for data in photos:
            im, _ = _timed(times, "JPEG decode", open_rgb, data, MAX_PIXELS,
                           2 * max(spec.resize, THUMBNAIL))  # fmt: skip
            resized = _timed(times, "model resize", _resize_short, im, spec)
            thumb = resized.copy()
            _timed(times, "thumbnail resize", _shrink_to_thumbnail, thumb, THUMBNAIL)
            _timed(times, "thumbnail encode", _thumbnail_jpeg_bytes, thumb)
            _timed(times, "crop", _crop, resized, spec)
            _timed(times, "whole", decode, data, spec, MAX_PIXELS, THUMBNAIL)
    return {step: 1000 * statistics.median(v) for step, v in times.items()}


def simplejpeg_decode(
    photos: list[bytes], spec: PreprocessSpec, rounds: int
) -> tuple[float, bool] | None:
    """simplejpeg's decode at Pillow's draft scale: median ms, and whether every photo's
    pixels equal Pillow's. None where simplejpeg is not installed."""
    try:
        import simplejpeg  # type: ignore[import-not-found]  # optional: measured if present
    except ImportError:
        return None
    draft_to = 2 * max(spec.resize, THUMBNAIL)
    times: list[float] = []
    same = True
    for r in range(rounds):
        for data in photos:
            width, height = Image.open(io.BytesIO(data)).size
            f = _draft_factor(width, height, draft_to)
            started = time.perf_counter()
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // f),
                                            min_height=-(-height // f))  # fmt: skip
            times.append(time.perf_counter() - started)
            if r == 0:
                im, _ = open_rgb(data, MAX_PIXELS, draft_to)
                same = same and np.array_equal(pixels, np.asarray(im))
    return 1000 * statistics.median(times), same


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in (s.split("x") for s in text.split(",") if s)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=24, help="distinct photos per size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="640x480,1600x1200,4000x3000", help="WxH,WxH,...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bench.compare import PhotoMaker  # the same photos as the side-by-side comparison

    spec = model_card("efficientnet-lite0").spec
    maker = PhotoMaker()
    lines = [f"an upload's decode, ms (median of {args.photos} photos x {args.rounds} rounds, "
             "one thread; JPEG q90)", ""]  # fmt: skip
    lines.append(f"{'photo':<11}" + "".join(f"{s:>18}" for s in STEPS) + f"{'simplejpeg':>26}")
    for size in parse_sizes(args.sizes):
        photos = maker.make(args.photos, size)
        ms = steps(photos, spec, args.rounds)
        other = simplejpeg_decode(photos, spec, args.rounds)
        if other is None:
            beside = "not installed"
        else:
            beside = f"{other[0]:.2f} ({'same pixels' if other[1] else 'OTHER PIXELS'})"
        label = f"{size[0]}x{size[1]}"
        lines.append(f"{label:<11}" + "".join(f"{ms[s]:>18.2f}" for s in STEPS)
                     + f"{beside:>26}")  # fmt: skip
    logger.info("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
