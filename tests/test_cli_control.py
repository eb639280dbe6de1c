"""``flask pgtq pause``, ``resume``, ``status`` and ``schedules``."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_pgtq import PgTq
from tests.helpers import sql_all


@pytest.fixture
def app(dsn: str) -> Flask:
    """No app context: the commands run in their own, as under ``flask``."""
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    return app


@pytest.fixture
def q(q: PgTq) -> PgTq:
    @q.handler(queue="mail")
    def send(to: str) -> None:
        pass

    return q


@pytest.fixture
def runner(app: Flask, q: PgTq) -> FlaskCliRunner:
    return app.test_cli_runner()


def invoke(runner: FlaskCliRunner, *args: str, code: int = 0) -> str:
    result = runner.invoke(args=["pgtq", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_pause_status_and_resume(runner: FlaskCliRunner, dsn: str) -> None:
    out = invoke(runner, "pause", "mail", "--for", "10m", "--reason", "smtp down")
    assert out.startswith("paused queue mail until ")
    invoke(runner, "pause", "--handler", "send")
    status = invoke(runner, "status")
    assert "paused queue mail by " in status and ": smtp down" in status
    assert "paused handler send by " in status and "until resumed" in status
    data = json.loads(invoke(runner, "status", "--json"))
    assert {(p["kind"], p["target"]) for p in data["pauses"]} == {
        ("queue", "mail"),
        ("handler", "send"),
    }
    assert invoke(runner, "resume", "mail") == "resumed queue mail\n"
    assert "was not paused" in invoke(runner, "resume", "mail", code=1)
    invoke(runner, "resume", "--handler", "send")
    assert sql_all(dsn, "SELECT * FROM pgtq_pauses") == []


def test_pause_needs_one_target_and_a_duration(runner: FlaskCliRunner) -> None:
    assert "give a queue or a handler" in invoke(runner, "pause", code=1)
    assert "not a duration" in invoke(runner, "pause", "mail", "--for", "soon", code=1)
    assert "Error" in invoke(runner, "pause", "bad queue!", code=1)


def test_schedules_commands(runner: FlaskCliRunner, dsn: str) -> None:
    out = invoke(
        runner,
        "schedules",
        "add",
        "digest",
        "0 8 * * *",
        "send",
        "--args",
        '["ops@x"]',
        "--tz",
        "Europe/Paris",
    )
    assert out.startswith("added digest: next at ")
    listed = invoke(runner, "schedules", "list")
    assert "digest" in listed and "database" in listed and "Europe/Paris" in listed
    invoke(runner, "schedules", "update", "digest", "--cron", "30 8 * * *")
    assert invoke(runner, "schedules", "disable", "digest") == "disabled digest\n"
    (info,) = json.loads(invoke(runner, "schedules", "list", "--json"))
    assert (info["cron"], info["enabled"], info["next_fire"]) == ("30 8 * * *", False, None)
    invoke(runner, "schedules", "enable", "digest")
    out = invoke(runner, "schedules", "run", "digest")
    assert out.startswith("pushed task ")
    assert sql_all(dsn, "SELECT name, args FROM pgtq_tasks") == [("send", ["ops@x"])]
    invoke(runner, "schedules", "remove", "digest")
    assert "no stored schedule" in invoke(runner, "schedules", "remove", "digest", code=1)
    assert "not JSON" in invoke(
        runner, "schedules", "add", "x", "* * * * *", "send", "--args", "[", code=1
    )
    assert "no handler" in invoke(runner, "schedules", "add", "y", "* * * * *", "nope", code=1)
