"""The numpy ends every runtime shares: uint8 pixels in, unit vectors out.

One implementation for torch and ONNX Runtime alike, so the two can differ only in the network.
"""

from __future__ import annotations

import numpy as np


class Normaliser:
    """uint8 (N,H,W,3) RGB -> float32 (N,3,H,W) as (x / 255 - mean) / std, per channel."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        # Folded into one multiply-add, in float32, on the uint8 input.
        std32 = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        self.scale = np.float32(1.0) / (np.float32(255.0) * std32)
        self.shift = -np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1) / std32

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        check_batch(batch)
        x = batch.transpose(0, 3, 1, 2).astype(np.float32, order="C")
        x *= self.scale
        x += self.shift
        return x


def check_batch(batch: np.ndarray) -> None:
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected (N,H,W,3) uint8, got {batch.shape} {batch.dtype}")


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (rows of zeros stay zeros), as float32."""
    out = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    result: np.ndarray = out / np.maximum(norms, np.float32(1e-12))
    return result
