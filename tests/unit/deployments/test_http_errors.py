"""EnvelopeErrors, the catch-all in plain ASGI: an error before the answer starts becomes the
envelope; one after it has started cannot be answered again and goes on up."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from deployments.http_errors import EnvelopeErrors


def drive(app: EnvelopeErrors, scope_type: str = "http") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app({"type": scope_type, "method": "GET", "path": "/"}, receive, send))
    return sent


async def fails_at_once(_scope: Scope, _receive: Receive, _send: Send) -> None:
    raise KeyError("bug")


async def fails_midway(_scope: Scope, _receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise KeyError("bug")


def test_an_error_before_the_answer_is_a_500_in_the_envelope() -> None:
    sent = drive(EnvelopeErrors(fails_at_once))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 500
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body == {"succeed": False, "message": "internal error: KeyError"}


def test_an_error_after_the_answer_started_goes_on_up() -> None:
    with pytest.raises(KeyError):
        drive(EnvelopeErrors(fails_midway))


def test_other_scopes_pass_through_untouched() -> None:
    with pytest.raises(KeyError):
        drive(EnvelopeErrors(fails_at_once), "lifespan")
