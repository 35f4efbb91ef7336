"""Small inputs the pipeline unit tests share: settings on a temp folder, JPEG bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from image_search.config import Settings, load_settings


def jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def settings_in(tmp: Path) -> Settings:
    tmp.mkdir(parents=True, exist_ok=True)
    return load_settings(environ={}, overrides={
        "stores.metadata_uri": f"sqlite:///{tmp}/meta.db",
        "stores.objects_uri": f"file://{tmp}/objects", "stores.vectors_uri": f"{tmp}/v.db",
    })  # fmt: skip
