"""The model cache: built once, reused, rebuilt when damaged, one builder among many processes."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from image_search.embedding.model_cache import cached, is_complete, manifest_of
from image_search.errors import ModelUnavailable

PAYLOAD = b"graph bytes " * 10_000


class Builder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, out: Path) -> None:
        self.calls += 1
        out.write_bytes(PAYLOAD)


def test_built_once_then_reused(tmp_path: Path) -> None:
    build, path = Builder(), tmp_path / "m" / "model.onnx"
    assert cached(path, build, {"model": "x"}) == path
    assert cached(path, build, {"model": "x"}) == path
    assert build.calls == 1 and path.read_bytes() == PAYLOAD
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a service user, not only ours
    manifest = json.loads(manifest_of(path).read_text())
    assert manifest["model"] == "x" and len(manifest["sha256"]) == 64
    # Nothing but the file, its manifest and the lock: no temporary file left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "model.onnx", "model.onnx.json", "model.onnx.lock"
    ]  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "same size, other bytes", "no manifest"])
def test_a_damaged_file_is_built_again(tmp_path: Path, damage: str) -> None:
    build, path = Builder(), tmp_path / "model.onnx"
    cached(path, build, {})
    if damage == "truncated":
        path.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
    elif damage == "same size, other bytes":
        path.write_bytes(PAYLOAD[::-1])
    else:
        manifest_of(path).unlink()
    assert not is_complete(path)
    cached(path, build, {})
    assert build.calls == 2 and path.read_bytes() == PAYLOAD and is_complete(path)


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"

    def broken(out: Path) -> None:
        out.write_bytes(PAYLOAD[:100])
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        cached(path, broken, {})
    assert not path.exists() and not manifest_of(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx.lock"]
    build = Builder()
    cached(path, build, {})
    assert build.calls == 1 and is_complete(path)


def _slow_build(out: Path) -> None:
    with (out.parent / "builds.log").open("a") as log:
        log.write("built\n")
    time.sleep(0.5)  # long enough for every other process to find the lock taken
    out.write_bytes(PAYLOAD)


def _load(path: str) -> None:
    assert cached(Path(path), _slow_build, {}).read_bytes() == PAYLOAD


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_load, args=(str(path),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert (tmp_path / "builds.log").read_text() == "built\n"


def test_an_unwritable_cache_says_what_to_do(tmp_path: Path) -> None:
    # A folder that cannot be created, even by root: its parent is a file.
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(ModelUnavailable, match="ISE__MODEL__CACHE_DIR"):
        cached(tmp_path / "models" / "onnx" / "model.onnx", Builder(), {})
