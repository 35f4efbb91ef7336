"""`image-search index|search`: the service's HTTP API from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from image_search.imaging import SUPPORTED_EXTENSIONS

logger = logging.getLogger("image_search")
DEFAULT_URL = os.environ.get("ISE_URL", "http://127.0.0.1:8000")


def iter_images(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower().lstrip(".") in SUPPORTED_EXTENSIONS:
                    yield f
        elif p.is_file():
            yield p
        else:
            logger.warning("skipping %s: not a file or folder", p)


def cmd_index(args: argparse.Namespace) -> int:
    """Upload through the batch route, showing a progress bar; report every failure."""
    from tqdm import tqdm

    files = list(iter_images(args.paths))
    counts = {"indexed": 0, "duplicate": 0, "rejected": 0}
    with (
        httpx.Client(base_url=args.url, timeout=300) as client,
        tqdm(total=len(files), unit="img", desc="indexing") as bar,
    ):
        for start in range(0, len(files), args.batch):
            chunk = files[start : start + args.batch]
            parts = [("file", (f.name, f.read_bytes())) for f in chunk]
            resp = client.post("/meta/image/files", files=parts)
            if resp.status_code != 200:
                logger.error("batch failed (%d): %s", resp.status_code, resp.text[:300])
                counts["rejected"] += len(chunk)
            else:
                for f, item in zip(chunk, resp.json()["data"], strict=True):
                    outcome = _outcome(item)
                    counts[outcome] += 1
                    if outcome == "rejected":
                        tqdm.write(f"rejected {f}: {item['message']}", file=sys.stderr)
            bar.update(len(chunk))
            bar.set_postfix(counts)
    logger.info("done: %s", counts)
    return 0 if counts["rejected"] == 0 else 1


def _outcome(item: dict[str, Any]) -> str:
    if item["succeed"]:
        return "indexed"
    return "duplicate" if item["status"] == 409 else "rejected"


def cmd_search(args: argparse.Namespace) -> int:
    data = Path(args.image).read_bytes()
    form: dict[str, Any] = {"limit": str(args.limit)}
    if args.threshold is not None:
        form["threshold"] = str(args.threshold)
    if args.tag:
        form["tags"] = list(args.tag)  # repeated: hits carry every one of them
    if args.mode:
        form["mode"] = args.mode
    with httpx.Client(base_url=args.url, timeout=120) as client:
        resp = client.post("/sample/file", files={"file": (Path(args.image).name, data)}, data=form)
    body = resp.json()
    if not body.get("succeed"):
        logger.error("search failed (%d): %s", resp.status_code, body.get("message"))
        return 1
    out = sys.stdout
    out.write(f"{'rank':>4}  {'distance':>8}  {'score':>6}  {'meta_uuid':<36}  file_name\n")
    for rank, hit in enumerate(body["data"], 1):
        out.write(
            f"{rank:>4}  {hit['distance']:8.4f}  {hit['score']:6.2f}  "
            f"{hit['meta_uuid']:<36}  {hit['file_name']}\n"
        )
    return 0
