"""The ten edits of the near-duplicate evaluation (test and bench share them)."""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

Edit = Callable[[Image.Image], bytes]


def _save(im: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def crop(im: Image.Image) -> bytes:
    w, h = im.size
    return _save(im.crop((int(w * 0.08), int(h * 0.1), int(w * 0.9), int(h * 0.92))))


def recompress(im: Image.Image) -> bytes:
    return _save(im, quality=25)


def exif_rotated(im: Image.Image) -> bytes:
    # Pixels stored rotated, with the EXIF tag (6 = rotate 90 CW to view) that makes them upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(im.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def grayscale(im: Image.Image) -> bytes:
    return _save(im.convert("L"))


def cmyk(im: Image.Image) -> bytes:
    return _save(im.convert("CMYK"))


def png_alpha(im: Image.Image) -> bytes:
    rgba = im.convert("RGBA")
    alpha = Image.new("L", im.size, 255)
    w, h = im.size
    alpha.paste(0, (0, 0, w // 12, h))  # a transparent strip down the left edge
    rgba.putalpha(alpha)
    return _save(rgba, "PNG")


def letterbox(im: Image.Image) -> bytes:
    side = max(im.size)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return _save(canvas)


def downscaled(im: Image.Image) -> bytes:
    return _save(im.resize((im.width // 3, im.height // 3), Image.Resampling.BILINEAR))


def brighter(im: Image.Image) -> bytes:
    return _save(ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.9))


def blurred_border(im: Image.Image) -> bytes:
    return _save(ImageOps.expand(im.filter(ImageFilter.GaussianBlur(1.5)), border=12, fill="white"))


EDITS: dict[str, Edit] = {
    f.__name__: f
    for f in (
        crop,
        recompress,
        exif_rotated,
        grayscale,
        cmyk,
        png_alpha,
        letterbox,
        downscaled,
        brighter,
        blurred_border,
    )
}
