"""Region search's values as Ray Data columns: a stored image's views and its region vectors.

The jobs make them with the service's code (image_search.regions cuts the views, the
embedding's RegionEmbedder pools them); only their transport between stages lives here, as
.npz bytes (arrays only: nothing is unpickled). b"" means none (a row with nothing to embed,
or a collection without region vectors).
"""

from __future__ import annotations

import io

import numpy as np

from image_search.regions import RegionVectors, RegionViews


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    return buf.getvalue()


def _load(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def pack_views(views: RegionViews) -> bytes:
    """A stored image's views (image_search.regions.index_views): the whole pass's input,
    where it lies in the image, the thumbnail view's model input."""
    if views.whole is None or views.thumb is None:
        raise ValueError("only a stored image's views (whole and thumbnail) travel")
    return _npz(whole=views.whole, window=np.asarray(views.window, np.float64), thumb=views.thumb)


def unpack_views(raw: bytes) -> RegionViews | None:
    if not raw:
        return None
    z = _load(raw)
    left, top, right, bottom = (float(v) for v in z["window"])
    return RegionViews(whole=z["whole"], window=(left, top, right, bottom), thumb=z["thumb"])


def pack_vectors(parts: RegionVectors) -> bytes:
    return _npz(vectors=parts.vectors.astype(np.float32),
                boxes=np.asarray(parts.boxes, np.float64).reshape(-1, 4))  # fmt: skip


def unpack_vectors(raw: bytes) -> RegionVectors | None:
    if not raw:
        return None
    z = _load(raw)
    boxes = [(float(a), float(b), float(c), float(d)) for a, b, c, d in z["boxes"]]
    return RegionVectors(z["vectors"], boxes)
