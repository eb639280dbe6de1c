"""Development mode: the embedded database (pgserver) and its settings.

The tests that start pgserver's PostgreSQL do it in subprocesses, as
``flask run`` would, to see the server start, be reused, and stop when the
last process using it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flask import Flask

from flask_pgtq import ConfigurationError, PgTq, devdb
from tests.conftest import needs_meta_migration
from tests.helpers import poll_until
from tests.workers import ROOT

#: An app in development mode: it pushes a task, prints the number of tasks
#: in its database and the server's pid, then exits (or, with "hang", waits
#: to be killed).
DEV_APP = textwrap.dedent(
    """
    import sys, time
    import psycopg2
    from flask import Flask
    from flask_pgtq import PgTq

    app = Flask("devapp", instance_path=sys.argv[1])
    app.config["PGTQ_DEV_DATABASE"] = True
    q = PgTq(app)

    @q.handler()
    def hello(n):
        return n

    with app.app_context():
        hello.push(1)
    conn = psycopg2.connect(app.config["PGTQ_DSN"])
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgtq_tasks")
        print("tasks", cur.fetchone()[0])
        cur.execute("SELECT pg_backend_pid()")
    conn.close()
    print("server", open(sys.argv[1] + "/pgtq-dev-db/postmaster.pid").readline().strip())
    sys.stdout.flush()
    if sys.argv[2:] == ["hang"]:
        time.sleep(120)
    """
)


def _server_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_without_a_dsn_the_error_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_DSN is not set") as info:
        PgTq(Flask(__name__))
    assert "PGTQ_DEV_DATABASE = True" in str(info.value)
    assert 'pip install "flask_pgtq[dev]"' in str(info.value)


def test_a_dsn_wins_over_the_development_database(dsn: str, tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(PGTQ_DSN=dsn, PGTQ_DEV_DATABASE=True)
    q = PgTq(app)
    with app.app_context():
        assert q.config.dsn == dsn
    assert not (tmp_path / "instance").exists()


@pytest.mark.parametrize("key", ["PGTQ_DEV_DATABASE", "PGTQ_DEV_WORKER"])
def test_development_settings_are_true_or_false(dsn: str, key: str) -> None:
    app = Flask(__name__)
    app.config.update({"PGTQ_DSN": dsn, key: "yes"})
    with pytest.raises(ConfigurationError, match=f"{key} must be True or False"):
        PgTq(app)


def test_without_pgserver_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pgserver", None)  # import fails
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["PGTQ_DEV_DATABASE"] = True
    with pytest.raises(ConfigurationError, match=r'pip install "flask_pgtq\[dev\]"'):
        PgTq(app)


def _run_dev_app(instance: Path, *args: str) -> subprocess.Popen[str]:
    script = instance.parent / "devapp.py"
    script.write_text(DEV_APP)
    return subprocess.Popen(
        [sys.executable, str(script), str(instance), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(output: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in output.splitlines() if line)}


@pytest.mark.slow
@needs_meta_migration
def test_the_development_database_starts_is_reused_and_stops(tmp_path: Path) -> None:
    import pgserver  # noqa: F401  (the test extra installs it: a missing one fails)
    instance = tmp_path / "instance"
    datadir = instance / devdb.DATA_DIRECTORY

    # First run: a new server, with the tables; it stops when the app exits.
    first = _run_dev_app(instance)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert _lines(out)["tasks"] == 1
    assert _server_pid(datadir) is None  # pg_ctl stop removes it once stopped
    poll_until(lambda: not _alive(_lines(out)["server"]), 10, 0.05, "the server to exit")

    # Second run, killed: its server stays up...
    second = _run_dev_app(instance, "hang")
    assert second.stdout is not None
    seen = _lines(second.stdout.readline() + second.stdout.readline())
    assert seen["tasks"] == 2  # the first run's data is still there
    second.send_signal(signal.SIGKILL)
    second.wait(10)
    second.stdout.close()
    second.stderr.close()  # type: ignore[union-attr]
    assert _alive(seen["server"])

    # ...and the next run reuses it, then stops it: the killed process does
    # not keep it alive for ever.
    third = _run_dev_app(instance)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert _lines(out) == {"tasks": 3, "server": seen["server"]}
    poll_until(lambda: not _alive(seen["server"]), 10, 0.05, "the server to stop")
    assert _server_pid(datadir) is None


@pytest.mark.slow
def test_a_started_database_can_be_stopped_explicitly(tmp_path: Path) -> None:
    import pgserver  # noqa: F401  (the test extra installs it: a missing one fails)
    database = devdb.start_dev_database(tmp_path)
    try:
        assert database.running
        assert devdb.start_dev_database(tmp_path) is database
        q = PgTq(dsn=database.dsn)

        @q.handler()
        def add(a: int, b: int) -> int:
            return a + b

        add.push(2, 3)
        (task,) = q.drain()
        assert task.result == 5
    finally:
        database.stop()
    assert not database.running
    database.stop()  # harmless
