"""The example app, end to end with a real worker process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from flask import Flask

from example_app import create_app
from tests.helpers import sql_one
from tests.workers import ROOT


@pytest.fixture
def app(dsn: str) -> Iterator[Flask]:
    yield create_app({"PGTQ_DSN": dsn, "SECRET_KEY": "test"})


def test_signup_pushes_a_task_and_a_worker_sends_the_email(app: Flask, dsn: str) -> None:
    client = app.test_client()
    response = client.post("/signup", data={"email": "ada@example.com"})
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "ada@example.com" in page
    assert "queued" in page
    assert "Nothing sent yet" in page

    worker = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", "pgtq", "worker", "--burst"],
        cwd=ROOT,
        env={"PGTQ_DSN": dsn, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr

    page = client.get("/").get_data(as_text=True)
    assert "succeeded" in page
    assert "Welcome aboard, ada@example.com!" in page
    (sent,) = sql_one(dsn, "SELECT count(*) FROM example_outbox")
    assert sent == 1


def test_a_bad_address_pushes_nothing(app: Flask, dsn: str) -> None:
    response = app.test_client().post("/signup", data={"email": "not-an-address"})
    assert response.status_code == 302
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 0


def test_the_handler_sends_once_even_when_run_twice(app: Flask, dsn: str) -> None:
    with app.app_context():
        from example_app import q, send_welcome_email

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
