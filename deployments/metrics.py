"""Application metrics exported through Ray's Prometheus endpoint (next to Serve's own)."""

from __future__ import annotations

from functools import cache

from ray.util.metrics import Counter, Histogram


@cache
def _uploads() -> Counter:
    return Counter(
        "ise_uploads_total",
        description="Uploaded files by outcome (indexed, duplicate, rejected).",
        tag_keys=("outcome",),
    )


@cache
def _searches() -> Counter:
    return Counter("ise_searches_total", description="Searches served.", tag_keys=("kind",))


@cache
def _batch_size() -> Histogram:
    return Histogram(
        "ise_embed_batch_size",
        description="Images per embedding forward pass.",
        boundaries=[1, 2, 4, 8, 16, 32, 64],
    )


@cache
def _batch_seconds() -> Histogram:
    return Histogram(
        "ise_embed_batch_seconds",
        description="Seconds per embedding forward pass.",
        boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
    )


@cache
def _indexer_batch() -> Histogram:
    return Histogram(
        "ise_indexer_batch_size",
        description="Single uploads (call=index) or searches (call=search) per Indexer batch.",
        boundaries=[1, 2, 4, 8, 16],
        tag_keys=("call",),
    )


@cache
def _hop_batch() -> Histogram:
    return Histogram(
        "ise_hop_batch_size",
        description="The Ingress's calls per hop to a deployment (hop=decoder|embedder|indexer).",
        boundaries=[1, 2, 4, 8, 16],
        tag_keys=("hop",),
    )


def count_upload(outcome: str, n: int = 1) -> None:
    if n > 0:  # Ray's Counter refuses 0
        _uploads().inc(n, tags={"outcome": outcome})


def count_search(kind: str) -> None:
    _searches().inc(1, tags={"kind": kind})


def observe_batch(size: int, seconds: float) -> None:
    _batch_size().observe(size)
    _batch_seconds().observe(seconds)


def observe_indexer_batch(call: str, size: int) -> None:
    _indexer_batch().observe(size, tags={"call": call})


def observe_hop_batch(hop: str, size: int) -> None:
    _hop_batch().observe(size, tags={"hop": hop})


@cache
def _refused() -> Counter:
    return Counter(
        "ise_requests_refused_total",
        description="Requests refused before any work: overload (503), body too big or slow.",
        tag_keys=("reason",),
    )


def count_refused(reason: str) -> None:
    _refused().inc(1, tags={"reason": reason})
