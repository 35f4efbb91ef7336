"""Bytes -> validated RGB pixels: sniffing, size limits, EXIF orientation, mode conversion."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from image_search.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from image_search.records import ContentInfo

# We enforce our own pixel limit before decoding; PIL's global one would raise a different
# error type (or only warn) at a limit we do not control.
Image.MAX_IMAGE_PIXELS = None

# (magic prefix, extension, mime). WebP needs a second check at offset 8.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
    (b"BM", "bmp", "image/bmp"),
    (b"II*\x00", "tiff", "image/tiff"),
    (b"MM\x00*", "tiff", "image/tiff"),
)
SUPPORTED_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp"})


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input: shorter side resized to `resize`, then centre `crop`."""

    resize: int
    crop: int


@dataclass
class DecodedImage:
    """A validated image, already resized and cropped for the model (uint8 HxWx3 RGB)."""

    pixels: np.ndarray
    width: int
    height: int


def sniff(data: bytes) -> tuple[str, str]:
    """Return (ext, mime) from magic bytes; raise for empty or unsupported content."""
    if not data:
        raise InvalidImage("empty file: zero bytes")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    for magic, ext, mime in _MAGIC:
        if data.startswith(magic):
            return ext, mime
    raise UnsupportedImage("not a supported image (jpeg, png, gif, webp, bmp, tiff)")


def content_info(data: bytes) -> ContentInfo:
    ext, mime = sniff(data)
    return ContentInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),  # the original's hash_code; not used for identity
        ext=ext,
        mime=mime,
        size=len(data),
    )


def open_rgb(
    data: bytes, max_pixels: int, draft_to: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode to RGB (first frame, EXIF orientation applied, alpha over white).

    Also returns the upright full-resolution size, which JPEG draft decoding would hide.
    """
    ext, _ = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
            width, height = im.size
            if width <= 0 or height <= 0:
                raise InvalidImage("image has no pixels")
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"image is {width}x{height} = {width * height} pixels; limit {max_pixels}"
                )
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF/WebP/multi-page TIFF: the first frame stands for it
            if draft_to and im.format == "JPEG":
                # JPEG DCT scaling decodes at 1/2..1/8 size several times faster; keep at least
                # 2x the model input so the final resize still antialiases from more pixels.
                im.draft("RGB", (draft_to, draft_to))
            orientation = im.getexif().get(0x0112, 1)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            # EXIF orientations 5-8 rotate by 90 degrees: width and height swap.
            size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            return _to_rgb(im), size
    except (ImageTooLarge, InvalidImage):
        raise
    except UnidentifiedImageError as exc:
        # The magic bytes said `ext`, so this is a broken file of a supported format.
        raise InvalidImage(f"corrupt image: cannot be decoded as {ext}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # PIL reports truncated/corrupt data as OSError/SyntaxError/EOFError depending on codec.
        raise InvalidImage(f"corrupt or truncated image: {exc}") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float greyscale: scale to 8 bits by the actual range, not by clipping.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def resize_crop(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Shorter side to spec.resize (bilinear, antialiased), then a centre crop of spec.crop."""
    w, h = im.size
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (nw - spec.crop) // 2, (nh - spec.crop) // 2
    im = im.crop((left, top, left + spec.crop, top + spec.crop))
    return np.asarray(im, dtype=np.uint8)


def decode(data: bytes, spec: PreprocessSpec, max_pixels: int) -> DecodedImage:
    """The decoder stage: bytes to model-ready pixels."""
    im, (width, height) = open_rgb(data, max_pixels, draft_to=2 * spec.resize)
    return DecodedImage(pixels=resize_crop(im, spec), width=width, height=height)


def thumbnail_jpeg(data: bytes, size: int, max_pixels: int) -> bytes:
    im, _ = open_rgb(data, max_pixels, draft_to=2 * size)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=82, optimize=True)
    return out.getvalue()
