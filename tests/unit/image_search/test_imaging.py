"""Decoder core: every PIL mode, EXIF orientation, animation, limits and broken input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from image_search.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from image_search.imaging import (
    PreprocessSpec,
    content_info,
    decode,
    open_rgb,
    sniff,
    thumbnail_jpeg,
)

SPEC = PreprocessSpec(resize=256, crop=224)
MAX_PIXELS = 40_000_000


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def two_tone(w: int = 300, h: int = 200) -> Image.Image:
    """Left half red, right half blue: orientation changes are visible in the pixels."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("TIFF", "tiff"),
    ],
)
def test_every_supported_format_decodes(fmt: str, ext: str) -> None:
    data = encode(two_tone(), fmt)
    assert sniff(data)[0] == ext
    out = decode(data, SPEC, MAX_PIXELS)
    assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height) == (300, 200)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    im = two_tone().convert(mode) if mode not in ("I;16", "I", "F") else two_tone().convert("L")
    if mode in ("I;16", "I", "F"):
        im = Image.fromarray((np.asarray(im, dtype=np.float32) * 200).astype(np.uint16)).convert(
            mode
        )
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F", "YCbCr") else "PNG"
    rgb, _ = open_rgb(encode(im, fmt), MAX_PIXELS)
    assert rgb.mode == "RGB"
    arr = np.asarray(rgb)
    # The two halves stay distinguishable after conversion: nothing collapsed to one value.
    left = arr[:, :100].reshape(-1, 3).mean(axis=0)
    right = arr[:, 200:].reshape(-1, 3).mean(axis=0)
    assert np.abs(left - right).sum() > 5


def test_alpha_is_composited_on_white() -> None:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgb, _ = open_rgb(encode(im, "PNG"), MAX_PIXELS)
    assert np.asarray(rgb).min() == 255  # fully transparent -> white, not black


def test_palette_with_transparency() -> None:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0] * 256)
    data = encode(im, "PNG", transparency=0)
    rgb, _ = open_rgb(data, MAX_PIXELS)
    assert np.asarray(rgb).min() == 255


@pytest.mark.parametrize(("orientation", "swapped"), [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_is_applied(orientation: int, swapped: bool) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(two_tone(300, 200), "JPEG", exif=exif.tobytes(), quality=95)
    rgb, size = open_rgb(data, MAX_PIXELS)
    assert size == ((200, 300) if swapped else (300, 200))
    assert rgb.size == size
    arr = np.asarray(rgb).astype(int)
    if orientation == 3:  # rotated 180: blue now on the left
        assert arr[:, :50, 2].mean() > arr[:, :50, 0].mean()
    if orientation == 1:
        assert arr[:, :50, 0].mean() > arr[:, :50, 2].mean()


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    rgb, _ = open_rgb(buf.getvalue(), MAX_PIXELS)
    r, g, b = np.asarray(rgb).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 50 and b < 50


def test_empty_file_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        content_info(b"")


def test_non_image_is_unsupported() -> None:
    with pytest.raises(UnsupportedImage):
        content_info(b"%PDF-1.4 not an image")


def test_truncated_jpeg_is_invalid() -> None:
    data = encode(two_tone(), "JPEG")
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 3], SPEC, MAX_PIXELS)


def test_garbage_after_magic_is_rejected() -> None:
    with pytest.raises((InvalidImage, UnsupportedImage)):
        decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, SPEC, MAX_PIXELS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A 20000x20000 PNG of one colour compresses to a few hundred KB but is 400 MP.
    data = encode(Image.new("L", (20000, 20000), 0), "PNG")
    assert len(data) < 2_000_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode(data, SPEC, MAX_PIXELS)


def test_tiny_image_is_upscaled_to_model_input() -> None:
    out = decode(encode(Image.new("RGB", (3, 5), (9, 9, 9)), "PNG"), SPEC, MAX_PIXELS)
    assert out.pixels.shape == (224, 224, 3)


def test_content_info_hashes() -> None:
    data = encode(two_tone(), "PNG")
    info = content_info(data)
    assert len(info.sha256) == 64 and len(info.md5) == 32
    assert info.ext == "png" and info.mime == "image/png" and info.size == len(data)


def test_jpeg_draft_keeps_vectors_input_close_to_full_decode() -> None:
    """Draft decoding (DCT scaling) must not change the model input noticeably."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((2400, 1800), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=90)
    fast = decode(data, SPEC, MAX_PIXELS).pixels.astype(float)
    full_im = Image.open(io.BytesIO(data)).convert("RGB")
    from image_search.imaging import resize_crop

    full = resize_crop(full_im, SPEC).astype(float)
    assert np.abs(fast - full).mean() < 3.0


def test_thumbnail_is_small_jpeg() -> None:
    thumb = thumbnail_jpeg(encode(two_tone(1200, 800), "PNG"), 256, MAX_PIXELS)
    im = Image.open(io.BytesIO(thumb))
    assert im.format == "JPEG" and max(im.size) == 256
