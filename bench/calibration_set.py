"""Writes the int8 calibration photos that ship in image_search/embedding/calibration/.

    python -m bench.calibration_set      (needs the test extra: scikit-image)

Crops of the public-domain / CC0 photos among bench/photos.py's, resized to the model's 256
input; the other photos of that set are the quality gate's (tests/quality), which must never
see a calibration photo. Rerun only to change the set: the int8 models are rebuilt from it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos import real_photos

logger = logging.getLogger("bench.calibration_set")
OUT = Path(__file__).resolve().parents[1] / "image_search" / "embedding" / "calibration"
# Only photos whose scikit-image docstring says public domain or CC0 (README.md there cites it).
PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "camera", "brick", "grass",
          "text", "cell", "clock")  # fmt: skip
CROPS_PER_PHOTO = 4  # plus the whole photo
SIDE = 256  # the model's resize: the decoder then takes the same centre 224 as in serving
QUALITY = 85


def crops(arr: np.ndarray, rng: np.random.Generator) -> list[Image.Image]:
    im = Image.fromarray(arr)
    w, h = im.size
    out = [im]
    for _ in range(CROPS_PER_PHOTO):
        side = int(rng.uniform(0.35, 0.8) * min(w, h))
        x, y = int(rng.uniform(0, w - side)), int(rng.uniform(0, h - side))
        out.append(im.crop((x, y, x + side, y + side)))
    return out


def square(im: Image.Image) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    photos = real_photos()
    for old in OUT.glob("*.jpg"):
        old.unlink()
    total = 0
    for name in PHOTOS:
        for i, im in enumerate(crops(photos[name], rng)):
            buf = io.BytesIO()
            square(im).save(buf, format="JPEG", quality=QUALITY, optimize=True)
            (OUT / f"{name}-{i}.jpg").write_bytes(buf.getvalue())
            total += len(buf.getvalue())
    logger.info("%d photos, %d files, %.0f kB in %s", len(PHOTOS),
                len(PHOTOS) * (CROPS_PER_PHOTO + 1), total / 1e3, OUT)  # fmt: skip


if __name__ == "__main__":
    main()
