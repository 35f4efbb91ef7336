"""fetch_weights: local paths, file:// and http:// URLs, sha256 checks, the download cache."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image_search.embedding.weights import fetch_weights, sha256_file
from image_search.errors import ModelUnavailable

PAYLOAD = b"not really a checkpoint, but bytes are bytes " * 50_000  # ~2.3 MB: several chunks
GOOD = hashlib.sha256(PAYLOAD).hexdigest()
BAD = "0" * 64


class _Server:
    """A stdlib HTTP server on 127.0.0.1 that serves a folder and records the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        self.delay_s = 0.0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if server.delay_s:
                    time.sleep(server.delay_s)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the timeout test hangs up on purpose; no traceback on stderr

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.pth").write_bytes(PAYLOAD)
    server = _Server(root)
    yield server, tmp_path / "cache"
    server.close()


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    path = tmp_path / "some dir" / "w.pth"  # a space, so file:// URLs need percent-decoding
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_local_path_with_and_without_sha(local_file: Path, tmp_path: Path) -> None:
    assert fetch_weights(str(local_file), None, str(tmp_path / "c")) == local_file
    assert fetch_weights(str(local_file), GOOD.upper(), str(tmp_path / "c")) == local_file
    assert not (tmp_path / "c").exists()  # local files are used in place, never copied


def test_file_url(local_file: Path, tmp_path: Path) -> None:
    url = local_file.as_uri()
    assert "%20" in url
    assert fetch_weights(url, GOOD, str(tmp_path / "c")) == local_file


def test_local_wrong_sha_fails_and_keeps_the_file(local_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not match") as err:
        fetch_weights(str(local_file), BAD, str(tmp_path))
    assert str(local_file) in err.value.message
    assert local_file.read_bytes() == PAYLOAD


@pytest.mark.parametrize("source", ["{tmp}/missing.pth", "file://{tmp}/missing.pth"])
def test_missing_file(source: str, tmp_path: Path) -> None:
    src = source.format(tmp=tmp_path)
    with pytest.raises(ModelUnavailable) as err:
        fetch_weights(src, None, str(tmp_path))
    assert src in err.value.message
    assert "ISE__MODEL__WEIGHTS" in err.value.message and "model.weights" in err.value.message


@pytest.mark.parametrize("source", [None, ""])
def test_no_source(source: str | None, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="ISE__MODEL__WEIGHTS"):
        fetch_weights(source, None, str(tmp_path))


def test_bad_sha_format_and_scheme(local_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="64 hex"):
        fetch_weights(str(local_file), "abc", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="unsupported scheme"):
        fetch_weights("ftp://example.invalid/w.pth", None, str(tmp_path))


def test_http_downloads_once_then_reuses(served: tuple[_Server, Path]) -> None:
    server, cache = served
    url = server.url + "/w.pth"
    path = fetch_weights(url, GOOD, str(cache))
    assert path == cache / "w.pth"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/w.pth"]
    assert fetch_weights(url, GOOD, str(cache)) == path
    assert fetch_weights(url, None, str(cache)) == path
    assert server.requests == ["/w.pth"]  # the cache answered; no second request
    assert sorted(p.name for p in cache.iterdir()) == ["w.pth"]  # no temporary files left


def test_http_wrong_sha_leaves_nothing_in_cache(served: tuple[_Server, Path]) -> None:
    server, cache = served
    url = server.url + "/w.pth"
    with pytest.raises(ModelUnavailable, match="does not match") as err:
        fetch_weights(url, BAD, str(cache))
    assert url in err.value.message and "ISE__MODEL__WEIGHTS_SHA256" in err.value.message
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(served: tuple[_Server, Path]) -> None:
    server, cache = served
    cache.mkdir()
    (cache / "w.pth").write_bytes(PAYLOAD[:1000])  # e.g. truncated by an older tool
    path = fetch_weights(server.url + "/w.pth", GOOD, str(cache))
    assert sha256_file(path) == GOOD
    assert server.requests == ["/w.pth"]


def test_cached_file_that_stays_wrong_fails(served: tuple[_Server, Path]) -> None:
    server, cache = served
    cache.mkdir()
    (cache / "w.pth").write_bytes(b"old")
    with pytest.raises(ModelUnavailable, match="does not match"):
        fetch_weights(server.url + "/w.pth", BAD, str(cache))
    assert server.requests == ["/w.pth"]  # refetched exactly once
    assert list(cache.iterdir()) == []


def test_http_404(served: tuple[_Server, Path]) -> None:
    server, cache = served
    url = server.url + "/nope.pth"
    with pytest.raises(ModelUnavailable, match="download failed") as err:
        fetch_weights(url, None, str(cache))
    assert url in err.value.message and "ISE__MODEL__WEIGHTS" in err.value.message
    assert list(cache.iterdir()) == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bind and close: a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelUnavailable, match="download failed"):
        fetch_weights(f"http://127.0.0.1:{port}/w.pth", None, str(tmp_path))


def test_timeout(served: tuple[_Server, Path]) -> None:
    server, cache = served
    server.delay_s = 0.5
    with pytest.raises(ModelUnavailable, match="download failed"):
        fetch_weights(server.url + "/w.pth", None, str(cache), timeout_s=0.1)
    assert list(cache.iterdir()) == []
