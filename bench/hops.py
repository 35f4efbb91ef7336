"""What one hop between Serve replicas costs, next to the work it carries.

A hop is a DeploymentHandle call from one replica to another on the same node: the payload is
serialised, goes through the object store when large, and is read on the other side. Measured
for an empty call and for the payloads the graph moves (an upload's bytes, the model's
pixels, a thumbnail), beside decoding the same photos: a hop is worth removing only when it
costs a fair share of the work around it. Then the CPU a call costs the two processes, sent
alone (8 under way at once) and eight in one call through the replica's `many`, as the Ingress
sends them under load (deployments/hops.py): the baseline and the batched way in one run.
    python -m bench.hops [--calls 60] [--cpu-calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

import numpy as np

from bench.photos import real_photos, to_jpeg

logger = logging.getLogger("bench.hops")
# The payloads of the Ingress's batched calls, for the CPU figures.
CPU_PAYLOADS = ("empty call", "model pixels (224x224x3 uint8)", "1600x1200 JPEG bytes")


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
    parser.add_argument("--cpu-calls", type=int, default=400, help="calls per CPU figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ray import serve

    from deployments.cluster import init_local_ray
    from deployments.hops import Call, run_many
    from deployments.replica_port import listen_on_node_address

    # Each listens where the service's replicas listen (deployments/replica_port.py).
    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Sink:
        def __init__(self) -> None:
            listen_on_node_address()

        async def take(self, payload: Any) -> int:
            return len(payload)

        async def many(self, calls: list[Call]) -> list[Any]:
            return await run_many(self, ("take",), calls)

        def cpu(self) -> float:
            return time.process_time()

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

        async def cpu_per_call(self, payload: Any, calls: int, batch: int) -> tuple[float, float]:
            """ms of CPU a call, (this process, Sink's), for `calls` calls: alone, 8 under
            way at once, or `batch` to a call of Sink.many, 2 under way (hops.LANES)."""
            lanes = asyncio.Semaphore(8 if batch == 1 else 2)

            async def send() -> None:
                async with lanes:
                    if batch == 1:
                        await self.sink.take.remote(payload)
                    else:
                        await self.sink.many.remote([("take", (payload,))] * batch)

            mine, theirs = time.process_time(), await self.sink.cpu.remote()
            await asyncio.gather(*(send() for _ in range(calls // batch)))
            mine, theirs = time.process_time() - mine, await self.sink.cpu.remote() - theirs
            return 1000 * mine / calls, 1000 * theirs / calls

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
        cpu_rows = []
        for name in CPU_PAYLOADS:
            handle.cpu_per_call.remote(payloads[name], 80, 1).result()  # warm-up
            alone = handle.cpu_per_call.remote(payloads[name], args.cpu_calls, 1).result()
            eights = handle.cpu_per_call.remote(payloads[name], args.cpu_calls, 8).result()
            cpu_rows.append((name, alone, eights))
        decodes = {
            "1600x1200": _decode_ms(payloads["1600x1200 JPEG bytes"], 10),
            "4000x3000": _decode_ms(payloads["4000x3000 JPEG bytes"], 5),
        }
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    _report(rows, decodes, args.calls)
    _report_cpu(cpu_rows, args.cpu_calls)
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


def _report_cpu(rows: list[tuple[str, tuple[float, float], tuple[float, float]]],
                calls: int) -> None:  # fmt: skip
    lines = [f"CPU a call costs, caller + callee, ms ({calls} calls each)", ""]
    lines.append(f"{'payload':<34}{'alone':>16}{'8 in one call':>18}{'ratio':>8}")
    for name, alone, eights in rows:
        a, e = sum(alone), sum(eights)
        lines.append(f"{name:<34}{a:>7.2f} ({alone[0]:.2f}+{alone[1]:.2f})"
                     f"{e:>9.2f} ({eights[0]:.2f}+{eights[1]:.2f}){e / a:>7.2f}x")  # fmt: skip
    logger.info("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
