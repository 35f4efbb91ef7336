"""bench.http_get, the load generator's lean GET client, against a scripted loopback server:
each way an HTTP/1.1 body can end, keep-alive, a connection the server closed while idle,
and answers it must refuse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bench import http_get
from bench.search_scale import GetOutcome, drive_get

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve(handler: Handler, client: Callable[[str], Awaitable[T]]) -> T:
    """Run `client(url)` against a loopback server whose connections `handler` answers."""

    async def main() -> T:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await client(f"http://127.0.0.1:{port}")
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


async def read_request(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    return head.decode().split(" ")[1]  # the path


def keep_alive(answers: Callable[[str], bytes], served: list[int]) -> Handler:
    """Answer every request on a connection until the client closes it; count connections."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        try:
            while True:
                path = await read_request(reader)
                writer.write(answers(path))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


def with_length(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def test_keeps_one_connection_for_many_gets_and_reads_each_body_by_its_length() -> None:
    served: list[int] = []

    async def client(url: str) -> list[http_get.Response]:
        conn = http_get.Connection(url, timeout_s=5)
        try:
            return [await conn.get(f"/item/{i}") for i in range(5)]
        finally:
            await conn.close()

    got = serve(keep_alive(lambda path: with_length(path.encode()), served), client)
    assert got == [http_get.Response(200, f"/item/{i}".encode()) for i in range(5)]
    assert served == [1]


def test_reads_a_chunked_body_and_a_status_other_than_200() -> None:
    def answer(path: str) -> bytes:
        if path == "/missing":
            return with_length(b'{"code":404}', "404 Not Found")
        return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n")  # fmt: skip

    async def client(url: str) -> list[http_get.Response]:
        conn = http_get.Connection(url, timeout_s=5)
        try:
            return [await conn.get("/c"), await conn.get("/missing"), await conn.get("/c")]
        finally:
            await conn.close()

    got = serve(keep_alive(answer, []), client)
    assert got == [http_get.Response(200, b"hello, world"),
                   http_get.Response(404, b'{"code":404}'),
                   http_get.Response(200, b"hello, world")]  # fmt: skip


def test_a_body_ended_by_the_server_closing_and_then_a_new_connection() -> None:
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nno length")
        await writer.drain()
        writer.close()

    async def client(url: str) -> list[http_get.Response]:
        conn = http_get.Connection(url, timeout_s=5)
        return [await conn.get("/a"), await conn.get("/b")]

    assert serve(handle, client) == [http_get.Response(200, b"no length")] * 2
    assert served == [1, 1]


def test_a_kept_connection_closed_by_the_server_is_opened_again_once() -> None:
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One answer per connection, announced as kept alive: the client finds it closed
        # only when it sends the next request (a server's idle timeout).
        served.append(1)
        path = await read_request(reader)
        writer.write(with_length(path.encode()))
        await writer.drain()
        writer.close()

    async def client(url: str) -> list[http_get.Response]:
        conn = http_get.Connection(url, timeout_s=5)
        first = await conn.get("/1")
        await asyncio.sleep(0.05)  # the server's close arrives
        return [first, await conn.get("/2")]

    got = serve(handle, client)
    assert got == [http_get.Response(200, b"/1"), http_get.Response(200, b"/2")]
    assert served == [1, 1]


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-status", "bad-header", "headers-too-long", "bad-length", "bad-chunk"],
)
def test_an_answer_that_is_not_http_is_refused(answer: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async def client(url: str) -> object:
        conn = http_get.Connection(url, timeout_s=5)
        with pytest.raises(http_get.ProtocolError):
            await conn.get("/x")
        return conn._streams  # closed: nothing half-read is left for the next request

    assert serve(handle, client) is None


def test_a_server_that_never_answers_times_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Silent until the client hangs up; a sleep instead would be cancelled when the loop
        # ends, and asyncio logs that cancellation as an error in the test's output.
        await reader.read()

    async def client(url: str) -> None:
        conn = http_get.Connection(url, timeout_s=0.2)
        with pytest.raises(TimeoutError):
            await conn.get("/slow")
        assert conn._streams is None  # closed on the timeout: the handler sees it hang up

    serve(handle, client)


def test_drive_get_counts_each_status_and_keeps_the_bodies_asked_for() -> None:
    def answer(path: str) -> bytes:
        n = int(path.rsplit("/", 1)[1])
        return with_length(b'{"n": %d}' % n) if n % 3 else with_length(b"{}", "404 Not Found")

    async def client(url: str) -> GetOutcome:
        return await drive_get(url, [f"/q/{i}" for i in range(30)], 4, 30, keep_bodies=True)

    out = serve(keep_alive(answer, []), client)
    assert out.statuses == {"200": 20, "404": 10, "not sent": 0}
    assert out.bodies == {i: {"n": i} for i in range(30) if i % 3}
    assert len(out.latencies_s) == 20
    # Each 200's start, seconds into the run, beside its latency: both inside the run.
    assert len(out.started_s) == 20
    assert all(0 <= t < out.wall_s for t in out.started_s)
    assert all(t + lat <= out.wall_s for t, lat in zip(out.started_s, out.latencies_s, strict=True))


def test_a_url_other_than_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http://"):
        http_get.Connection("https://127.0.0.1:1", timeout_s=1)
