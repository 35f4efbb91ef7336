"""The admission middleware on raw ASGI: streamed limits, slow bodies, the gate, light routes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from deployments.admission import FORM_OVERHEAD, SMALL_BODY, AdmissionMiddleware, budget_for
from deployments.cluster import LOCAL_RAY_ENV
from image_search.config import LimitSettings

CHUNK = 16 * 1024


class BodyReader:
    """An app that reads the whole body, as a form parser does, then answers 200."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client went away")  # as Starlette's ClientDisconnect
            if not message.get("more_body", False):
                break
        if scope["path"] != "/healthz":  # a heavy request: it holds its slot until released
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


def request(method: str, path: str, length: int | None = None) -> Scope:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers}


async def call(app: Any, scope: Scope, receive: Receive) -> tuple[int, dict[str, str], Any]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body) if body != b"done" else body


def chunks(n: int, pulled: list[int]) -> Receive:
    async def receive() -> Message:
        pulled.append(1)
        more = len(pulled) < n
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": more}

    return receive


def test_a_chunked_body_is_cut_off_at_the_limit_not_read_to_the_end() -> None:
    limits = LimitSettings(max_upload_bytes=1024)
    app = AdmissionMiddleware(BodyReader(), limits)
    pulled: list[int] = []
    status, _, body = asyncio.run(
        call(app, request("POST", "/meta/image/file"), chunks(400, pulled))
    )
    assert status == 413 and body["succeed"] is False and "at most" in body["message"]
    # The budget is one upload plus the form's overhead: 1024 + 64 KiB, so five 16 KiB chunks.
    assert len(pulled) == (1024 + FORM_OVERHEAD) // CHUNK + 1 < 400


def test_a_declared_length_over_the_budget_is_refused_before_reading() -> None:
    app = AdmissionMiddleware(BodyReader(), LimitSettings(max_upload_bytes=1024))
    pulled: list[int] = []
    scope = request("POST", "/sample/file", length=10**9)
    status, _, _ = asyncio.run(call(app, scope, chunks(3, pulled)))
    assert status == 413 and pulled == []


def test_each_route_has_its_own_budget() -> None:
    limits = LimitSettings(max_upload_bytes=1024, max_batch_bytes=10**6)
    assert budget_for("POST", "/meta/image/files", limits).max_body == 10**6
    assert budget_for("POST", "/meta/image/file", limits).max_body == 1024 + FORM_OVERHEAD
    # Routes without uploads take no upload-sized bodies at all.
    assert budget_for("DELETE", "/meta/image/images", limits).max_body == 64 * 1024
    assert not budget_for("GET", "/healthz", limits).heavy
    assert budget_for("GET", "/meta/image/x/thumbnail", limits).heavy


def test_a_client_that_stops_sending_is_cut_off_with_408() -> None:
    app = AdmissionMiddleware(BodyReader(), LimitSettings(body_idle_timeout_s=0.2))
    sent_one = False

    async def trickle() -> Message:
        nonlocal sent_one
        if sent_one:
            await asyncio.sleep(60)
        sent_one = True
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def run() -> tuple[int, dict[str, str], Any]:
        return await asyncio.wait_for(call(app, request("POST", "/meta/image/file"), trickle), 5)

    status, _, body = asyncio.run(run())
    assert status == 408 and "no request body bytes" in body["message"]


def test_a_full_gate_answers_503_at_once_and_light_routes_still_answer() -> None:
    limits = LimitSettings(max_inflight=1, max_waiting=1, queue_timeout_s=30, retry_after_s=7)
    inner = BodyReader()
    inner.release.clear()  # heavy requests hold their slot until released
    app = AdmissionMiddleware(inner, limits)

    def one_chunk() -> Receive:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        return receive

    async def run() -> list[Any]:
        first = asyncio.create_task(call(app, request("POST", "/sample/file"), one_chunk()))
        second = asyncio.create_task(call(app, request("POST", "/sample/file"), one_chunk()))
        await asyncio.sleep(0.05)
        third = await asyncio.wait_for(
            call(app, request("POST", "/meta/image/file"), one_chunk()), 1
        )
        # While one heavy request runs and one waits, /healthz passes no gate.
        light = await asyncio.wait_for(call(app, request("GET", "/healthz"), one_chunk()), 1)
        assert app.gate.waiting == 1
        inner.release.set()
        return [third, light, await first, await second]

    third, light, first, second = asyncio.run(run())
    assert third[0] == 503 and third[1]["retry-after"] == "7" and "capacity" in third[2]["message"]
    assert light[0] == first[0] == second[0] == 200


def test_a_wait_longer_than_the_queue_timeout_is_503() -> None:
    limits = LimitSettings(max_inflight=1, max_waiting=4, queue_timeout_s=0.2)
    inner = BodyReader()
    inner.release.clear()
    app = AdmissionMiddleware(inner, limits)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> tuple[Any, Any]:
        first = asyncio.create_task(call(app, request("GET", "/files/meta/image/x"), receive))
        await asyncio.sleep(0.05)
        waited = await call(app, request("GET", "/sample/meta/x"), receive)
        inner.release.set()
        return waited, await first

    waited, first = asyncio.run(run())
    assert waited[0] == 503 and "waited" in waited[2]["message"] and first[0] == 200


def test_serve_proxy_gets_the_body_limits_from_the_cluster_environment() -> None:
    import importlib

    module, _, name = LOCAL_RAY_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].rpartition(".")
    middlewares = getattr(importlib.import_module(module), name)()
    (only,) = middlewares
    assert only.cls is AdmissionMiddleware and only.kwargs["gated"] is False
    # The proxy sees every app's full path: routes under a prefix get their own budget.
    limits = only.kwargs["limits"]
    assert budget_for("POST", "/myapp/meta/image/file", limits).max_body > SMALL_BODY
    assert budget_for("POST", "/myapp/meta/image/count", limits).max_body == SMALL_BODY


def test_the_proxy_callback_imports_no_store_client() -> None:
    """pymilvus reconfigures logging when imported, closing the proxy's own log handlers (the
    proxy then never reports ready); torch and the rest would only weigh on the proxy."""
    import subprocess
    import sys

    code = (
        "import sys, deployments.admission as a; a.proxy_middlewares(); "
        "print(sorted(m for m in ('pymilvus', 'torch', 'sqlalchemy', 'minio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
