"""Fixtures: a PostgreSQL server per session, a fresh database per test.

By default the session starts a throwaway server from the installed
PostgreSQL binaries (``initdb``/``pg_ctl`` on ``PATH``, else the newest
``/usr/lib/postgresql/*/bin``) in a temporary directory, and stops it at the
end.  As root it runs the server as the ``postgres`` user, since ``initdb``
refuses to run as root.

Set ``PGTQ_TEST_DSN`` to a superuser libpq connection string to use an
existing server instead.  That server cannot be restarted by the tests, so
:meth:`PgServer.restart` and friends raise there.  Concurrent test runs
against one shared server are not supported: each run drops the databases it
left behind last time.

The schema is migrated once, into the database ``pgtq_template``; every test
gets a copy of it (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from flask_pgtq import schema

#: Fixtures for real worker processes: ``start_worker``, ``runs_table``.
pytest_plugins = ["tests.workers"]

#: Names the PostgreSQL server to test against instead of a throwaway one.
DSN_VARIABLE = "PGTQ_TEST_DSN"

#: Server settings of the throwaway server.  Surviving a machine crash is
#: worth nothing here, so nothing is fsynced.  Surviving a *server* crash is:
#: tests kill it (``pg_ctl restart -m immediate``) and expect committed rows
#: to be there after recovery.  fsync and full_page_writes only guard against
#: the machine crashing, but ``synchronous_commit = off`` loses the last
#: commits on a server crash, so it stays on (with fsync off it costs a
#: ``write()`` per commit).
SERVER_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

_BINARIES = ("initdb", "pg_ctl", "postgres")


@dataclass
class PgServer:
    """The PostgreSQL server of the test session.

    :param dsn: libpq connection string of a superuser, ``dbname=postgres``.
    :param port: the TCP port of the server.
    :param datadir: its data directory; ``None`` for a server given by
        ``PGTQ_TEST_DSN``, which the tests cannot stop or restart.
    """

    dsn: str
    port: int | None
    datadir: Path | None = None
    bindir: Path | None = None
    logfile: Path | None = None
    user: str | None = field(default=None, repr=False)

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl -D <datadir> *args`` as the server's owner.

        :raise RuntimeError: for a server given by ``PGTQ_TEST_DSN``, or
            when ``pg_ctl`` fails (the message holds its output and the end
            of the server log).
        """
        if self.datadir is None or self.bindir is None:
            raise RuntimeError(
                f"This test controls the PostgreSQL server (pg_ctl {' '.join(args)}),"
                f" which it cannot do for the server given by {DSN_VARIABLE}."
                f" Unset {DSN_VARIABLE} to let the tests start a throwaway server."
            )
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]
        result = _run(command, user=self.user)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed with exit status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
        return result

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.pg_ctl("start", "-w", "-l", str(self.logfile))

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; *mode* is ``smart``, ``fast`` or ``immediate``."""
        self.pg_ctl("stop", "-w", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """Restart the server and wait until it accepts connections again.

        ``mode="immediate"`` kills it without a clean shutdown, so it goes
        through crash recovery: the closest thing to pulling the plug.
        """
        self.pg_ctl("restart", "-w", "-m", mode, "-l", str(self.logfile))

    def is_running(self) -> bool:
        """Whether ``pg_ctl status`` finds the server running."""
        try:
            self.pg_ctl("status")
        except RuntimeError:
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        """The last *lines* of the server log, for error messages."""
        if self.logfile is None or not self.logfile.exists():
            return "(no server log)"
        text = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        return "server log:\n" + "\n".join(text)


def find_bindir() -> Path:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``.

    The one on ``PATH`` wins; else the newest ``/usr/lib/postgresql/*/bin``
    (where Debian puts them, off ``PATH``).
    """
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).parent] if initdb else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: _version_key(path.parent.name),
        reverse=True,
    )
    candidates.extend(versions)
    for bindir in candidates:
        if all((bindir / name).exists() for name in _BINARIES):
            return bindir
    raise RuntimeError(
        "No PostgreSQL server binaries found (initdb, pg_ctl, postgres on PATH or"
        " in /usr/lib/postgresql/*/bin). Install them (apt-get install postgresql;"
        " ./run-tests does it as root),"
        f" or set {DSN_VARIABLE} to the connection string of a superuser, e.g."
        " PGTQ_TEST_DSN='host=127.0.0.1 user=postgres dbname=postgres'."
    )


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


def _run(command: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
    """Run *command* as *user* (``None``: as ourselves), capturing output.

    The working directory is ``/`` so that a user who cannot read ours can
    still run it.
    """
    as_user: dict[str, Any] = {}
    if user is not None:
        as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    return subprocess.run(
        command,
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        **as_user,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scratch_parent() -> str | None:
    """Where to put the throwaway server: ``/dev/shm`` when it has room.

    On a disk, even with fsync off, ``CREATE DATABASE`` takes ~100 ms; in
    memory it takes ~10 ms, and every test creates one.  Docker gives
    containers a 64 MB ``/dev/shm``, too small: then the default temporary
    directory (``None``).
    """
    shm = Path("/dev/shm")
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= 1 << 30:
            return str(shm)
    except OSError:
        pass
    return None


def start_throwaway_server(tmpdir: Path) -> PgServer:
    """``initdb`` and start a server in *tmpdir*, owned by *tmpdir*'s owner.

    The settings go into ``postgresql.conf``, not on the command line, so
    that a plain ``pg_ctl restart`` keeps them.
    """
    bindir = find_bindir()
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError(
                "The tests run as root, and initdb refuses root: they need a"
                " 'postgres' user to run the server as (apt-get install postgresql"
                f" creates one), or set {DSN_VARIABLE}."
            ) from None
        os.chown(tmpdir, entry.pw_uid, entry.pw_gid)
    datadir = tmpdir / "data"
    logfile = tmpdir / "server.log"
    initdb = _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            # The user's locale may not exist on this machine; C always does.
            "--locale=C",
        ],
        user=user,
    )
    if initdb.returncode != 0:
        raise RuntimeError(
            f"initdb failed with exit status {initdb.returncode}:\n{initdb.stdout}{initdb.stderr}"
        )
    server = PgServer(
        dsn="",
        port=None,
        datadir=datadir,
        bindir=bindir,
        logfile=logfile,
        user=user,
    )
    # The port is free when we look, not necessarily when the server binds.
    for attempt in itertools.count(1):
        port = _free_port()
        settings = {
            **SERVER_SETTINGS,
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{tmpdir}'",
        }
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# flask_pgtq tests\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        try:
            server.start()
        except RuntimeError:
            if attempt == 3:
                raise
            continue
        break
    server.port = port
    server.dsn = psycopg2.extensions.make_dsn(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres"
    )
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server; ``pg_server.dsn`` connects as a superuser."""
    external = os.environ.get(DSN_VARIABLE)
    if external:
        port = psycopg2.extensions.parse_dsn(external).get("port")
        yield PgServer(dsn=external, port=int(port) if port else None)
        return
    tmpdir = Path(tempfile.mkdtemp(prefix="pgtq-test-", dir=_scratch_parent()))
    server = None
    try:
        server = start_throwaway_server(tmpdir)
        yield server
    finally:
        if server is not None and server.is_running():
            server.stop("fast")
        shutil.rmtree(tmpdir, ignore_errors=True)


def _execute(dsn: str, query: sql.Composable, *args: Any) -> None:
    """Run one statement on its own autocommit connection."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query, *args)
    finally:
        conn.close()


def _drop_database(dsn: str, name: str) -> None:
    _execute(
        dsn,
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
    )


def _worker_suffix() -> str:
    """``_gw0`` and so on under pytest-xdist, so workers don't share names."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"_{worker}" if worker else ""


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer, meta_column: None) -> Iterator[str]:
    """The name of a database migrated to the latest schema, dropped at the end.

    Also drops the per-test databases a killed earlier run left behind.
    """
    name = "pgtq_template" + _worker_suffix()
    conn = psycopg2.connect(pg_server.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (_database_prefix().replace("_", r"\_") + "%",),
            )
            leftovers = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    for leftover in [*leftovers, name]:
        _drop_database(pg_server.dsn, leftover)
    _execute(pg_server.dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn = psycopg2.connect(psycopg2.extensions.make_dsn(pg_server.dsn, dbname=name))
    try:
        schema.upgrade(conn)
    finally:
        conn.close()
    yield name
    _drop_database(pg_server.dsn, name)


#: The task column the pushes and claims read and write (Task.meta).  Until
#: a migration adds it (0006), every test database gets it from here, and
#: tests whose subprocesses create their own schema are expected to fail.
META_COLUMN = "ALTER TABLE pgtq_tasks ADD COLUMN IF NOT EXISTS meta jsonb"
#: Whether a migration of the package adds the column already.
META_MIGRATED = any(
    re.search(r"ADD COLUMN\s+(IF NOT EXISTS\s+)?meta\b", m.sql, re.IGNORECASE)
    for m in schema.migrations()
)
#: For tests whose subprocesses create a schema with ``init-db``.
needs_meta_migration = pytest.mark.xfail(
    not META_MIGRATED,
    reason="a subprocess creates its own schema, which lacks pgtq_tasks.meta until "
    "migration 0006 adds it",
    strict=True,
)


def add_meta_column(conn: psycopg2.extensions.connection) -> None:
    """Add ``pgtq_tasks.meta`` to the database of *conn* (committed)."""
    with conn.cursor() as cur:
        cur.execute(META_COLUMN)
    conn.commit()


@pytest.fixture(autouse=True, scope="session")
def meta_column() -> Iterator[None]:
    """Until migration 0006 adds ``pgtq_tasks.meta``: every schema the tests
    create or upgrade in this process gets the column too."""
    if META_MIGRATED:
        yield
        return
    upgrade = schema.upgrade

    def upgrade_and_add_meta(conn: Any, *args: Any, **kwargs: Any) -> Any:
        applied = upgrade(conn, *args, **kwargs)
        add_meta_column(conn)
        return applied

    schema.upgrade = upgrade_and_add_meta  # type: ignore[assignment]
    yield
    schema.upgrade = upgrade  # type: ignore[assignment]


def _database_prefix() -> str:
    return "pgtq_test" + _worker_suffix() + "_"


_numbers = itertools.count(1)


def _database(pg_server: PgServer, template: str) -> Iterator[str]:
    """Create a database from *template*, yield its DSN, drop it."""
    name = f"{_database_prefix()}{next(_numbers)}"
    _execute(
        pg_server.dsn,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        ),
    )
    try:
        yield psycopg2.extensions.make_dsn(pg_server.dsn, dbname=name)
    finally:
        _drop_database(pg_server.dsn, name)


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """The DSN of a fresh database with the schema, dropped after the test."""
    yield from _database(pg_server, template_db)


@pytest.fixture
def empty_dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a fresh database without any table, dropped after the test."""
    yield from _database(pg_server, "template0")


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection to the test's database, for raw SQL."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def pytest_report_header(config: pytest.Config) -> str:
    external = os.environ.get(DSN_VARIABLE)
    if external:
        params = psycopg2.extensions.parse_dsn(external)
        params.pop("password", None)
        return f"PostgreSQL: {DSN_VARIABLE} ({psycopg2.extensions.make_dsn(**params)})"
    try:
        return f"PostgreSQL: throwaway server from {find_bindir()}"
    except RuntimeError as exc:
        return f"PostgreSQL: {exc}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item (``item.rep_call``), so fixtures
    can tell whether the test failed (and show worker output)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
