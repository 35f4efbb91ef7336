"""The photos int8 models are calibrated on: real, public-domain/CC0, shipped with the engine.

See README.md here for where each comes from; bench/calibration_set.py writes them. They pass
through the serving decoder, so calibration sees exactly the pixels the model will.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from image_search.errors import ModelUnavailable
from image_search.imaging import PreprocessSpec, decode

FOLDER = Path(__file__).resolve().parent
MAX_PIXELS = 1 << 20  # the files are 256x256


def files() -> list[Path]:
    found = sorted(FOLDER.glob("*.jpg"))
    if not found:
        # An install without the package data: int8 cannot be built (fp32 still can).
        raise ModelUnavailable(
            f"no int8 calibration photos in {FOLDER}: this install lacks the package's data; "
            "reinstall it with them, or set model.precision fp32 (ISE__MODEL__PRECISION)"
        )
    return found


def source_photos() -> frozenset[str]:
    """Names of the photos the crops come from (`coffee-3.jpg` -> `coffee`)."""
    return frozenset(p.stem.rsplit("-", 1)[0] for p in files())


def digest() -> str:
    """sha256 over every file's name and bytes: an int8 model is rebuilt when it changes."""
    h = hashlib.sha256()
    for p in files():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def pixels(spec: PreprocessSpec) -> np.ndarray:
    """(N, crop, crop, 3) uint8: every photo decoded as the Decoder would for this spec."""
    return np.stack([decode(p.read_bytes(), spec, MAX_PIXELS).pixels for p in files()])
