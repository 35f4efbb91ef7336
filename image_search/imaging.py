"""Bytes -> validated RGB pixels: sniffing, size limits, EXIF orientation, mode conversion.

Every byte handled here is untrusted (uploads, bulk imports, stored objects): whatever a
malformed file makes PIL or a codec raise leaves this module as one of our domain errors
(InvalidImage 400, UnsupportedImage 415, ImageTooLarge 413), never as a 500.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image, ImageOps, features

from image_search.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from image_search.records import ContentInfo

log = logging.getLogger(__name__)

# We enforce our own pixel limit before decoding; PIL's global one would raise a different
# error type (or only warn) at a limit we do not control.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageFormat:
    ext: str  # the extension stored objects get (object_key_for)
    mime: str
    pil_format: str  # the only PIL plugin allowed to parse bytes sniffed as this format


_FORMATS = {
    f.ext: f
    for f in (
        ImageFormat("jpg", "image/jpeg", "JPEG"),
        ImageFormat("png", "image/png", "PNG"),
        ImageFormat("gif", "image/gif", "GIF"),
        ImageFormat("bmp", "image/bmp", "BMP"),
        ImageFormat("tiff", "image/tiff", "TIFF"),
        ImageFormat("webp", "image/webp", "WEBP"),
        ImageFormat("heic", "image/heic", "HEIF"),  # HEVC-coded HEIF: what phones write
        ImageFormat("heif", "image/heif", "HEIF"),  # generic HEIF (brand mif1 only)
        ImageFormat("avif", "image/avif", "AVIF"),
    )
}
# (magic prefix, ext). WebP and the ISO-BMFF formats (HEIC, AVIF) are sniffed in sniff().
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# ISO-BMFF `ftyp` brands. mif1/msf1 only say "HEIF container": the compatible brands tell
# whether the pictures inside are AVIF or HEVC.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
_FTYP_SCAN = 256  # compatible brands read at most; real ftyp boxes hold a handful

# What a folder walk (CLI, backfill) picks up: the stored extensions plus common spellings.
SUPPORTED_EXTENSIONS = frozenset({*_FORMATS, "jpeg", "tif", "hif"})
# The mime a stored object is served with, by its extension (deployments.responses.mime_for).
MIME_BY_EXT = {ext: f.mime for ext, f in _FORMATS.items()}

# The exception families PIL and its codec plugins (pillow-heif included) raise on malformed
# input: truncated streams (OSError, EOFError), bad header fields (SyntaxError, ValueError),
# tag tables that point nowhere (KeyError, IndexError, struct.error, TypeError), zero or huge
# dimensions in arithmetic (ArithmeticError), half-initialised image objects
# (AttributeError), codec libraries' own failures (libavif, libheif: RuntimeError), and
# warnings a process escalated to errors (corrupt EXIF is a UserWarning). Deliberately not
# Exception: MemoryError, RecursionError and our own bugs must stay loud rather than turn
# into a "corrupt image" 400.
_MALFORMED = (
    OSError,
    EOFError,
    SyntaxError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    struct.error,
    ArithmeticError,
    AttributeError,
    RuntimeError,
    UserWarning,
)
# libheif refuses headers over its own size limits before allocating: a bomb, so a 413.
_CODEC_SIZE_LIMIT = "Security limit exceeded"
_MESSAGE_MAX = 200  # a codec's message can quote the file's bytes; keep responses short


def _import_pillow_heif() -> ModuleType | None:
    try:
        import pillow_heif
    except ImportError:
        return None
    return pillow_heif


def _optional_decoders() -> dict[str, str]:
    """Register the optional codecs; return ext -> how to enable it, for those missing.

    HEIC comes from pillow-heif. AVIF comes from Pillow itself when built with libavif
    (Pillow >= 11.3 wheels) or else from pillow-heif < 1.0, which still carried it.
    """
    missing: dict[str, str] = {}
    # Thumbnails, depth and auxiliary images are never used: not parsing them keeps less of
    # an untrusted file in play.
    skip_extras = {"thumbnails": False, "depth_images": False, "aux_images": False}
    pillow_heif = _import_pillow_heif()
    if pillow_heif is None:
        heif_hint = "HEIC/HEIF images need pillow-heif: pip install pillow-heif"
        missing.update(heic=heif_hint, heif=heif_hint)
    else:
        pillow_heif.register_heif_opener(**skip_extras)
    if not features.check("avif"):
        register_avif = getattr(pillow_heif, "register_avif_opener", None)
        if register_avif is None:
            missing["avif"] = (
                "AVIF images need Pillow built with libavif: pip install 'pillow>=11.3'"
            )
        else:
            register_avif(**skip_extras)
    for ext, hint in missing.items():
        log.info("%s uploads will be refused (415): %s", ext, hint)
    return missing


_UNAVAILABLE = _optional_decoders()


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input: shorter side resized to `resize`, then centre `crop`."""

    resize: int
    crop: int


@dataclass(frozen=True)
class ImageFacts:
    """What an upload's record keeps of its decode: the size and the thumbnail, no pixels."""

    width: int
    height: int
    thumbnail: bytes = b""
    thumbnail_size: int = 0


@dataclass
class DecodedImage:
    """A validated image, already resized and cropped for the model (uint8 HxWx3 RGB)."""

    pixels: np.ndarray
    width: int
    height: int
    # The stored thumbnail (JPEG) made from the same decode at ingest, so no request ever
    # decodes a full original for one; empty when not asked for (searches).
    thumbnail: bytes = b""
    thumbnail_size: int = 0
    # Region search's extra inputs (an image_search.regions.RegionViews), when asked for;
    # typed loosely because regions builds on this module.
    views: Any = None

    def facts(self) -> ImageFacts:
        return ImageFacts(self.width, self.height, self.thumbnail, self.thumbnail_size)


def _sniff_isobmff(data: bytes) -> str | None:
    """The ext of a HEIF-family file from its leading `ftyp` box, or None."""
    if data[4:8] != b"ftyp":
        return None
    box_end = min(int.from_bytes(data[:4], "big"), len(data), 16 + 4 * _FTYP_SCAN)
    major = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in _AVIF_BRANDS:
        return "avif"
    if major in _HEIC_BRANDS:
        return "heic"
    if major in _HEIF_BRANDS:
        if compatible & _AVIF_BRANDS:
            return "avif"
        return "heic" if compatible & _HEIC_BRANDS else "heif"
    return None  # MP4/QuickTime video, camera raw and other ISO-BMFF files


def _format_of(data: bytes) -> ImageFormat:
    if not data:
        raise InvalidImage("empty file: zero bytes")
    ext: str | None = None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ext = "webp"
    else:
        ext = _sniff_isobmff(data) or next((e for m, e in _MAGIC if data.startswith(m)), None)
    if ext is None:
        raise UnsupportedImage(
            "not a supported image (jpeg, png, gif, webp, bmp, tiff, heic, avif)"
        )
    if ext in _UNAVAILABLE:
        raise UnsupportedImage(f"{ext} is not enabled on this server: {_UNAVAILABLE[ext]}")
    return _FORMATS[ext]


def sniff(data: bytes) -> tuple[str, str]:
    """Return (ext, mime) from magic bytes; raise for empty or unsupported content."""
    fmt = _format_of(data)
    return fmt.ext, fmt.mime


def content_info(data: bytes) -> ContentInfo:
    ext, mime = sniff(data)
    return ContentInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),  # the original's hash_code; not used for identity
        ext=ext,
        mime=mime,
        size=len(data),
    )


@contextmanager
def _malformed_is_invalid(ext: str) -> Iterator[None]:
    """Map what PIL raises on a malformed file to our errors (see _MALFORMED for the list)."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Only if someone re-enabled PIL's own limit (or escalated its warning): still a bomb.
        raise ImageTooLarge(f"image has too many pixels: {exc}") from exc
    except RecursionError:
        raise  # a RuntimeError, but a bug of ours (or of PIL) to see, not a file to blame
    except _MALFORMED as exc:
        if isinstance(exc, RuntimeError) and _CODEC_SIZE_LIMIT in str(exc):
            raise ImageTooLarge(f"image is over the decoder's size limit: {exc}") from exc
        # The magic bytes said `ext`, so this is a broken file of a supported format.
        detail = f"{type(exc).__name__}: {exc}"[:_MESSAGE_MAX]
        raise InvalidImage(f"corrupt or truncated {ext} image ({detail})") from exc


def open_rgb(
    data: bytes, max_pixels: int, draft_to: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode to RGB (first frame, EXIF orientation applied, alpha over white).

    Also returns the upright full-resolution size, which JPEG draft decoding would hide.
    """
    fmt = _format_of(data)
    with _malformed_is_invalid(fmt.ext):
        # Only the plugin of the sniffed format may parse the bytes: no second guess by
        # another, less exercised plugin.
        im: Image.Image = Image.open(io.BytesIO(data), formats=[fmt.pil_format])
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImage("image has no pixels")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; limit {max_pixels}"
            )
        # An animated GIF/WebP or multi-page TIFF opens on its first frame, which stands for
        # it. (Not n_frames: counting frames walks the whole file, a cost an attacker sets.)
        if draft_to and im.format == "JPEG":
            # JPEG DCT scaling decodes at 1/2..1/8 size several times faster; keep at least
            # 2x the model input so the final resize still antialiases from more pixels.
            im.draft("RGB", (draft_to, draft_to))
        im.load()
        loaded = im.size
        # In place: without an orientation to undo, the default returns a full copy of the
        # decode (0.1-0.3 of the 8 ms a 1600x1200 upload's decode takes).
        ImageOps.exif_transpose(im, in_place=True)
        # EXIF orientations 5-8 turn the picture by 90 degrees: width and height swap.
        # (HEIC arrives already turned by libheif, with its orientation reset to 1.)
        turned = im.size != loaded
        return _to_rgb(im), (height, width) if turned else (width, height)


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


# Beyond this aspect ratio the source is first cut to its centre: a 40000x1 strip is within
# max_pixels, but scaling its short side up to `resize` would ask for billions of pixels.
_MAX_ASPECT = 16


def resize_crop(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Shorter side to spec.resize (bilinear, antialiased), then a centre crop of spec.crop."""
    return _crop(_resize_short(im, spec), spec)


def _resize_short(im: Image.Image, spec: PreprocessSpec) -> Image.Image:
    w, h = im.size
    short = min(w, h)
    if max(w, h) > _MAX_ASPECT * short:
        # The final crop lies inside this centre window (crop <= resize), with room to spare
        # for the resize filter, so the pixels that reach the model do not change.
        cw, ch = min(w, _MAX_ASPECT * short), min(h, _MAX_ASPECT * short)
        left, top = (w - cw) // 2, (h - ch) // 2
        im = im.crop((left, top, left + cw, top + ch))
        w, h = im.size
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.crop, round(w * scale)), max(spec.crop, round(h * scale))
    return im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)


def _crop(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    nw, nh = im.size
    left, top = (nw - spec.crop) // 2, (nh - spec.crop) // 2
    im = im.crop((left, top, left + spec.crop, top + spec.crop))
    return np.asarray(im, dtype=np.uint8)


def decode(
    data: bytes, spec: PreprocessSpec, max_pixels: int, thumbnail_size: int = 0
) -> DecodedImage:
    """The decoder stage: bytes to model-ready pixels (and the thumbnail, when asked for)."""
    draft = 2 * max(spec.resize, thumbnail_size)
    im, (width, height) = open_rgb(data, max_pixels, draft_to=draft)
    resized = _resize_short(im, spec)
    thumb = b""
    if thumbnail_size:
        # The model's resize already holds the whole picture, scaled down, when it cut nothing
        # and is at least the thumbnail's size. Shrinking that instead of the decode makes the
        # thumbnail a quarter of its cost (7.7 -> 2.0 ms at 1600x1200: Pillow's Lanczos pass
        # over the decode was the Decoder's largest step). Otherwise (small or very long
        # pictures) the thumbnail starts from the decode, as thumbnail_jpeg's does.
        whole = max(im.size) <= _MAX_ASPECT * min(im.size)  # _resize_short cut nothing
        shrunk = min(im.size) >= spec.resize and max(resized.size) >= thumbnail_size
        source = resized if whole and shrunk else im
        thumb = _thumbnail(source.copy(), thumbnail_size)
    return DecodedImage(_crop(resized, spec), width, height, thumb, thumbnail_size)


def image_facts(data: bytes, max_pixels: int, thumbnail_size: int) -> ImageFacts:
    """The size and the thumbnail only, for content whose vector exists: no model input."""
    im, (width, height) = open_rgb(data, max_pixels, draft_to=2 * thumbnail_size)
    return ImageFacts(width, height, _thumbnail(im, thumbnail_size), thumbnail_size)


def thumbnail_jpeg(data: bytes, size: int, max_pixels: int) -> bytes:
    return image_facts(data, max_pixels, size).thumbnail


def _thumbnail(im: Image.Image, size: int) -> bytes:
    _shrink_to_thumbnail(im, size)
    return _thumbnail_jpeg_bytes(im)


def _shrink_to_thumbnail(im: Image.Image, size: int) -> None:
    """A thumbnail's resize, in place (bench.decoding times it as a step of its own)."""
    im.thumbnail((size, size), Image.Resampling.LANCZOS)


def _thumbnail_jpeg_bytes(im: Image.Image) -> bytes:
    """A thumbnail's stored encoding (bench.decoding times it as a step of its own)."""
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=82, optimize=True)
    return out.getvalue()
