"""Files built on first load and kept in model.cache_dir: one builder at a time, atomic, verified.

Embedder replicas and Ray Data actors often start together on one machine and all want the
same file. The first takes an exclusive lock and builds; the others wait on the lock and find
the file done. A build is written to a temporary name and renamed, and a manifest beside it
records the file's sha256, written last: a file without a matching manifest (a crash midway,
a truncated copy, bytes changed on disk) is built again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from image_search.embedding.weights import sha256_file
from image_search.errors import ModelUnavailable

logger = logging.getLogger(__name__)


def manifest_of(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def is_complete(path: Path) -> bool:
    """The file is there and its bytes are those its manifest recorded."""
    try:
        recorded = json.loads(manifest_of(path).read_text(encoding="utf-8"))["sha256"]
        return bool(sha256_file(path) == recorded)
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _locked(fh: IO[str]) -> Iterator[None]:
    # flock is released by the kernel when its holder dies, so a crashed builder never
    # blocks the next one.
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomically(dest: Path, write: Callable[[Path], None]) -> None:
    fd, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # mkstemp's 0600 would keep the file from processes of other users that load models
        # (a container image built as root and run as a service user, for one).
        tmp.chmod(0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def cached(path: Path, build: Callable[[Path], None], about: dict[str, Any]) -> Path:
    """`path`, built by build(out_path) unless a complete copy is already there.

    `about` (what the file was built from) goes into the manifest, for whoever reads the cache.
    """
    if is_complete(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock").open("a")
    except OSError as exc:
        # A read-only cache (a container image's) must have been filled when it was built.
        raise ModelUnavailable(
            f"model cache: {path.name} is not built and {path.parent} is not writable ({exc}); "
            "point model.cache_dir (ISE__MODEL__CACHE_DIR) at a writable folder, or load the "
            "model once where it is writable (e.g. while building the image)"
        ) from exc
    with _locked(lock):
        if is_complete(path):  # another process built it while this one waited
            return path
        if path.exists():
            logger.warning("model cache: %s has no matching manifest; building it again", path)
        logger.info("model cache: building %s", path.name)
        started = time.monotonic()
        _write_atomically(path, build)
        built_s = round(time.monotonic() - started, 1)
        manifest = {"sha256": sha256_file(path), "built_s": built_s, **about}

        def write_manifest(tmp: Path) -> None:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")

        _write_atomically(manifest_of(path), write_manifest)
        logger.info("model cache: built %s in %.1f s", path, built_s)
    return path
