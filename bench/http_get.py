"""A lean HTTP/1.1 GET client for closed-loop load: one keep-alive connection per client.

The load generator shares the 2 cores with the service it measures. httpx spent 1.4-2 ms of
CPU per search by stored image (bench/cpu.py, 16 clients), a sixth of the whole request's
CPU: time taken from the service that a client on another machine would not take. This
client writes the request line itself and reads the answer with asyncio streams: a fraction
of that (the figure is in each search_scale run's CPU line, "load generator").

It speaks only what our service answers: HTTP/1.1 with Content-Length, or chunked, or a body
closed by the server. A connection the server closed while idle is opened again once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def _headers(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line!r}")
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the end
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")


class Connection:
    """One client's connection to `base_url` (http:// only), opened on first use."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"an http:// URL is needed, got {base_url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> Response:
        reused = self._streams is not None
        try:
            return await asyncio.wait_for(self._read(path), self.timeout_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.close()
            if not reused:
                raise
        except BaseException:
            await self.close()  # mid-answer: what is left on it belongs to nobody
            raise
        # A kept-alive connection the server had closed meanwhile: a GET may be sent again.
        try:
            return await asyncio.wait_for(self._read(path), self.timeout_s)
        except BaseException:
            await self.close()
            raise

    async def _read(self, path: str) -> Response:
        try:
            return await self._get(path)
        except (asyncio.LimitOverrunError, ValueError) as exc:
            # headers past the stream's 64 KiB limit, or a length or chunk size not a number
            raise ProtocolError(str(exc)) from exc

    async def _get(self, path: str) -> Response:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, fields = _headers(head[:-4])
        if fields.get("transfer-encoding", "").lower() == "chunked":
            body = await _chunked(reader)
        elif "content-length" in fields:
            body = await reader.readexactly(int(fields["content-length"]))
        else:  # the body ends where the server closes the connection
            body = await reader.read()
            await self.close()
            return Response(status, body)
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, body)

    async def close(self) -> None:
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):  # already gone: nothing to close
                await writer.wait_closed()
