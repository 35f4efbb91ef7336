"""Serve's replica-to-replica gRPC server listens on the node's own address, not on every one.

Ray 2.60 starts that server in every replica on "[::]:0": all interfaces, whatever address the
node was given (`_on_initialized` in ray/serve/_private/replica.py). The rest of Ray listens on
the node's address, 127.0.0.1 for `image-search serve`. The server takes pickled requests
without a credential unless Ray's token auth is on, so on a laptop it would face every network
the laptop joins. Serve's own clients dial node_ip:port (request_router/replica_wrapper.py), so
the node's address is all they need, on one machine or many.

Each deployment calls `listen_on_node_address()` in its constructor: Serve runs the constructor
first and starts that server after it, in the same process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)
ANY_ADDRESS = "[::]"
_MARK = "_ise_node_address"


def on_node_address(add_port: Callable[[Any, str], int], node_ip: str) -> Callable[[Any, str], int]:
    """`add_port` (server, "host:port") -> port, with an all-interfaces host made `node_ip`."""

    def add_port_on_node(server: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        if host == ANY_ADDRESS:
            address = f"[{node_ip}]:{port}" if ":" in node_ip else f"{node_ip}:{port}"
        return add_port(server, address)

    setattr(add_port_on_node, _MARK, node_ip)
    return add_port_on_node


def listen_on_node_address() -> None:
    """Make this replica's inter-deployment server listen on the node's address. Idempotent."""
    import ray
    from ray.serve._private import replica

    if not ray.is_initialized():  # constructed outside Ray (unit tests): no server to narrow
        return
    current = getattr(replica, "add_port_to_grpc_server", None)
    if current is None:
        # A Ray whose replica no longer binds this way: nothing to narrow; say so.
        logger.warning("ray.serve._private.replica.add_port_to_grpc_server not found: the "
                       "replica's gRPC server keeps Ray's own listening address")  # fmt: skip
        return
    if getattr(current, _MARK, None) is not None:
        return
    node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    replica.add_port_to_grpc_server = on_node_address(current, node_ip)  # type: ignore[attr-defined]
