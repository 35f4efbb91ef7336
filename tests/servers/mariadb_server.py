"""MariaDB for the tests: Debian's mariadbd on its own data dir and a free port."""

from __future__ import annotations

import getpass
import secrets
import subprocess
from pathlib import Path
from typing import Any

from deployments.cluster import free_port
from tests.servers.process import ManagedServer

METADATA_DB = "ise"


class MariaDB(ManagedServer):
    """Debian's mariadbd with its own data dir, a unix socket for root and TCP for the app."""

    name = "mariadb"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.datadir = workdir / "data"
        self.socket = workdir / "s.sock"
        self.port = free_port()
        self.user = "ise"
        self.password = secrets.token_hex(12)
        self._installed = False

    def _install(self) -> None:
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
             f"--user={getpass.getuser()}", "--auth-root-authentication-method=normal",
             "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self._installed = True

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if not self._installed:
            self._install()
        return [
            "mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", "--bind-address=127.0.0.1", f"--user={getpass.getuser()}",
            "--skip-log-bin", f"--pid-file={self.workdir / 'mariadb.pid'}",
            "--innodb-buffer-pool-size=32M", "--performance-schema=OFF",
        ], {}  # fmt: skip

    def _root(self) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=2,
                               autocommit=True)  # fmt: skip

    def _ready(self) -> bool:
        with self._root() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True

    def _after_start(self) -> None:
        # The app connects over TCP with a password, as it would to MySQL in production.
        self.sql(f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' "
                 f"IDENTIFIED BY '{self.password}'")  # fmt: skip
        self.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'")
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{METADATA_DB}`")

    def sql(self, statement: str, db: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as root over the socket (for setup and for checks in tests)."""
        with self._root() as conn, conn.cursor() as cur:
            if db:
                conn.select_db(db)
            cur.execute(statement)
            return list(cur.fetchall())

    def uri(self, db: str = METADATA_DB) -> str:
        return (f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"
                "?charset=utf8mb4")  # fmt: skip

    def create_database(self, db: str) -> str:
        self.sql(f"CREATE DATABASE `{db}`")
        return self.uri(db)
