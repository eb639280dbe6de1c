"""Through PgBouncer in transaction mode: pushes, claims and outcomes work,
polling alone runs every task exactly once, and LISTEN can go direct.

Needs Debian's ``pgbouncer`` package (``./run-tests`` installs it).
"""

from __future__ import annotations

import collections
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from flask_pgtq import PgTq, State, schema
from tests import worker_app
from tests.helpers import poll_until, sql_one
from tests.worker_app import mark
from tests.workers import runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def bouncer_port(pg_server) -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the test server."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer")
    server = psycopg2.extensions.parse_dsn(pg_server.dsn)
    folder = Path(tempfile.mkdtemp(prefix="pgtq-bouncer-"))
    port = _free_port()
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}"
        f" user={server.get('user', 'postgres')}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        "default_pool_size = 20\n"
        "max_client_conn = 300\n"
        "server_reset_query =\n"
        f"logfile = {folder}/pgbouncer.log\n"
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for path in folder.iterdir():
            os.chown(path, entry.pw_uid, entry.pw_gid)
        command[1:1] = ["-u", "postgres"]
    # Its log goes to the file above.  Never a pipe nobody reads: once the
    # pipe is full, pgbouncer blocks on writing and every client hangs.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def accepting() -> bool:
        assert proc.poll() is None, (folder / "pgbouncer.log").read_text(errors="replace")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    poll_until(accepting, 10, 0.05, "pgbouncer to listen")
    yield port
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # clients still connected: no need to wait
        proc.kill()
        proc.wait(5)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bounced(dsn: str, bouncer_port: int) -> str:
    """The test database's DSN, through PgBouncer."""
    return psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=bouncer_port)


#: Server-side prepared statements do not survive transaction pooling.
NO_PREPARE = {"PGTQ_PREPARED_STATEMENTS": False}


@pytest.fixture
def queue_settings(bounced: str) -> dict[str, Any]:
    """The served app pushes through the bouncer, without prepared statements."""
    return {"PGTQ_DSN": bounced, **NO_PREPARE}


def test_init_db_through_the_bouncer(empty_dsn: str, bouncer_port: int) -> None:
    bounced = psycopg2.extensions.make_dsn(empty_dsn, host="127.0.0.1", port=bouncer_port)
    q = PgTq(dsn=bounced)
    assert q.init_db() == [m.version for m in schema.migrations()]
    assert q.init_db() == []


def test_polling_alone_runs_every_task_exactly_once(served_app, bounced, dsn, start_worker) -> None:
    ids = [mark.push(f"pb{i}").id for i in range(200)]
    settings = {
        "PGTQ_DSN": bounced,
        "PGTQ_LISTEN": False,
        "PGTQ_POLL_INTERVAL": 0.1,
        **NO_PREPARE,
    }
    workers = [start_worker("--concurrency", "2", settings=settings) for _ in range(2)]
    poll_until(
        lambda: (
            sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE state = 'succeeded'")[0] == len(ids)
        ),
        60,
        0.1,
        "all tasks to succeed through pgbouncer",
    )
    executions = collections.Counter(r["task_id"] for r in runs(dsn))
    assert set(executions) == set(ids)
    assert set(executions.values()) == {1}
    for w in workers:
        w.terminate()
    assert [w.wait() for w in workers] == [0, 0]
    # Nothing was left behind on the server connections PgBouncer shares.
    leftovers = sql_one(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%%'",
    )[0]
    assert leftovers == 0


def test_listen_goes_direct_while_the_rest_goes_through_the_bouncer(
    bounced, dsn, start_worker, monkeypatch
) -> None:
    # The worker goes through the bouncer (LISTEN aside); this test's own
    # pushes and reads go direct (pushing through the bouncer is tested above).
    monkeypatch.setenv("PGTQ_TEST_APP_DSN", dsn)
    direct = worker_app.create_app()
    settings = {
        "PGTQ_DSN": bounced,
        "PGTQ_LISTEN_DSN": dsn,
        "PGTQ_POLL_INTERVAL": 30.0,
        **NO_PREPARE,
    }
    worker = start_worker(settings=settings)
    # Connected is not enough: wait until its LISTEN has run.
    poll_until(
        lambda: sql_one(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND query LIKE 'LISTEN%%' AND state = 'idle'",
            (f"flask_pgtq-listen:{worker.pid}",),
        )[0],
        10,
        0.05,
        "a direct LISTEN connection",
    )
    with direct.app_context():
        pushed = time.monotonic()
        task = mark.push("direct-wakeup")
        poll_until(lambda: runs(dsn, "direct-wakeup"), 5, 0.01, "NOTIFY to wake the worker")
        assert time.monotonic() - pushed < 5, "woken by the poll, not NOTIFY"
        poll_until(lambda: worker_app.q.get_task(task.id).state is State.SUCCEEDED, 10, 0.02)


def test_prepared_statements_behind_the_bouncer_say_what_to_change(bounced: str) -> None:
    from flask_pgtq import DatabaseError

    # Two clients take turns on PgBouncer's few server connections: the
    # second one's PREPARE meets the first one's (or its EXECUTE misses its
    # own), and the error says how to fix it.
    clients = [PgTq(dsn=bounced, prepared_statements=True) for _ in range(2)]
    jobs = []
    for q in clients:

        @q.handler(name="job")
        def job(n: int) -> None:
            pass

        jobs.append(job)
    with pytest.raises(DatabaseError, match="PGTQ_PREPARED_STATEMENTS = False"):
        for n in range(20):
            jobs[n % 2].push(n)
    for q in clients:
        q.close()
