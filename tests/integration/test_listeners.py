"""Nothing the service starts listens beyond loopback on a local cluster.

Serve's replicas start a gRPC server for each other's calls, on all interfaces by Ray's own
choice; deployments.replica_port narrows it to the node's address. Read from the kernel's
socket tables, not from what Ray reports.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from ray.util.state import list_actors

from tests.sockets import address, is_loopback, listening

pytestmark = pytest.mark.integration
SERVE_ACTORS = ("ServeReplica:", "ProxyActor", "ServeController")


def test_address_decoding() -> None:
    assert address("0100007F") == ipaddress.IPv4Address("127.0.0.1")
    assert address("00000000") == ipaddress.IPv4Address("0.0.0.0")
    assert address("00000000000000000000000001000000") == ipaddress.IPv6Address("::1")
    assert address("0000000000000000FFFF00000100007F") == ipaddress.IPv6Address("::ffff:127.0.0.1")
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("::")


def test_serve_listens_on_loopback_only(app_url: str) -> None:
    assert httpx.get(f"{app_url}/readyz", timeout=60).status_code == 200
    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
              if a.class_name.startswith(SERVE_ACTORS)]  # fmt: skip
    replicas = [a for a in actors if a.class_name.startswith("ServeReplica:")]
    assert {a.class_name.rsplit(":", 1)[1] for a in replicas} >= {
        "Ingress", "Decoder", "Embedder", "Indexer"
    }  # fmt: skip
    seen: dict[str, list[tuple[str, int]]] = {}
    for actor in actors:
        seen[f"{actor.class_name} pid {actor.pid}"] = listening(actor.pid)
    # Each replica runs the inter-deployment server, so each listens somewhere: the check
    # below is not vacuous.
    assert all(seen[f"{a.class_name} pid {a.pid}"] for a in replicas), seen
    wide = {who: [a for a in addrs if not is_loopback(a[0])] for who, addrs in seen.items()}
    assert not any(wide.values()), wide
