"""The example app: its views and tasks, with ``q.drain()`` and real workers."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from example_app import (
    EXPORT_CHUNKS,
    build_report,
    call_flaky_api,
    create_app,
    export_archive,
    import_contacts,
    q,
    send_welcome_email,
)
from flask_pgtq import devdb
from tests.helpers import poll_until, sql_all, sql_one
from tests.workers import ROOT


@pytest.fixture
def app(dsn: str) -> Iterator[Flask]:
    yield create_app({"PGTQ_DSN": dsn, "SECRET_KEY": "test", "EXAMPLE_STEP_SECONDS": 0})


def _task_states(dsn: str) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    for name, state in sql_all(dsn, "SELECT name, state FROM pgtq_tasks ORDER BY id"):
        states.setdefault(name, []).append(state)
    return states


def _worker(dsn: str, *args: str, **popen: Any) -> Any:
    """``flask --app example_app pgtq worker`` on *dsn*, as a deployment runs it."""
    return [sys.executable, "-m", "flask", "--app", "example_app", "pgtq", "worker", *args], {
        "cwd": ROOT,
        "env": {"PGTQ_DSN": dsn, "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        **popen,
    }


def _burst(dsn: str) -> None:
    """Run ``flask pgtq worker --burst``: what is ready now, then exit."""
    command, options = _worker(dsn, "--burst")
    worker = subprocess.run(command, capture_output=True, text=True, timeout=60, **options)
    assert worker.returncode == 0, worker.stderr


def _task_id(dsn: str, name: str) -> int:
    row = sql_one(dsn, "SELECT id FROM pgtq_tasks WHERE name = %s", (name,))
    assert row is not None, f"no {name} task"
    return int(row[0])


def _csrf_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, "no CSRF token on the page"
    return match.group(1)


def test_with_a_dsn_the_app_is_not_in_development_mode(app: Flask, dsn: str) -> None:
    assert app.config["PGTQ_DEV_DATABASE"] is False
    assert app.config["PGTQ_DEV_WORKER"] is False
    assert devdb.dev_worker(app) is None


def test_signup_pushes_a_task_and_a_worker_sends_the_email(app: Flask, dsn: str) -> None:
    client = app.test_client()
    response = client.post("/signup", data={"email": "ada@example.com"})
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "welcome email to ada@example.com" in page
    assert "queued" in page
    assert "Nothing sent yet" in page

    _burst(dsn)

    page = client.get("/").get_data(as_text=True)
    assert "succeeded" in page
    assert "Welcome aboard, ada@example.com!" in page
    (sent,) = sql_one(dsn, "SELECT count(*) FROM example_outbox")
    assert sent == 1


def test_a_bad_address_pushes_nothing(app: Flask, dsn: str) -> None:
    response = app.test_client().post("/signup", data={"email": "not-an-address"})
    assert response.status_code == 302
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 0


def test_the_task_is_pushed_in_the_signups_transaction(app: Flask, dsn: str) -> None:
    client = app.test_client()
    client.post("/signup", data={"email": "ada@example.com"})
    response = client.post("/signup", data={"email": "ADA@example.com"}, follow_redirects=True)
    assert "has signed up already" in response.get_data(as_text=True)
    # The second sign-up's transaction rolled back, and its task with it.
    assert sql_all(dsn, "SELECT name, args FROM pgtq_tasks") == [
        ("send_welcome_email", ["ada@example.com"])
    ]
    assert sql_one(dsn, "SELECT count(*) FROM example_signups")[0] == 1


def test_the_handler_sends_once_even_when_run_twice(app: Flask, dsn: str) -> None:
    with app.app_context():
        send_welcome_email.push("bob@example.com")
        task = q.pop()
        assert task.run().result == {"to": "bob@example.com", "sent": True}
        # At-least-once delivery: a rerun of the same task must not send again.
        sql_one(
            dsn,
            "UPDATE pgtq_tasks SET state = 'queued', locked_by = NULL RETURNING id",
        )
        again = q.pop().run()
        assert again.result == {"to": "bob@example.com", "sent": False}
    assert sql_one(dsn, "SELECT count(*) FROM example_outbox")[0] == 1


def test_the_report_reports_its_progress(app: Flask, dsn: str) -> None:
    client = app.test_client()
    client.post("/report")
    with app.app_context():
        (task,) = q.drain()
    assert task.name == build_report.name
    assert task.state == "succeeded"
    assert task.result == {"rows": 40, "total": 820}
    assert task.progress == {"done": 40, "total": 40}
    assert "report of 40 rows" in client.get("/status").get_data(as_text=True)


def test_the_flaky_call_is_retried_until_it_succeeds(app: Flask, dsn: str) -> None:
    app.test_client().post("/flaky")
    with app.app_context():
        (first,) = q.drain()
        assert (first.state, first.attempts) == ("queued", 1)
        assert "the partner API did not answer (attempt 1)" in first.error
        # The retries wait 0.5-1 s, then 1-2 s (retry_backoff=1, jittered).
        task = poll_until(
            lambda: [t for t in q.drain() if t.state == "succeeded"], 10, 0.1, "the retries"
        )[0]
    assert task.name == call_flaky_api.name
    assert (task.attempts, task.result) == (3, "answered on attempt 3")
    assert [entry["state"] for entry in task.history] == ["queued", "queued"]


def test_a_burst_worker_also_fires_the_due_periodic_task(app: Flask, dsn: str) -> None:
    # The schedule fires every 15 seconds: its latest fire time is due, and
    # a worker fires it on its first round, --burst or not (and once more if
    # the run crosses the next fire time: one task per fire time).
    _burst(dsn)
    fires = sql_all(dsn, "SELECT fire_at FROM pgtq_periodic ORDER BY fire_at")
    assert fires
    assert _task_states(dsn) == {"tick": ["succeeded"] * len(fires)}
    assert sql_one(dsn, "SELECT count(*) FROM example_ticks")[0] == len(fires)


def test_the_broken_import_fails_for_good_with_its_traceback(app: Flask, dsn: str) -> None:
    client = app.test_client()
    client.post("/import")
    _burst(dsn)
    task_id = _task_id(dsn, import_contacts.name)
    assert sql_one(dsn, "SELECT state, attempts FROM pgtq_tasks WHERE id = %s", (task_id,)) == (
        "failed",
        1,
    )
    error = "ValueError: contacts.csv, line 3: expected 3 columns, found 2"

    status = client.get("/status").get_data(as_text=True)
    assert '<td class="state failed">failed</td>' in status
    assert "contacts.csv, line 3: expected 3 columns, found 2" in status
    assert f'href="/pgtq/tasks/{task_id}"' in status

    page = client.get(f"/pgtq/tasks/{task_id}").get_data(as_text=True)
    assert '<dd id="state">failed</dd>' in page
    assert "Traceback (most recent call last)" in page
    assert error in page

    failed = client.get("/pgtq/tasks?state=failed").get_data(as_text=True)
    assert "Retry all 1 failed" in failed
    response = client.post(
        "/pgtq/tasks/retry", data={"csrf_token": _csrf_token(failed), "state": "failed"}
    )
    assert response.status_code == 303
    assert sql_one(dsn, "SELECT state, attempts FROM pgtq_tasks WHERE id = %s", (task_id,)) == (
        "queued",
        0,
    )
    # Retried, it fails again: the file is still broken.
    _burst(dsn)
    assert sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task_id,)) == ("failed",)


@pytest.mark.slow
def test_cancel_stops_the_long_export_at_once(app: Flask, dsn: str) -> None:
    client = app.test_client()
    client.post("/export")
    task_id = _task_id(dsn, export_archive.name)
    command, options = _worker(dsn)
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options
    )
    try:
        poll_until(
            lambda: sql_one(dsn, "SELECT progress FROM pgtq_tasks WHERE id = %s", (task_id,))[0],
            30,
            0.05,
            "the export to report progress",
        )
        asked = time.monotonic()
        response = client.post(f"/tasks/{task_id}/cancel", follow_redirects=True)
        assert f"Task {task_id} was asked to stop." in response.get_data(as_text=True)
        state = poll_until(
            lambda: sql_one(
                dsn,
                "SELECT state, error FROM pgtq_tasks WHERE id = %s AND state <> 'running'",
                (task_id,),
            ),
            10,
            0.02,
            "the export to stop",
        )
        took = time.monotonic() - asked
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # The handler stopped itself (its own reason, well within the grace
    # period), not the worker after PGTQ_CANCEL_GRACE (5 s).
    assert state[0] == "cancelled"
    assert re.fullmatch(rf"stopped on request after \d+ of {EXPORT_CHUNKS} chunks", state[1])
    assert took < 2.5, took
    assert worker.returncode == 0, output
    assert "restarting" not in output
    status = client.get("/status").get_data(as_text=True)
    assert '<td class="state cancelled">cancelled</td>' in status


def test_the_app_serves_a_favicon(app: Flask) -> None:
    client = app.test_client()
    with client.get("/favicon.ico") as icon:  # streamed: closed after
        assert icon.status_code == 200
        assert icon.mimetype == "image/svg+xml"
        assert icon.get_data().startswith(b"<svg")
    page = client.get("/").get_data(as_text=True)
    (href,) = re.findall(r'<link rel="icon" href="([^"]+)"', page)
    with client.get(href) as linked:
        assert linked.status_code == 200


@pytest.mark.slow
def test_a_real_worker_runs_every_kind_of_task(app: Flask, dsn: str) -> None:
    client = app.test_client()
    client.post("/signup", data={"email": "ada@example.com"})
    client.post("/report")
    client.post("/flaky")
    command, options = _worker(dsn)
    worker = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options
    )
    try:

        def all_done() -> bool:
            states = _task_states(dsn)
            expected = ("send_welcome_email", "build_report", "call_flaky_api", "tick")
            return all(states.get(name, [None])[0] == "succeeded" for name in expected)

        poll_until(all_done, 30, 0.1, "every task to succeed")
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    page = client.get("/").get_data(as_text=True)
    assert "run, the last at" in page or "runs, the last at" in page
    # The periodic task fired once for its fire time, however often the
    # worker's scheduler looked.
    ticks = sql_all(dsn, "SELECT count(*), count(DISTINCT task_id) FROM example_ticks")
    assert ticks[0][0] == ticks[0][1] >= 1


@pytest.mark.slow
def test_in_development_mode_flask_run_runs_the_tasks(dsn: str) -> None:
    app = create_app({"PGTQ_DSN": dsn, "PGTQ_DEV_WORKER": True, "EXAMPLE_STEP_SECONDS": 0})
    dev = devdb.dev_worker(app)
    assert dev is not None and dev.thread is None  # started by the first request
    client = app.test_client()
    try:
        client.post("/signup", data={"email": "ada@example.com"})
        assert dev.thread is not None and dev.thread.is_alive()
        poll_until(
            lambda: _task_states(dsn).get("send_welcome_email") == ["succeeded"],
            15,
            0.05,
            "the worker thread to send the email",
        )
        assert sql_one(dsn, "SELECT count(*) FROM pgtq_workers")[0] == 1
    finally:
        dev.stop()
    assert not dev.thread.is_alive()
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_workers")[0] == 0


def test_the_dashboard_is_served_to_local_requests_only(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/pgtq/").status_code == 200
    remote = client.get("/pgtq/", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert remote.status_code == 403
