"""Real worker processes for lifecycle tests.

A pytest plugin (loaded by ``conftest.py``): tests ask for the
``start_worker`` fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.helpers import poll_until
from tests.worker_app import RUNS_TABLE

ROOT = Path(__file__).resolve().parent.parent

#: Short timings so lifecycle tests take seconds, not minutes.
FAST_SETTINGS: dict[str, Any] = {
    "PGTQ_LEASE": 3.0,
    "PGTQ_HEARTBEAT_INTERVAL": 0.5,
    "PGTQ_POLL_INTERVAL": 0.5,
    "PGTQ_RETRY_BACKOFF": 0.1,
    "PGTQ_SHUTDOWN_GRACE": 10.0,
}


class WorkerProcess:
    """A ``flask --app tests.worker_app pgtq worker`` subprocess."""

    def __init__(self, dsn: str, args: list[str], settings: dict[str, Any]) -> None:
        self.dsn = dsn
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            prefix="pgtq-worker-", suffix=".log", delete=False
        )
        env = {
            **os.environ,
            "PGTQ_TEST_APP_DSN": dsn,
            "PGTQ_TEST_APP_SETTINGS": json.dumps({**FAST_SETTINGS, **settings}),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "tests.worker_app:create_app",
                "pgtq",
                "worker",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 15.0) -> str:
        """Wait until the worker registered itself; return its worker id."""

        def registered() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()}")
            conn = psycopg2.connect(self.dsn)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT id FROM pgtq_workers WHERE pid = %s", (self.pid,))
                    row = cur.fetchone()
            finally:
                conn.close()
            return str(row[0]) if row else None

        return poll_until(registered, timeout, 0.05, f"worker {self.pid} to register")

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; return its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout}s:\n{self.output()}"
            ) from None

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def runs_table(dsn: str) -> str:
    """Create ``test_runs`` (where test handlers record what they did)."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(RUNS_TABLE)
    finally:
        conn.close()
    return dsn


@pytest.fixture
def start_worker(runs_table: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory: ``start_worker("--concurrency", "2", settings={...})``.

    Waits until the worker is registered (pass ``ready=False`` not to).
    Every worker still running at the end of the test is killed; the output
    of each is printed when the test failed.
    """
    started: list[WorkerProcess] = []

    def start(
        *args: str, settings: dict[str, Any] | None = None, ready: bool = True
    ) -> WorkerProcess:
        worker = WorkerProcess(runs_table, list(args), settings or {})
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    failed = getattr(request.node, "rep_call", None)
    for worker in started:
        if failed is not None and failed.failed:
            sys.stderr.write(f"--- worker {worker.pid} output ---\n{worker.output()}\n")
        worker.close()


def runs(dsn: str, tag: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``test_runs`` (optionally for one tag), oldest first."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT task_id, attempt, pid, tag, event FROM test_runs "
                "WHERE %(tag)s::text IS NULL OR tag = %(tag)s ORDER BY id",
                {"tag": tag},
            )
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()
