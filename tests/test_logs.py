"""Worker logs: one line per outcome, JSON on request, never argument values."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from flask_pgtq import ConfigurationError, PgTq
from flask_pgtq.logs import JsonFormatter, make_handler
from tests import worker_app
from tests.helpers import poll_until, sql_one

SECRET = "SECRET-4111-1111-1111-1111"


def record(**extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("flask_pgtq.test")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "task %s done", (7,), None, extra=extra
    )


def test_json_formatter_writes_one_object_with_the_extra_fields() -> None:
    line = JsonFormatter().format(record(task_id=7, queue="default", duration=0.25))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "task 7 done"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "flask_pgtq.test"
    assert entry["time"].endswith("Z")
    assert (entry["task_id"], entry["queue"], entry["duration"]) == (7, "default", 0.25)
    assert "args" not in entry and "msg" not in entry


def test_json_formatter_includes_the_traceback_and_survives_odd_values() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        rec = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info(), extra={"obj": object()}
        )
    entry = json.loads(JsonFormatter().format(rec))
    assert "ValueError: bad" in entry["exception"]
    assert entry["obj"].startswith("<object object")


def test_make_handler_refuses_unknown_formats() -> None:
    assert isinstance(make_handler("json").formatter, JsonFormatter)
    with pytest.raises(ValueError):
        make_handler("xml")


def test_log_format_setting_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_LOG_FORMAT"):
        PgTq(dsn="dbname=x", log_format="yaml")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["option", "setting"])
def test_worker_logs_json_lines_without_argument_values(
    dsn: str, start_worker: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("PGTQ_TEST_APP_DSN", dsn)
    app = worker_app.create_app()
    with app.app_context():
        ok = worker_app.mark.push(SECRET)
        retried = worker_app.flaky.push(1, SECRET)
        failed = worker_app.flaky.options(max_attempts=1).push(5, SECRET)
    if how == "option":
        worker = start_worker("--log-format", "json")
    else:
        worker = start_worker(settings={"PGTQ_LOG_FORMAT": "json"})
    ids = [ok.id, retried.id, failed.id]
    poll_until(
        lambda: (
            sql_one(
                dsn,
                "SELECT count(*) FROM pgtq_tasks WHERE id = ANY(%s) AND finished_at IS NOT NULL",
                (ids,),
            )[0]
            == 3
        ),
        20,
        0.05,
        "the three tasks to end",
    )
    worker.terminate()
    assert worker.wait() == 0
    output = worker.output()
    assert SECRET not in output, "an argument value was logged"

    entries = [json.loads(line) for line in output.splitlines() if line.strip()]
    outcomes = {(e.get("task_id"), e.get("outcome")) for e in entries if "outcome" in e}
    assert (ok.id, "succeeded") in outcomes
    assert (retried.id, "retrying") in outcomes
    assert (retried.id, "succeeded") in outcomes
    assert (failed.id, "failed") in outcomes
    success = next(e for e in entries if e.get("task_id") == ok.id)
    assert success["level"] == "INFO"
    assert success["task_name"] == "mark" and success["queue"] == "default"
    assert success["attempt"] == 1 and success["duration"] >= 0


def test_outcome_lines_say_what_happened_and_when_the_retry_comes(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    import re

    from flask import Flask

    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    q = PgTq(app)

    @q.handler(max_attempts=2, retry_backoff=2)
    def flaky() -> None:
        from flask_pgtq import current_task

        if current_task.attempts == 1:
            raise RuntimeError("first attempt fails")

    with app.app_context(), caplog.at_level("INFO", logger="flask_pgtq"):
        task = flaky.push()
        q.drain(now=True)
    lines = [m for m in caplog.messages if m.startswith(f"task {task.id} ")]
    assert re.fullmatch(
        rf"task {task.id} flaky queue=default attempt=1/2 failed after \d+\.\d{{3}}s; "
        r"retry in (1\.\d|2\.0)s",
        lines[0],
    ), lines[0]
    assert re.fullmatch(
        rf"task {task.id} flaky queue=default attempt=2/2 succeeded in \d+\.\d{{3}}s", lines[1]
    ), lines[1]
