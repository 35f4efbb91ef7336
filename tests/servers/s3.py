"""S3 for the tests: moto's server, recorded and replayed so that it survives a restart."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx

from deployments.cluster import free_port
from tests.servers.process import VENV_BIN, ManagedServer

S3_BUCKET = "ise-images"
logger = logging.getLogger(__name__)
# Requests that change the server's state; moto's recorder keeps every request, reads too.
MUTATING = {"PUT", "POST", "DELETE"}


def recorded_requests(text: str) -> list[dict[str, Any]]:
    """The records of moto's recording, in order. Its threads write a record and its newline
    in two writes, so two records can share a line (one then both newlines): read them one
    JSON value at a time, not one line at a time."""
    decoder = json.JSONDecoder()
    records: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return records
        record, pos = decoder.raw_decode(text, pos)
        records.append(record)


def _body_size(record: dict[str, Any]) -> int:
    body = record.get("body") or ""
    return len(base64.b64decode(body)) if record.get("body_encoded") else len(body.encode())


def _declared_length(record: dict[str, Any]) -> int | None:
    for name, value in record.get("headers", {}).items():
        if name.lower() == "content-length":
            return int(value)
    return None


def replayable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of a recording that changed the server: its complete writes.

    Reads change nothing, and replaying a whole session's reads (every GET of every image)
    once took over 120 s in CI. A write whose body is shorter than its Content-Length is a
    client that died mid-send (the node-loss test kills a raylet with uploads under way):
    moto records the headers with the bytes it got, the server answered 400 and stored
    nothing, and a replay of the record waits for bytes that never come (a CI run hung on one
    for 900 s).
    """
    return [r for r in records if r.get("method") in MUTATING
            and _declared_length(r) in (None, _body_size(r))]  # fmt: skip


class MotoS3(ManagedServer):
    """moto's S3 server. It keeps state in memory only, so every request is recorded (moto's
    recorder) and replayed after a restart: a restart then behaves like a server with a disk."""

    name = "s3"
    access_key = "ise-test-access"
    secret_key = "ise-test-secret-0123456789"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.recording = workdir / "recording.jsonl"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        return [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)], env

    def _ready(self) -> bool:
        return httpx.get(f"http://{self.endpoint}/moto-api/data.json", timeout=1).status_code == 200

    def _after_start(self) -> None:
        if self.recording.exists() and self.recording.stat().st_size:
            self._keep_replayable()
            # One request per recorded write, replayed by the server to itself: 10 s for a
            # whole suite's 2,300 writes here; the bound leaves a loaded machine 30 times that.
            r = httpx.post(f"http://{self.endpoint}/moto-api/recorder/replay-recording",
                           timeout=300)  # fmt: skip
            r.raise_for_status()

    def _keep_replayable(self) -> None:
        records = recorded_requests(self.recording.read_text())
        kept = replayable(records)
        self.recording.write_text("".join(json.dumps(r) + "\n" for r in kept))
        logger.info("s3 recording: %d requests, %d writes replayed", len(records), len(kept))

    def client(self) -> Any:
        from minio import Minio

        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False,
                     region="us-east-1")  # fmt: skip
