"""The command line wires the same job entry points as `python -m pipelines.<job>`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest


def test_image_search_cli_wraps_the_same_commands() -> None:
    from cli.main import build_parser
    from pipelines import backfill, reconcile, reembed

    parser = build_parser()
    args = parser.parse_args(["backfill", "--source", "/x", "--batch-size", "4"])
    assert args.func is backfill.command and args.batch_size == 4
    args = parser.parse_args(["reconcile", "--fix", "--grace", "0"])
    assert args.func is reconcile.command and args.fix and args.grace == 0
    args = parser.parse_args(["reembed", "--model", "efficientnet-lite0", "--precision", "bf16"])
    assert args.func is reembed.command and args.switch_app is None
    assert (args.runtime, args.precision) == ("auto", "bf16")
    args = parser.parse_args(["reembed", "--regions"])  # --model: the one in service
    assert args.regions and args.model is None
    args = parser.parse_args(["search", "q.jpg", "--mode", "regions"])
    assert args.mode == "regions"


def test_search_sends_each_tag_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import client
    from cli.main import build_parser

    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"succeed": True, "message": "ok", "data": []})

    real = httpx.Client
    monkeypatch.setattr(
        client.httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(answer), **kw)
    )
    (tmp_path / "q.jpg").write_bytes(b"\xff\xd8\xff")
    args = build_parser().parse_args(["search", str(tmp_path / "q.jpg"), "--tag", "red",
                                      "--tag", "shoe"])  # fmt: skip
    assert args.func(args) == 0
    body = sent[0].read()
    assert body.count(b'name="tags"') == 2 and b"red" in body and b"shoe" in body
    assert "rank" in capsys.readouterr().out
