"""What one hop between Serve replicas costs, next to the work it carries.

A hop is a DeploymentHandle call from one replica to another on the same node: the payload is
serialised, goes through the object store when large, and is read on the other side. Measured
for an empty call and for the payloads the graph moves (an upload's bytes, the model's
pixels, a thumbnail), beside decoding the same photos: a hop is worth removing only when it
costs a fair share of the work around it.
    python -m bench.hops [--calls 60]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import numpy as np

from bench.photos import real_photos, to_jpeg

logger = logging.getLogger("bench.hops")


def _payloads() -> dict[str, Any]:
    from PIL import Image

    photo = real_photos()["astronaut"]
    big = np.asarray(Image.fromarray(photo).resize((4000, 3000)))
    mid = np.asarray(Image.fromarray(photo).resize((1600, 1200)))
    return {
        "empty call": b"",
        "thumbnail (256 px JPEG)": to_jpeg(np.asarray(Image.fromarray(photo).resize((256, 256)))),
        "model pixels (224x224x3 uint8)": np.zeros((224, 224, 3), np.uint8),
        "1600x1200 JPEG bytes": to_jpeg(mid),
        "4000x3000 JPEG bytes": to_jpeg(big),
    }


def _decode_ms(data: bytes, calls: int) -> float:
    from image_search.embedding import model_card
    from image_search.imaging import decode

    spec = model_card("efficientnet-lite0").spec
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        decode(data, spec, 10**8, thumbnail_size=256)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ray import serve

    from deployments.cluster import init_local_ray
    from deployments.replica_port import listen_on_node_address

    # Each listens where the service's replicas listen (deployments/replica_port.py).
    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Sink:
        def __init__(self) -> None:
            listen_on_node_address()

        def take(self, payload: Any) -> int:
            return len(payload)

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Caller:
        """Calls Sink from inside a replica, as the Ingress calls the other deployments."""

        def __init__(self, sink: Any) -> None:
            listen_on_node_address()
            self.sink = sink

        async def time_calls(self, payload: Any, calls: int) -> list[float]:
            out = []
            for _ in range(calls):
                t = time.perf_counter()
                await self.sink.take.remote(payload)
                out.append(time.perf_counter() - t)
            return out

    payloads = _payloads()
    init_local_ray(namespace="bench-hops")
    try:
        handle = serve.run(Caller.bind(Sink.bind()), name="hops", route_prefix=None)
        rows = []
        for name, payload in payloads.items():
            size = payload.nbytes if isinstance(payload, np.ndarray) else len(payload)
            handle.time_calls.remote(payload, 5).result()  # warm-up
            times = handle.time_calls.remote(payload, args.calls).result()
            rows.append((name, size, 1000 * statistics.median(times)))
        decodes = {
            "1600x1200": _decode_ms(payloads["1600x1200 JPEG bytes"], 10),
            "4000x3000": _decode_ms(payloads["4000x3000 JPEG bytes"], 5),
        }
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    _report(rows, decodes, args.calls)
    return 0


def _report(rows: list[tuple[str, int, float]], decodes: dict[str, float], calls: int) -> None:
    lines = [f"one hop, replica -> replica on one node (median of {calls} calls)", ""]
    lines.append(f"{'payload':<34}{'bytes':>12}{'ms/hop':>10}")
    for name, size, ms in rows:
        lines.append(f"{name:<34}{size:>12,}{ms:>10.2f}")
    lines.append("")
    for photo, ms in decodes.items():
        lines.append(f"decode + thumbnail of a {photo} JPEG (one thread): {ms:.1f} ms")
    logger.info("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
