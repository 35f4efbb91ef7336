"""deployments.replica_port: the all-interfaces address becomes the node's; others pass as given."""

from __future__ import annotations

from typing import Any

from ray.serve._private import replica

from deployments.replica_port import listen_on_node_address, on_node_address


def recorder() -> tuple[list[str], Any]:
    asked: list[str] = []

    def add_port(server: Any, address: str) -> int:
        asked.append(address)
        return 4242

    return asked, add_port


def test_all_interfaces_becomes_the_node_address() -> None:
    asked, add_port = recorder()
    assert on_node_address(add_port, "127.0.0.1")(object(), "[::]:0") == 4242
    assert on_node_address(add_port, "10.0.0.2")(object(), "[::]:9000") == 4242
    assert on_node_address(add_port, "fd00::2")(object(), "[::]:0") == 4242
    assert asked == ["127.0.0.1:0", "10.0.0.2:9000", "[fd00::2]:0"]


def test_a_specific_address_is_left_alone() -> None:
    asked, add_port = recorder()
    on_node_address(add_port, "127.0.0.1")(object(), "192.168.1.5:7000")
    on_node_address(add_port, "127.0.0.1")(object(), "[::1]:7000")
    assert asked == ["192.168.1.5:7000", "[::1]:7000"]


def test_outside_ray_nothing_is_patched() -> None:
    before = replica.add_port_to_grpc_server
    listen_on_node_address()
    assert replica.add_port_to_grpc_server is before
