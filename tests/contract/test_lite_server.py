"""The embedded Milvus Lite server outlives the process that started it, and stops on request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from image_search.stores.lite_server import ensure_lite_server, port_open, stop_lite_server
from tests.conftest import free_port


def test_server_survives_its_starter_and_is_shared(tmp_path: Path) -> None:
    data, port = tmp_path / "vectors.db", free_port()
    starter = (
        "import sys; from image_search.stores.lite_server import ensure_lite_server;"
        "ensure_lite_server(sys.argv[1], int(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", starter, str(data), str(port)], check=True, timeout=60)
    try:
        # The starter (like a replica that scaled down) is gone; the server is not.
        assert port_open(port)
        state = (tmp_path / ".vectors.db.server.json").read_text()
        assert ensure_lite_server(data, port) == f"http://127.0.0.1:{port}"
        assert (tmp_path / ".vectors.db.server.json").read_text() == state  # reused, not restarted
    finally:
        assert stop_lite_server(data)
    assert not port_open(port)
    assert not stop_lite_server(data)  # idempotent


def test_a_foreign_process_on_the_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    import pytest

    from image_search.errors import ConfigError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ConfigError, match="lite_port"):
            ensure_lite_server(tmp_path / "v.db", sock.getsockname()[1])
