"""Limits and overload on the real graph: streamed body limits, 503 + Retry-After, health."""

from __future__ import annotations

import io
import logging
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.photos import real_photos
from tests.conftest import AppFactory

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)
MIB = 1024 * 1024


def chunked_upload(url: str, total_mib: int) -> tuple[int, int]:
    """POST a chunked multipart body of `total_mib` MiB; returns (status, MiB sent).

    Sending stops as soon as the server answers, which is the point: it must answer before
    the body ends. A raw socket, because HTTP clients send the whole body before reading.
    """
    parts = urlsplit(url)
    boundary = "b0undary"
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff\xd8\xff"
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sent = 0
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"%x\r\n%s\r\n" % (MIB, b"\x00" * MIB)
        deadline = time.monotonic() + 60
        while sent < total_mib and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                break
            if writable:
                try:
                    sock.sendall(chunk)
                except OSError:  # the server answered and closed: read its answer
                    break
                sent += 1
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), sent


def test_a_chunked_upload_is_refused_long_before_its_end(app_url: str) -> None:
    status, sent = chunked_upload(app_url + "/meta/image/file", total_mib=64)
    assert status == 413
    # 20 MiB is the limit; socket buffers between us and the app hold a few MiB more.
    assert sent < 48, f"{sent} MiB were accepted before the 413"
    assert httpx.get(app_url + "/healthz", timeout=10).status_code == 200


def photo_variant(base: np.ndarray, seed: int) -> bytes:
    """A distinct JPEG per seed: a shifted crop of a real photo with its own noise."""
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, 40, 2)
    crop = base[y : y + 300, x : x + 400].astype(np.int16) + rng.integers(-6, 7, (300, 400, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_overload_answers_503_with_retry_after_and_health_never_waits(
    make_app: AppFactory,
) -> None:
    url = make_app(
        "overload",
        overrides={"limits.max_inflight": 2, "limits.max_waiting": 4, "limits.queue_timeout_s": 20},
    )
    base = real_photos()["astronaut"]
    uploads = {f"u{i}": photo_variant(base, i) for i in range(48)}
    health_s: list[float] = []
    stop = time.monotonic() + 120

    def upload(name: str) -> httpx.Response:
        files = {"file": (f"{name}.jpg", uploads[name])}
        return httpx.post(url + "/meta/image/file", files=files, data={"meta_uuid": name},
                          timeout=120)  # fmt: skip

    def probe() -> None:
        while len(health_s) < 40 and time.monotonic() < stop:
            t = time.monotonic()
            assert httpx.get(url + "/healthz", timeout=30).status_code == 200
            health_s.append(time.monotonic() - t)
            time.sleep(0.1)

    with ThreadPoolExecutor(max_workers=25) as pool:
        prober = pool.submit(probe)
        answers = dict(zip(uploads, pool.map(upload, uploads), strict=True))
        prober.result()
    codes = [r.status_code for r in answers.values()]
    refused = [n for n, r in answers.items() if r.status_code == 503]
    logger.warning(
        "overload: %d uploads from 24 clients: %d x 200, %d x 503, others %s; /healthz max %.3f s",
        len(codes), codes.count(200), len(refused), sorted(set(codes) - {200, 503}),
        max(health_s),
    )  # fmt: skip
    assert set(codes) <= {200, 503} and refused, codes
    for name in refused:
        assert answers[name].headers["retry-after"] == "2"
        assert answers[name].json()["succeed"] is False
    assert max(health_s) < 2.0, health_s
    for name in refused:  # the client's retry succeeds once the burst is over
        assert upload(name).status_code == 200
    count = httpx.get(url + "/meta/image/count", timeout=30).json()
    assert count["image_count"] == count["vector_count"] == len(uploads)
    make_app.delete("overload")
