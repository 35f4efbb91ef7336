"""Decoder core: every PIL mode, EXIF orientation, animation, limits and broken input."""

from __future__ import annotations

import io
from typing import Literal

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


def textured(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 7919 + h)
    base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(("w", "h"), [(1600, 1200), (1200, 1600), (4000, 3000), (300, 256)])
def test_the_ingest_thumbnail_made_from_the_model_resize_looks_like_the_direct_one(
    w: int, h: int
) -> None:
    data = encode(textured(w, h), "JPEG", quality=90)
    out = decode(data, SPEC, MAX_PIXELS, thumbnail_size=256)
    # The model input is exactly what it is without a thumbnail.
    assert np.array_equal(out.pixels, decode(data, SPEC, MAX_PIXELS).pixels)
    got = Image.open(io.BytesIO(out.thumbnail))
    direct = Image.open(io.BytesIO(thumbnail_jpeg(data, 256, MAX_PIXELS)))
    assert got.format == "JPEG" and got.size == direct.size
    diff = np.abs(np.asarray(got, dtype=float) - np.asarray(direct, dtype=float))
    assert diff.mean() < 4.0  # JPEG q82 alone differs by about 2


@pytest.mark.parametrize(("w", "h"), [(200, 150), (4000, 200), (2000, 2000)])
def test_a_small_or_long_picture_or_a_bigger_thumbnail_starts_from_the_decode(
    w: int, h: int
) -> None:
    # Below the model's resize the picture would be scaled up, and beyond 16:1 the resize
    # keeps only its centre; a 512 px thumbnail is bigger than the resize. The thumbnail
    # is then made from the decode itself, byte for byte what thumbnail_jpeg makes.
    size = 512 if w == h else 256
    data = encode(textured(w, h), "JPEG", quality=90)
    out = decode(data, SPEC, MAX_PIXELS, thumbnail_size=size)
    assert out.thumbnail == thumbnail_jpeg(data, size, MAX_PIXELS)


# --- HEIC / AVIF -------------------------------------------------------------------------


def photo() -> Image.Image:
    from skimage import data as samples

    return Image.fromarray(samples.astronaut()).resize((320, 320), Image.Resampling.LANCZOS)


@pytest.mark.parametrize(("fmt", "ext", "mime"), [("HEIF", "heic", "image/heic"),
                                                  ("AVIF", "avif", "image/avif")])  # fmt: skip
def test_heic_and_avif_decode_like_the_jpeg_of_the_same_photo(
    fmt: str, ext: str, mime: str
) -> None:
    # HEIC is written by pillow-heif (registered by imaging); AVIF by Pillow's own libavif
    # plugin, since pillow-heif >= 1.0 no longer carries AVIF.
    data = encode(photo(), fmt, quality=90)
    info = content_info(data)
    assert (info.ext, info.mime) == (ext, mime)
    out = decode(data, SPEC, MAX_PIXELS)
    reference = decode(encode(photo(), "JPEG", quality=90), SPEC, MAX_PIXELS)
    assert out.pixels.shape == reference.pixels.shape == (224, 224, 3)
    assert (out.width, out.height) == (320, 320)
    # Both are lossy codings of one photo: close, pixel for pixel, but not equal.
    diff = np.abs(out.pixels.astype(float) - reference.pixels.astype(float))
    assert diff.mean() < 4.0
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(data, 64, MAX_PIXELS)))
    assert thumb.format == "JPEG" and thumb.size == (64, 64)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "JPEG"])
def test_heic_and_avif_orientation_is_applied_like_jpeg(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(two_tone(300, 200), fmt, exif=exif.tobytes(), quality=90)
    rgb, size = open_rgb(data, MAX_PIXELS)
    assert size == rgb.size == (200, 300)
    arr = np.asarray(rgb).astype(int)
    # Red was the left half; turned clockwise it is the top half.
    assert arr[:100, :, 0].mean() > 200 and arr[:100, :, 2].mean() < 50
    assert arr[200:, :, 2].mean() > 200 and arr[200:, :, 0].mean() < 50


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (len(body) + 4).to_bytes(4, "big") + body + b"\x00\x00\x00\x08meta"


@pytest.mark.parametrize(
    ("header", "ext", "mime"),
    [
        (ftyp(b"heic", b"mif1", b"heic"), "heic", "image/heic"),
        (ftyp(b"heix", b"mif1"), "heic", "image/heic"),
        (ftyp(b"hevc", b"msf1"), "heic", "image/heic"),
        (ftyp(b"mif1", b"mif1", b"heic"), "heic", "image/heic"),
        (ftyp(b"avif", b"mif1", b"miaf"), "avif", "image/avif"),
        (ftyp(b"avis", b"msf1"), "avif", "image/avif"),
        (ftyp(b"mif1", b"avif", b"miaf"), "avif", "image/avif"),
        (ftyp(b"mif1"), "heif", "image/heif"),
    ],
)
def test_isobmff_brands_are_sniffed(header: bytes, ext: str, mime: str) -> None:
    assert sniff(header) == (ext, mime)


@pytest.mark.parametrize("major", [b"isom", b"mp42", b"qt  ", b"crx ", b"M4A "])
def test_video_and_other_isobmff_files_are_unsupported(major: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        sniff(ftyp(major, b"isom", b"mp41"))


def test_heic_and_avif_are_refused_with_a_hint_when_their_codecs_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from PIL import features

    from image_search import imaging

    heic = encode(photo(), "HEIF")
    avif = encode(photo(), "AVIF")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` now fails
    monkeypatch.setattr(features, "check", lambda feature: False)  # no libavif either
    missing = imaging._optional_decoders()
    assert set(missing) == {"heic", "heif", "avif"}
    monkeypatch.setattr(imaging, "_UNAVAILABLE", missing)
    for data, hint in ((heic, "pip install pillow-heif"), (avif, "libavif")):
        with pytest.raises(UnsupportedImage, match=hint):
            content_info(data)  # the upload route's first look: a 415 before any work
        with pytest.raises(UnsupportedImage, match=hint) as err:
            decode(data, SPEC, MAX_PIXELS)
        assert err.value.status == 415
    # Everything else is untouched.
    assert decode(encode(two_tone(), "JPEG"), SPEC, MAX_PIXELS).pixels.shape == (224, 224, 3)


def test_heic_is_stored_and_served_under_its_own_extension_and_mime() -> None:
    from deployments.responses import mime_for
    from image_search.imaging import SUPPORTED_EXTENSIONS
    from image_search.records import object_key_for, valid_object_key

    info = content_info(encode(photo(), "HEIF"))
    key = object_key_for(info.sha256, info.ext)
    assert key.endswith(".heic") and valid_object_key(key)
    assert mime_for(key) == "image/heic"
    # The folder walks (CLI, backfill) pick the files up too; iPhones write .HEIC.
    assert {"heic", "heif", "avif"} <= SUPPORTED_EXTENSIONS


def test_every_sniffed_format_is_served_with_its_mime() -> None:
    from deployments.responses import mime_for
    from image_search.imaging import _FORMATS

    for ext, fmt in _FORMATS.items():
        assert mime_for(f"meta/image/{'0' * 64}.{ext}") == fmt.mime


# --- malformed input maps to domain errors, and only it --------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        OSError("broken data stream"),
        EOFError(),
        SyntaxError("not a TIFF file"),
        ValueError("tile cannot extend outside image"),
        TypeError("Missing dimensions"),
        KeyError(273),
        IndexError("index out of range"),
        __import__("struct").error("unpack requires a buffer of 4 bytes"),
        ZeroDivisionError("division by zero"),
        OverflowError("Python int too large"),
        AttributeError("'NoneType' object has no attribute 'read'"),
        RuntimeError("Failed to decode image: Missing or empty image item"),
        UserWarning("Corrupt EXIF data"),  # only ever raised when a process escalates warnings
    ],
    ids=lambda e: type(e).__name__,
)
def test_what_pil_raises_on_malformed_input_is_a_400(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    def broken(*args: object, **kwargs: object) -> Image.Image:
        raise exc

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(InvalidImage, match=type(exc).__name__) as err:
        decode(encode(two_tone(), "PNG"), SPEC, MAX_PIXELS)
    assert err.value.status == 400 and err.value.__cause__ is exc


@pytest.mark.parametrize(
    "exc",
    [
        Image.DecompressionBombError("too many pixels"),
        RuntimeError("Memory allocation error: Security limit exceeded: Image size 64x134217792"),
    ],
    ids=["pil-bomb", "libheif-limit"],
)
def test_codec_size_limits_are_a_413(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    def broken(*args: object, **kwargs: object) -> Image.Image:
        raise exc

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(ImageTooLarge):
        decode(encode(two_tone(), "PNG"), SPEC, MAX_PIXELS)


@pytest.mark.parametrize("exc", [MemoryError(), RecursionError(), NameError("a bug of ours")])
def test_programmer_and_resource_errors_are_not_disguised_as_bad_files(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    def broken(*args: object, **kwargs: object) -> Image.Image:
        raise exc

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(type(exc)):
        decode(encode(two_tone(), "PNG"), SPEC, MAX_PIXELS)


@pytest.mark.parametrize(
    ("fmt", "plugin"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"),
     ("WEBP", "WEBP"), ("HEIF", "HEIF"), ("AVIF", "AVIF")],
)  # fmt: skip
def test_only_the_sniffed_formats_plugin_parses_the_bytes(
    monkeypatch: pytest.MonkeyPatch, fmt: str, plugin: str
) -> None:
    seen: list[object] = []
    real_open = Image.open

    def spy(
        fp: io.BytesIO, mode: Literal["r"] = "r", formats: list[str] | None = None
    ) -> Image.Image:
        seen.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    decode(encode(two_tone(), fmt), SPEC, MAX_PIXELS)
    assert seen == [[plugin]]


def test_codec_messages_are_kept_short(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Image.Image:
        raise ValueError("x" * 10_000)

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(InvalidImage) as err:
        decode(encode(two_tone(), "PNG"), SPEC, MAX_PIXELS)
    assert len(err.value.message) < 300


# --- extreme aspect ratios ------------------------------------------------------------------


def test_a_one_pixel_high_strip_does_not_blow_up_the_resize() -> None:
    # 40000x1 is 40k pixels, far under the limit; scaled so its short side is 256 it would be
    # over ten billion pixels.
    data = encode(Image.new("RGB", (40_000, 1), (10, 200, 30)), "PNG")
    out = decode(data, SPEC, MAX_PIXELS)
    assert out.pixels.shape == (224, 224, 3) and (out.width, out.height) == (40_000, 1)
    assert np.abs(out.pixels.reshape(-1, 3).mean(axis=0) - (10, 200, 30)).max() < 1


@pytest.mark.parametrize("size", [(3000, 100), (100, 2500), (1700, 90)])
def test_cutting_a_long_strip_first_leaves_the_model_input_as_it_was(
    size: tuple[int, int],
) -> None:
    from image_search.imaging import resize_crop

    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (size[1] // 10, size[0] // 10, 3), np.uint8))
    im = im.resize(size, Image.Resampling.BICUBIC)
    # The plain way: resize the whole strip, then take the centre.
    w, h = size
    scale = SPEC.resize / min(w, h)
    nw, nh = max(SPEC.crop, round(w * scale)), max(SPEC.crop, round(h * scale))
    whole = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - SPEC.crop) // 2, (nh - SPEC.crop) // 2
    plain = np.asarray(whole.crop((left, top, left + SPEC.crop, top + SPEC.crop)), float)
    assert np.abs(resize_crop(im, SPEC).astype(float) - plain).mean() < 3.0
