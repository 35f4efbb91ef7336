"""Image bytes in a local directory (embedded default); the S3/MinIO store lives in s3.py."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from image_search.errors import NotFound, StoreUnavailable


class LocalObjectStore:
    """file://DIR: one file per key. Writes are atomic (temp file + rename)."""

    name = "objects"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # Keys come from hashes, but never let one escape the root.
        if self.root.resolve() not in path.parents:
            raise ValueError(f"object key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreUnavailable(f"object store unavailable: {exc}", "objects") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"object {key!r} not found") from exc
        except OSError as exc:
            raise StoreUnavailable(f"object store unavailable: {exc}", "objects") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str = "") -> Iterator[str]:
        # Streamed from the directory as the system lists it, in no order: sorting would hold
        # a folder's names, a million of them in a library's flat meta/image/. Only the folder
        # the prefix names is walked.
        folder, _, start = prefix.rpartition("/")
        base = self._path(folder) if folder else self.root
        yield from _walk(base, f"{folder}/" if folder else "", start)

    def presigned_url(self, key: str) -> str | None:
        return None

    def age_seconds(self, key: str) -> float | None:
        try:
            return time.time() - self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise StoreUnavailable(f"object directory {self.root} is not writable", "objects")


def _walk(path: Path, key_prefix: str, start: str) -> Iterator[str]:
    """Keys under `path` whose name there begins with `start`, depth first."""
    try:
        with os.scandir(path) as it:
            for entry in it:
                if not entry.name.startswith(start):
                    continue
                # Links to folders are not followed (a loop would never end, an alias would
                # list its keys twice); links to files are keys, as for a read.
                if entry.is_dir(follow_symlinks=False):
                    yield from _walk(Path(entry.path), f"{key_prefix}{entry.name}/", "")
                elif entry.is_file() and not entry.name.startswith(".tmp-"):
                    yield key_prefix + entry.name
    except (FileNotFoundError, NotADirectoryError):
        return
