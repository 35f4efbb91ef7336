"""Ray Data batches as lists of rows and back, plus the skip-reason codes every stage reports.

Stages work on plain rows (dicts) so their logic reads like the online path's and can be unit
tested without Ray; only these two helpers know Ray Data's numpy batch format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from image_search.errors import ImageTooLarge, InvalidImage, SearchEngineError, UnsupportedImage

Row = dict[str, Any]
Batch = dict[str, np.ndarray]


def to_rows(batch: Batch) -> list[Row]:
    cols = list(batch)
    n = len(batch[cols[0]]) if cols else 0
    return [{c: _plain(batch[c][i]) for c in cols} for i in range(n)]


def _plain(value: Any) -> Any:
    # numpy scalars -> Python scalars, so rows compare and serialise like ordinary data.
    return value.item() if isinstance(value, np.generic) else value


def to_batch(rows: Sequence[Row], columns: Sequence[str]) -> Batch:
    out: Batch = {}
    for c in columns:
        values = [r[c] for r in rows]
        if values and all(isinstance(v, bool) for v in values):
            out[c] = np.array(values, dtype=bool)
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[c] = np.array(values, dtype=np.int64)
        else:
            # Strings and bytes stay Python objects: Arrow stores them as string/binary columns.
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[c] = arr
    return out


def skip_reason(exc: SearchEngineError) -> str:
    """A stable code first (grouped in the report), then the human message."""
    code = (
        "too_large" if isinstance(exc, ImageTooLarge)
        else "unsupported" if isinstance(exc, UnsupportedImage)
        else "invalid" if isinstance(exc, InvalidImage)
        else type(exc).__name__.lower()
    )  # fmt: skip
    return f"{code}: {exc.message}"
