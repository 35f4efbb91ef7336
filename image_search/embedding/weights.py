"""Model weights from a local path, file:// or http(s):// URL: cached, sha256-checked, atomic."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from image_search.errors import ModelUnavailable

logger = logging.getLogger(__name__)

CONFIG_HINT = "set model.weights in config.yaml or ISE__MODEL__WEIGHTS"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fetch_weights(
    source: str | None,
    sha256: str | None,
    cache_dir: str | Path,
    timeout_s: float = 60.0,
) -> Path:
    """Return a local file holding the weights named by `source`, verified when sha256 is set.

    Every failure raises ModelUnavailable naming the source and the setting to fix.
    """
    if not source:
        raise ModelUnavailable(f"no model weights configured: {CONFIG_HINT}")
    expected = _normalise_sha256(sha256)
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_url(source, expected, Path(cache_dir), timeout_s)
    if scheme == "file":
        # Same convention as stores.objects_uri: file:///abs/path or file://./relative/path.
        rest = source[len("file://") :]
        rest = rest.removeprefix("localhost")
        return _local(Path(urllib.parse.unquote(rest)), source, expected)
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive, i.e. a path
        raise ModelUnavailable(
            f"model weights {source!r}: unsupported scheme {scheme!r} "
            f"(use a path, file://, http:// or https://); {CONFIG_HINT}"
        )
    return _local(Path(source).expanduser(), source, expected)


def sha256_file(path: Path) -> str:
    """Streaming hash: checkpoints are hundreds of MB, never read them whole."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None or not sha256.strip():
        return None
    value = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(value):
        raise ModelUnavailable(
            f"model weights sha256 {sha256!r} is not 64 hex digits: "
            "fix model.weights_sha256 in config.yaml or ISE__MODEL__WEIGHTS_SHA256"
        )
    return value


def _local(path: Path, source: str, expected: str | None) -> Path:
    if not path.is_file():
        raise ModelUnavailable(
            f"model weights {source!r}: no such file {str(path)!r}; {CONFIG_HINT}"
        )
    if expected is not None:
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ModelUnavailable(f"model weights {source!r}: cannot read: {exc}") from exc
        if actual != expected:
            # A local file is the operator's own: replacing it is not ours to do.
            raise ModelUnavailable(
                f"model weights {source!r}: sha256 {actual} does not match the configured "
                f"{expected}; fix the file or model.weights_sha256 (ISE__MODEL__WEIGHTS_SHA256)"
            )
    return path


def _cache_name(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name or name in (".", ".."):
        # No usable basename (e.g. http://host/): still give every URL a stable file of its own.
        name = "weights-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return name


def _fetch_url(url: str, expected: str | None, cache_dir: Path, timeout_s: float) -> Path:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelUnavailable(
            f"model weights {url!r}: cannot create cache_dir {str(cache_dir)!r}: {exc}; "
            "set model.cache_dir (ISE__MODEL__CACHE_DIR) to a writable directory"
        ) from exc
    dest = cache_dir / _cache_name(url)
    if dest.is_file():
        if expected is None:
            logger.info("model weights: reusing cached %s for %s (no sha256 configured)", dest, url)
            return dest
        if sha256_file(dest) == expected:
            logger.info("model weights: reusing cached %s (sha256 ok)", dest)
            return dest
        # Stale or truncated by an older run, or another URL with the same basename: refetch once.
        logger.warning("model weights: cached %s fails its sha256; downloading again", dest)
        dest.unlink(missing_ok=True)
    _download(url, dest, expected, timeout_s)
    return dest


def _download(url: str, dest: Path, expected: str | None, timeout_s: float) -> None:
    """Stream into a temporary file beside dest, hash on the way, rename only when verified.

    The rename is atomic, so concurrent replicas never see a half-written checkpoint.
    """
    logger.info("model weights: downloading %s to %s", url, dest)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise ModelUnavailable(f"model weights {url!r}: cannot write to cache: {exc}") from exc
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if length is not None and length.isdigit() and int(length) != size:
            raise ModelUnavailable(
                f"model weights {url!r}: download truncated ({size} of {length} bytes); "
                f"retry, or {CONFIG_HINT} to a local copy"
            )
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise ModelUnavailable(
                f"model weights {url!r}: downloaded sha256 {actual} does not match the "
                f"configured {expected}; fix model.weights_sha256 (ISE__MODEL__WEIGHTS_SHA256) "
                f"or {CONFIG_HINT}"
            )
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError/HTTPError/timeouts are OSErrors; IncompleteRead is an HTTPException.
        raise ModelUnavailable(
            f"model weights {url!r}: download failed: {exc}; check the network, or "
            f"{CONFIG_HINT} to a local path"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("model weights: saved %s (%d bytes, sha256 %s)", dest, size, actual)
