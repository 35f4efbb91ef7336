"""Real photos for benchmarks and tests: shipped by scikit-image and scikit-learn, no download."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

COLOR = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
         "retina"]  # fmt: skip
GRAY = ["camera", "moon", "page", "coins", "text", "brick", "grass", "gravel", "cell", "clock"]


def real_photos() -> dict[str, np.ndarray]:
    """20 distinct real photos as uint8 RGB arrays."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos: dict[str, np.ndarray] = {name: getattr(data, name)()[..., :3] for name in COLOR}
    for name in GRAY:
        photos[name] = np.stack([getattr(data, name)().astype(np.uint8)] * 3, axis=-1)
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    for name, img in zip(["china", "flower"], load_sample_images().images, strict=True):
        photos[name] = img
    return {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in photos.items()}


def to_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def distinct_images(n: int, size: int | None = None) -> list[bytes]:
    """n JPEGs with distinct bytes: shifted crops of the real photos, optionally resized."""
    photos = list(real_photos().values())
    out = []
    for i in range(n):
        arr = photos[i % len(photos)]
        k = i // len(photos)
        h, w = arr.shape[:2]
        crop = arr[k % 17 : h - (k * 3) % 13, (k * 5) % 19 : w - k % 11]
        im = Image.fromarray(crop)
        if size:
            im = im.resize((size, size * im.height // im.width), Image.Resampling.BILINEAR)
        out.append(to_jpeg(np.asarray(im)))
    return out
