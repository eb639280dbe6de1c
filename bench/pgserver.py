"""A throwaway PostgreSQL server for one benchmark: initdb, start, stop, remove.

Stock settings (``initdb`` defaults: autovacuum on, fsync on, 128 MB of
shared buffers) unless told otherwise.  As root, initdb and the server run
as the ``postgres`` user (initdb refuses root), as tests/conftest.py does.
The server can run inside a network namespace (``netns``) and listen on the
addresses given; its Unix socket, in the scratch directory, reaches it from
any namespace.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayServer:
    def __init__(
        self,
        *,
        listen: str = "127.0.0.1",
        port: int | None = None,
        settings: dict[str, str] | None = None,
        hba: list[str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.listen = listen
        self.port = port or free_port()
        self.settings = settings or {}
        self.hba = hba or []
        self.netns = netns
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="pgtq-bench-pg-", dir="/var/tmp"))
        self.datadir = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.started = False

    def _run(self, argv: list[str], netns: bool = False) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.netns] if netns and self.netns else []
        if self.user is not None:
            # runuser keeps the namespace of the process that runs it.
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(
            prefix + argv,
            cwd="/",
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> ThrowawayServer:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        out = self._run(
            [
                str(bindir() / "initdb"),
                "-D",
                str(self.datadir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
        settings = {
            "listen_addresses": f"'{self.listen}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            **self.settings,
        }
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# flask_pgtq bench\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        if self.hba:
            with open(self.datadir / "pg_hba.conf", "a", encoding="utf-8") as conf:
                conf.writelines(line + "\n" for line in self.hba)
        out = self._run(
            [
                str(bindir() / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "start",
            ],
            netns=True,
        )
        if out.returncode != 0:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {out.stdout}{out.stderr}{log[-2000:]}")
        self.started = True
        return self

    def dsn(self, dbname: str = "postgres", host: str | None = None) -> str:
        """A libpq DSN over TCP to *host* (default: the listen address)."""
        return f"dbname={dbname} user=postgres host={host or self.listen} port={self.port}"

    def socket_dsn(self, dbname: str = "postgres") -> str:
        """Over the Unix socket: works from any network namespace."""
        return f"dbname={dbname} user=postgres host={self.dir} port={self.port}"

    def admin(self) -> Any:
        conn = psycopg2.connect(self.socket_dsn())
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> None:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def facts(self) -> dict[str, Any]:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum',"
                    " 'autovacuum_naptime', 'autovacuum_vacuum_scale_factor', 'fsync',"
                    " 'synchronous_commit', 'shared_buffers', 'max_connections',"
                    " 'listen_addresses')"
                )
                facts = dict(cur.fetchall())
                cur.execute("SELECT version()")
                facts["version"] = cur.fetchone()[0]
                return facts
        finally:
            conn.close()

    def postmaster_pid(self) -> int:
        """The pid of the running server's postmaster."""
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if self.started:
            self._run(
                [str(bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
            )
            self.started = False
        # A server that would not stop: find it by its pid file, kill it.
        pidfile = self.datadir / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(Exception):
                os.kill(int(pidfile.read_text().split()[0]), 9)
                time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)
