"""`ray start` for a second node on this machine, kept on 127.0.0.1 like the first.

Run as `python -m tests.multinode.ray_start start --address ... --node-ip-address=127.0.0.1`.
The tests pin Ray to loopback with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (see LOCAL_RAY_ENV):
with it on, Ray replaces 127.0.0.1 by the address it probes (this machine's network address)
for the node and its GCS. With it off, `ray start` refuses to add a node to a cluster, a guard
meant for laptops. This process alone lifts that guard and answers every address question it
asks with 127.0.0.1; the raylet and agents it starts inherit the pinned environment. On real
machines plain `ray start --address` is all it takes (docs/multinode.md).
"""

from __future__ import annotations

import sys

from ray._private import ray_constants, services
from ray.scripts.scripts import main


def _loopback(address: str | None = None) -> str:
    return "127.0.0.1"


if __name__ == "__main__":
    ray_constants.ENABLE_RAY_CLUSTER = True
    services.get_node_ip_address = _loopback
    sys.argv[0] = "ray"
    sys.exit(main())  # type: ignore[no-untyped-call]
