"""Who listens where, read from the kernel's socket tables (/proc/net/tcp{,6}) and each
process's open files, not from what Ray or the service report."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def socket_inodes(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    out: set[str] = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:[") : -1])
    return out


def address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6}'s local address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int) -> list[tuple[str, int]]:
    """Where process `pid` listens: (address, port) each."""
    inodes = socket_inodes(pid)
    return [where for inode, where in listeners().items() if inode in inodes]


def is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def listeners() -> dict[str, tuple[str, int]]:
    """Every listening socket of this machine: inode -> (address, port)."""
    found = {}
    for table in TABLES:
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN:
                host, port = local.split(":")
                found[inode] = (str(address(host)), int(port, 16))
    return found


def listener_pids(port: int, pids: set[int]) -> set[int]:
    """Which of `pids` hold a socket listening on `port`."""
    inodes = {inode for inode, (_, p) in listeners().items() if p == port}
    out = set()
    for pid in pids:
        try:
            if socket_inodes(pid) & inodes:
                out.add(pid)
        except OSError:  # gone meanwhile
            continue
    return out
