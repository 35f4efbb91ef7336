"""Fuzzing the decoder: a malformed file gets a 4xx domain error, never another exception.

Real files of every supported format (small crops of scikit-image's sample photos, several
codings of each) are mutated the way broken uploads and hostile files are: bit flips,
truncation, inserted and deleted bytes, boundary values over header fields, spliced chunks.
Every mutant goes through each function that reads untrusted bytes. Seeds are fixed, so a
failure names a mutant that reproduces; the whole file runs in seconds.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data as samples

from image_search.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from image_search.imaging import PreprocessSpec, content_info, decode, thumbnail_jpeg

SPEC = PreprocessSpec(resize=64, crop=56)
# Small, so that a corrupted header asking for a large picture is refused (413) before any
# allocation, and the loop stays fast; the real limit is checked the same way.
MAX_PIXELS = 250_000
THUMB = 32
MUTANTS_PER_FILE = 1000
DOMAIN_ERRORS = (InvalidImage, UnsupportedImage, ImageTooLarge)
# PIL warns about the corrupt metadata these files are full of; that is expected here (and
# test_escalated_pil_warnings_are_domain_errors_too checks the warnings as errors).
# (A mark, not a module pytestmark: pytest lets the module's filter override a test's own.)
expected_warnings = pytest.mark.filterwarnings("ignore::UserWarning")


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@cache
def corpus() -> dict[str, bytes]:
    """One small real file per format and coding the decoder has to handle."""
    astronaut = Image.fromarray(samples.astronaut()).resize((48, 40), Image.Resampling.LANCZOS)
    coffee = Image.fromarray(samples.coffee()).resize((40, 48), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: every file with EXIF also exercises the transpose
    exif[0x010F] = "fuzz"
    ex = exif.tobytes()
    files = {
        "jpeg": encode(astronaut, "JPEG", quality=80, exif=ex),
        "jpeg-progressive": encode(coffee, "JPEG", progressive=True, quality=70),
        "jpeg-cmyk": encode(coffee.convert("CMYK"), "JPEG"),
        "png": encode(astronaut, "PNG", exif=ex),
        "png-palette-transparent": encode(astronaut.convert("P"), "PNG", transparency=3),
        "png-rgba": encode(astronaut.convert("RGBA"), "PNG"),
        "png-16bit": encode(astronaut.convert("L").convert("I;16"), "PNG"),
        "png-animated": encode(astronaut, "PNG", save_all=True, append_images=[astronaut]),
        "gif": encode(astronaut, "GIF"),
        "gif-animated": encode(
            astronaut, "GIF", save_all=True, append_images=[coffee.resize((48, 40))], loop=0
        ),
        "bmp": encode(astronaut, "BMP"),
        "bmp-palette": encode(astronaut.convert("P"), "BMP"),
        "webp": encode(astronaut, "WEBP", quality=70),
        "webp-lossless": encode(astronaut.convert("RGBA"), "WEBP", lossless=True, exif=ex),
        "webp-animated": encode(astronaut, "WEBP", save_all=True, append_images=[astronaut]),
        "heic": encode(astronaut, "HEIF", quality=60, exif=ex),
        "avif": encode(astronaut, "AVIF", quality=60, exif=ex),
        "tiff-group4": encode(astronaut.convert("1"), "TIFF", compression="group4"),
        "tiff-cmyk": encode(coffee.convert("CMYK"), "TIFF"),
        "tiff-16bit": encode(coffee.convert("L").convert("I;16"), "TIFF"),
        "tiff-multipage": encode(coffee, "TIFF", save_all=True, append_images=[coffee]),
    }
    for compression in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):
        files[f"tiff-{compression}"] = encode(astronaut, "TIFF", compression=compression, exif=ex)
    return files


# Values that break length, offset and dimension fields: zero, one, all ones, sign bits.
BOUNDARY_VALUES = (b"\x00", b"\x01", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00",
                   b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                   b"\x00\x00\x00\x00", b"\x00\x01\x00\x00")  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    op = rng.randrange(6)
    if op == 0:  # bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation: the commonest broken upload
        del out[rng.randrange(1, len(out)) :]
    elif op == 2:  # inserted bytes shift every offset after them
        i = rng.randrange(len(out))
        out[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 3:  # deleted bytes
        i = rng.randrange(len(out))
        del out[i : i + rng.randint(1, 64)]
    elif op == 4:  # a header field (sizes, counts, offsets) set to a boundary value
        value = rng.choice(BOUNDARY_VALUES)
        i = rng.randrange(min(len(out), 160))
        out[i : i + len(value)] = value
    else:  # a chunk of the file copied over another place: plausible but inconsistent
        n = rng.randint(4, 64)
        src, dst = rng.randrange(len(out)), rng.randrange(len(out))
        out[dst : dst + n] = out[src : src + n]
    return bytes(out) or data[:1]


def check_decode(data: bytes) -> None:
    out = decode(data, SPEC, MAX_PIXELS)
    assert out.pixels.shape == (SPEC.crop, SPEC.crop, 3) and out.pixels.dtype == np.uint8
    assert 0 < out.width * out.height <= MAX_PIXELS


def check_thumbnail(data: bytes) -> None:
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(data, THUMB, MAX_PIXELS)))
    assert thumb.format == "JPEG" and 0 < max(thumb.size) <= THUMB


CHECKS: tuple[Callable[[bytes], object], ...] = (content_info, check_decode, check_thumbnail)


def run_checks(data: bytes) -> tuple[list[str], bool]:
    """What each untrusted-bytes function did wrong with `data`, and whether it decoded."""
    problems, decoded = [], False
    for check in CHECKS:
        try:
            check(data)
        except DOMAIN_ERRORS as exc:
            assert 400 <= exc.status < 500 and exc.message
        except Exception as exc:
            problems.append(f"{check.__name__}: {type(exc).__name__}: {exc}"[:300])
        else:
            decoded = decoded or check is check_decode
    return problems, decoded


def outcome_problems(data: bytes) -> list[str]:
    return run_checks(data)[0]


@expected_warnings
@pytest.mark.parametrize("name", sorted(corpus()))
def test_the_unmutated_file_decodes(name: str) -> None:
    # The mutants start from real pictures, each of which decodes cleanly.
    assert run_checks(corpus()[name]) == ([], True)


@expected_warnings
@pytest.mark.parametrize("name", sorted(corpus()))
def test_mutants_decode_or_get_a_domain_error(name: str) -> None:
    rng = random.Random(f"imaging-fuzz/{name}")  # str seeds are stable across runs
    seed = corpus()[name]
    failures, decoded = [], 0
    for i in range(MUTANTS_PER_FILE):
        mutant = mutate(rng, seed)
        problems, ok = run_checks(mutant)
        failures += [f"mutant {i} ({len(mutant)} bytes): {p}" for p in problems]
        decoded += ok
    assert failures == [], f"{len(failures)} escaped:\n" + "\n".join(failures[:20])
    # The mutants reach past the sniffer: some are still pictures, the rest broken ones.
    assert 0 < decoded < MUTANTS_PER_FILE


# Each supported magic followed by anything: the sniffer passes it on, the plugin must cope.
MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM", b"II*\x00",
          b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x00\x18ftypheic",
          b"\x00\x00\x00\x18ftypavif", b"\x00\x00\x00\x18ftypmif1")  # fmt: skip
FUZZ_SETTINGS = settings(
    max_examples=300,
    derandomize=True,  # the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@expected_warnings
@FUZZ_SETTINGS
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=256))
def test_any_bytes_after_a_supported_magic(magic: bytes, tail: bytes) -> None:
    assert outcome_problems(magic + tail) == []


@expected_warnings
@FUZZ_SETTINGS
@given(
    name=st.sampled_from(sorted(corpus())),
    edits=st.lists(
        st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=4,
    ),
    keep=st.floats(0.05, 1.0),
)
def test_overwritten_and_truncated_real_files(
    name: str, edits: list[tuple[int, bytes]], keep: float
) -> None:
    data = bytearray(corpus()[name])
    for pos, value in edits:
        # Most edits land in the first kilobyte, where the header fields are.
        at = pos % min(len(data), 1024) if pos % 2 else pos % len(data)
        data[at : at + len(value)] = value
    data = data[: max(1, int(len(data) * keep))]
    assert outcome_problems(bytes(data)) == []


@pytest.mark.filterwarnings("error::UserWarning")
def test_escalated_pil_warnings_are_domain_errors_too() -> None:
    """A process run with -W error turns PIL's corrupt-metadata warnings into exceptions."""
    rng = random.Random("imaging-fuzz/warnings-as-errors")
    escalated = 0
    for _ in range(300):
        mutant = mutate(rng, corpus()["tiff-tiff_lzw"])
        try:
            decode(mutant, SPEC, MAX_PIXELS)
        except DOMAIN_ERRORS as exc:  # anything else fails the test
            escalated += "UserWarning" in exc.message
    assert escalated > 0
