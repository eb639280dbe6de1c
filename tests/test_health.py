"""Health: a real worker's ``/livez`` and ``/readyz`` (``--health-port``),
and ``flask pgtq health`` for cron-style alerting."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from flask_pgtq import State
from flask_pgtq.admin import QueueStatus
from flask_pgtq.health import live_limit, queue_problems
from flask_pgtq.queue import new_owner_id
from tests import worker_app
from tests.helpers import poll_until
from tests.worker_app import slow
from tests.workers import runs


@pytest.fixture
def app(served_app: Flask) -> Flask:
    """The app the workers serve (conftest's ``served_app``)."""
    return served_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET *path* from the worker's health port: (status, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def answers(port: int, path: str, status: int) -> dict[str, Any] | None:
    """The body once *path* answers *status* (for poll_until), else ``None``."""
    got, body = probe(port, path)
    return body if got == status else None


# -- a worker's probes --------------------------------------------------------------


def test_probes_answer_ok_then_not_ready_during_the_grace_period(app, dsn, start_worker):
    port = free_port()
    worker = start_worker("--health-port", str(port), "--health-host", "127.0.0.1")
    assert poll_until(lambda: answers(port, "/readyz", 200), 10, 0.05) == {"status": "ok"}
    assert probe(port, "/livez") == (200, {"status": "ok"})
    assert probe(port, "/other")[0] == 404

    task = slow.push(2.0, "grace")
    poll_until(lambda: runs(dsn, "grace"), 10, 0.02, "the task to start")
    worker.terminate()
    body = poll_until(lambda: answers(port, "/readyz", 503), 5, 0.02)
    assert body == {"status": "fail", "reason": "the worker is shutting down"}
    # Still live: the loop turns while it lets the running task finish.
    assert probe(port, "/livez") == (200, {"status": "ok"})
    assert worker.wait() == 0
    assert worker_app.q.get_task(task.id).state is State.SUCCEEDED


def test_not_ready_while_the_database_is_down_but_still_live(app, dsn, start_worker, pg_server):
    port = free_port()
    start_worker("--health-port", str(port), "--health-host", "127.0.0.1")
    poll_until(lambda: answers(port, "/readyz", 200), 10, 0.05)
    pg_server.stop("fast")
    try:
        body = poll_until(lambda: answers(port, "/readyz", 503), 10, 0.05)
        assert body["reason"].startswith("the database is unreachable: ")
        assert probe(port, "/livez")[0] == 200
    finally:
        pg_server.start()
    poll_until(lambda: answers(port, "/readyz", 200), 15, 0.05, "ready again")


def test_a_taken_health_port_is_a_one_line_error(app, start_worker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker("--health-port", str(port), "--health-host", "127.0.0.1", ready=False)
        assert worker.wait() == 1
    assert f"Error: cannot serve health checks on 127.0.0.1:{port}" in worker.output()


def test_liveness_allows_three_polls_and_at_least_ten_seconds() -> None:
    assert live_limit(0.5) == 10.0
    assert live_limit(5.0) == 15.0


# -- flask pgtq health --------------------------------------------------------------


def health(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["pgtq", "health", *args])


def serve(app: Flask, *queues: str) -> None:
    """Register a live owner serving *queues*, as a worker does."""
    worker_app.q.app_queue().store.register_owner(new_owner_id(), queues=queues, concurrency=1)


def test_health_fails_when_no_live_worker_serves_a_queue(app: Flask) -> None:
    result = health(app, "--queue", "default")
    assert result.exit_code == 1
    assert result.output == "Error: queue 'default' has no live worker\n"
    serve(app, "default")
    result = health(app, "--queue", "default")
    assert (result.exit_code, result.output) == (0, "ok: default\n")
    result = health(app, "-q", "default", "-q", "emails")
    assert result.exit_code == 1
    assert result.output == "Error: queue 'emails' has no live worker\n"


def test_health_checks_the_handlers_queues_by_default(app: Flask) -> None:
    serve(app, "default")
    result = health(app)
    assert result.exit_code == 1
    assert result.output == "Error: queue 'periodic' has no live worker\n"
    serve(app, "periodic")
    assert health(app).exit_code == 0


def test_health_fails_when_the_oldest_ready_task_waits_too_long(app: Flask) -> None:
    serve(app, "default")
    worker_app.add.options(eta=datetime.now(UTC) - timedelta(minutes=5)).push(1, 2)
    assert health(app, "-q", "default", "--max-wait", "3600").exit_code == 0
    result = health(app, "-q", "default", "--max-wait", "60")
    assert result.exit_code == 1
    assert result.output.startswith("Error: queue 'default': the oldest ready task has waited 30")
    assert result.output.endswith("s (more than 60s)\n")


def test_health_says_when_the_database_cannot_be_asked(dsn: str) -> None:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn + " port=1"
    from flask_pgtq import PgTq

    PgTq(app)
    result = health(app, "-q", "default")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot check the queues: ")
    assert "\n" not in result.output.rstrip("\n")


def test_queue_problems_lists_every_problem() -> None:
    idle = QueueStatus("idle", workers=0)
    late = QueueStatus("late", workers=2, oldest_wait=120.0)
    assert queue_problems([idle, late], ["idle", "late", "gone"], 60) == [
        "queue 'idle' has no live worker",
        "queue 'late': the oldest ready task has waited 120s (more than 60s)",
        "queue 'gone' has no live worker",
    ]
    assert queue_problems([late], ["late"]) == []
