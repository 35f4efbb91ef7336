"""bench.decoding: its scale is Pillow's, and a short run prints every step for every size."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from bench import decoding


@pytest.mark.parametrize("size", [(640, 480), (1600, 1200), (4000, 3000), (1100, 530)])
def test_the_scale_given_to_simplejpeg_is_the_one_pillows_draft_decodes_at(
    size: tuple[int, int],
) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buf, format="JPEG")
    im = Image.open(io.BytesIO(buf.getvalue()))
    im.draft("RGB", (512, 512))
    f = decoding._draft_factor(*size, 512)
    assert im.size == (-(-size[0] // f), -(-size[1] // f))


def test_a_short_run_prints_each_step_for_each_size(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bench.decoding"):
        assert decoding.main(["--photos", "2", "--rounds", "1", "--sizes", "320x240,1200x900"]) == 0
    text = caplog.text
    header = next(line for line in text.splitlines() if line.startswith("photo"))
    assert all(step in header for step in decoding.STEPS)
    rows = [line.split() for line in text.splitlines() if line.startswith(("320x240", "1200x900"))]
    assert len(rows) == 2
    for row in rows:
        times = [float(v) for v in row[1 : 1 + len(decoding.STEPS)]]
        assert all(t > 0 for t in times)
        assert times[-1] >= max(times[:-1])  # the whole decode takes at least its longest step
