"""The S3 test server's recording: read back even where moto's threads shared a line, and replayed
without the requests that changed nothing."""

from __future__ import annotations

import json
from typing import Any

from tests.servers.s3 import recorded_requests, replayable


def test_records_that_share_a_line_are_read_apart_and_in_order() -> None:
    a, b, c = ({"method": m, "path": f"/{i}", "body": "x\n{}"} for i, m in enumerate("PGD"))
    # Thread 1 writes a, thread 2 writes b, then both newlines: a and b on one line.
    text = json.dumps(a) + json.dumps(b) + "\n\n" + json.dumps(c) + "\n"
    assert recorded_requests(text) == [a, b, c]
    assert recorded_requests("") == [] and recorded_requests("\n \n") == []


def test_replay_keeps_the_complete_writes_only() -> None:
    def record(
        method: str, declared: str | None, body: str, encoded: bool = False
    ) -> dict[str, Any]:
        headers = {"Host": "s3"} | ({"content-length": declared} if declared else {})
        return {"method": method, "url": "/b/k", "headers": headers, "body": body,
                "body_encoded": encoded}  # fmt: skip

    complete = record("PUT", "3", "YWJj", encoded=True)  # b"abc"
    chunked = record("PUT", None, "abc")
    empty = record("DELETE", "0", "")
    cut_short = record("PUT", "48441", "")  # the client died after its headers
    read = record("GET", "0", "")
    assert replayable([complete, read, cut_short, chunked, empty]) == [complete, chunked, empty]
