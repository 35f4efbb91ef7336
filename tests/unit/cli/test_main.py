"""The command line wires the same job entry points as `python -m pipelines.<job>`."""

from __future__ import annotations


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
