"""The S3 test server's recording, read back even where moto's threads shared a line."""

from __future__ import annotations

import json

from tests.servers.s3 import recorded_requests


def test_records_that_share_a_line_are_read_apart_and_in_order() -> None:
    a, b, c = ({"method": m, "path": f"/{i}", "body": "x\n{}"} for i, m in enumerate("PGD"))
    # Thread 1 writes a, thread 2 writes b, then both newlines: a and b on one line.
    text = json.dumps(a) + json.dumps(b) + "\n\n" + json.dumps(c) + "\n"
    assert recorded_requests(text) == [a, b, c]
    assert recorded_requests("") == [] and recorded_requests("\n \n") == []
