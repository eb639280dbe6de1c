"""``flask pgtq status|tasks|show|retry|cancel|delete|purge|workers``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_pgtq import PgTq, State
from tests import worker_app
from tests.helpers import poll_until, sql_all
from tests.workers import runs

PASSWORD = "canary-Pa55word"


@pytest.fixture(autouse=True)
def package_logger() -> Iterator[None]:
    """Undo what ``pgtq worker`` does to the ``flask_pgtq`` logger in-process."""
    logger = logging.getLogger("flask_pgtq")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def make_app(dsn: str) -> Flask:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    app.config["PGTQ_RETRY_BACKOFF"] = 0
    app.config["PGTQ_POLL_INTERVAL"] = 0.05
    return app


@pytest.fixture
def app(dsn: str) -> Flask:
    """No app context: the commands run in their own, as under ``flask``."""
    return make_app(dsn)


@pytest.fixture
def q(q: PgTq) -> PgTq:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    @q.handler(max_attempts=1, queue="risky")
    def boom(message: str) -> None:
        raise RuntimeError(message)

    return q


@pytest.fixture
def runner(app: Flask, q: PgTq) -> FlaskCliRunner:
    return app.test_cli_runner()


def invoke(runner: FlaskCliRunner, *args: str, code: int = 0) -> str:
    result = runner.invoke(args=["pgtq", *args])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.output


@pytest.fixture
def tasks(app: Flask, q: PgTq) -> dict[str, int]:
    """Two succeeded adds, one queued add, one failed boom."""
    with app.app_context():
        done = [q.push("add", i, i).id for i in range(2)]
        for _ in done:
            q.pop().run()
        waiting = q.push("add", 5, 5).id
        failed = q.push("boom", "disk full").id
        q.pop("risky").run()
    return {"done": done[0], "waiting": waiting, "failed": failed}


def test_status_table_and_json(runner: FlaskCliRunner, tasks: dict[str, int]) -> None:
    out = invoke(runner, "status")
    lines = out.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "WAITING",
        "READY",
        "SCHEDULED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "OLDEST",
        "WAITING",
        "WORKERS",
    ]
    assert lines[1].split()[:8] == ["default", "0", "1", "0", "0", "2", "0", "0"]
    assert lines[2].split()[:8] == ["risky", "0", "0", "0", "0", "0", "1", "0"]
    # Aligned: every column starts where its header does.
    assert lines[1].index("0 ") < lines[0].index("SUCCEEDED") + len("SUCCEEDED")
    assert "0 live workers" in out

    data = json.loads(invoke(runner, "status", "--json"))
    default = data["queues"][0]
    assert default["queue"] == "default"
    assert default["counts"]["succeeded"] == 2
    assert default["oldest_wait"] >= 0
    assert data["live_workers"] == 0


def test_status_of_an_empty_queue(runner: FlaskCliRunner) -> None:
    assert "no tasks" in invoke(runner, "status")


def test_tasks_lists_newest_first_with_filters(
    runner: FlaskCliRunner, tasks: dict[str, int]
) -> None:
    out = invoke(runner, "tasks")
    rows = out.splitlines()[1:5]
    assert [int(r.split()[0]) for r in rows] == sorted(
        [tasks["failed"], tasks["waiting"], tasks["done"], tasks["done"] + 1], reverse=True
    )
    failed_row = next(r for r in rows if r.split()[0] == str(tasks["failed"]))
    assert "RuntimeError: disk full" in failed_row
    assert "4 of 4 matching" in out

    out = invoke(runner, "tasks", "--state", "failed")
    assert "boom" in out and "add" not in out
    out = invoke(runner, "tasks", "--name", "add", "--limit", "2")
    assert "2 of 3 matching; older ones: --before" in out
    before = out.rsplit("--before ", 1)[1].strip()
    older = invoke(runner, "tasks", "--name", "add", "--before", before)
    assert "1 of 3 matching" in older

    data = json.loads(invoke(runner, "tasks", "--queue", "risky", "--json"))
    assert [t["id"] for t in data["tasks"]] == [tasks["failed"]]
    assert data["tasks"][0]["state"] == "failed"
    assert data["total"] == 1
    assert "no tasks match" in invoke(runner, "tasks", "--queue", "nothing-here")


def test_tasks_refuses_an_unknown_state(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["pgtq", "tasks", "--state", "bogus"])
    assert result.exit_code == 2


def test_show_prints_arguments_error_and_history(
    runner: FlaskCliRunner, tasks: dict[str, int]
) -> None:
    out = invoke(runner, "show", str(tasks["failed"]))
    assert "\nstate     failed\n" in out
    assert "\nattempts  1/1\n" in out
    assert 'args:\n  [\n    "disk full"\n  ]' in out
    error = out.split("\nerror:\n", 1)[1]
    assert error.startswith("  Traceback (most recent call last)")
    assert "RuntimeError: disk full" in error
    history = out.split("\nhistory:\n", 1)[1].splitlines()
    assert history[0].split() == ["ATTEMPT", "OUTCOME", "WORKER", "STARTED", "ENDED", "ERROR"]
    assert history[1].split()[:2] == ["1", "failed"]
    assert history[1].endswith("RuntimeError: disk full")

    done = invoke(runner, "show", str(tasks["done"]))
    assert "result:\n  0" in done

    data = json.loads(invoke(runner, "show", str(tasks["failed"]), "--json"))
    assert data["args"] == ["disk full"]
    assert data["state"] == "failed"
    assert data["history"][0]["state"] == "failed"
    assert "RuntimeError: disk full" in data["error"]


def test_show_json_nested_too_deeply(runner: FlaskCliRunner, dsn: str) -> None:
    (task_id,) = sql_all(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, state, args, result)"
        " VALUES ('default', 'add', 'succeeded', (repeat('[', 5000) || repeat(']', 5000))::jsonb,"
        " (repeat('[', 5000) || '7' || repeat(']', 5000))::jsonb) RETURNING id",
    )[0]
    out = invoke(runner, "show", str(task_id))
    assert "\nargs:\n  <JSON nested too deeply to show, 10000 bytes>\n" in out
    assert "\nresult:\n  <JSON nested too deeply to show, 10001 bytes>" in out
    data = json.loads(invoke(runner, "show", str(task_id), "--json"))
    assert data["args"] == "<JSON nested too deeply to show, 10000 bytes>"
    assert data["kwargs"] == {}


def test_show_an_unknown_task_fails(runner: FlaskCliRunner) -> None:
    out = invoke(runner, "show", "424242", code=1)
    assert "no task with id 424242" in out


@pytest.mark.parametrize(
    "args",
    [
        ["show", "99999999999999999999"],
        ["cancel", "99999999999999999999"],
        ["tasks", "--before", "99999999999999999999"],
    ],
    ids=lambda a: a[0],
)
def test_ids_out_of_range_fail_with_a_message(runner: FlaskCliRunner, args: list[str]) -> None:
    out = invoke(runner, *args, code=1)
    assert "99999999999999999999 is out of range" in out and "9223372036854775807" in out


def test_retry_one_task_then_all_failed(
    app: Flask, q: PgTq, runner: FlaskCliRunner, tasks: dict[str, int]
) -> None:
    out = invoke(runner, "retry", str(tasks["failed"]))
    assert f"task {tasks['failed']} queued again" in out
    with app.app_context():
        task = q.get_task(tasks["failed"])
        assert (task.state, task.attempts) == (State.QUEUED, 0)
        q.pop("risky").run()

    assert "is succeeded" in invoke(runner, "retry", str(tasks["done"]), code=1)
    assert "is queued" in invoke(runner, "retry", str(tasks["waiting"]), code=1)
    assert "0 failed tasks queued again" in invoke(
        runner, "retry", "--failed", "--queue", "default"
    )
    assert "1 failed task queued again" in invoke(runner, "retry", "--failed")


@pytest.mark.parametrize(
    "args", [[], ["1", "--failed"], ["1", "--queue", "x"]], ids=["nothing", "both", "queue"]
)
def test_retry_usage_errors(runner: FlaskCliRunner, args: list[str]) -> None:
    invoke(runner, "retry", *args, code=2)


def test_cancel_queued_and_running(
    app: Flask, q: PgTq, runner: FlaskCliRunner, tasks: dict[str, int]
) -> None:
    assert f"task {tasks['waiting']} cancelled" in invoke(runner, "cancel", str(tasks["waiting"]))
    with app.app_context():
        running = q.push("add", 1, 2)
        q.pop()
    out = invoke(runner, "cancel", str(running.id))
    assert "cancel requested" in out
    assert "only waiting, queued or running" in invoke(runner, "cancel", str(tasks["done"]), code=1)
    assert "no task with id" in invoke(runner, "cancel", "999999", code=1)


def test_delete_a_finished_task(runner: FlaskCliRunner, tasks: dict[str, int]) -> None:
    assert "deleted" in invoke(runner, "delete", str(tasks["done"]))
    assert "cancel it first" in invoke(runner, "delete", str(tasks["waiting"]), code=1)


def test_purge_old_finished_tasks(runner: FlaskCliRunner, tasks: dict[str, int], dsn: str) -> None:
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET finished_at = now() - interval '8 days' WHERE state = 'succeeded'",
    )
    assert "would delete 2 tasks" in invoke(
        runner, "purge", "--state", "succeeded", "--older-than", "7d", "--dry-run"
    )
    assert "deleted 0 tasks" in invoke(runner, "purge", "--state", "failed", "--older-than", "1h")
    assert "deleted 2 tasks" in invoke(
        runner, "purge", "--state", "succeeded", "--state", "failed", "--older-than", "7d"
    )
    assert sorted(r[0] for r in sql_all(dsn, "SELECT id FROM pgtq_tasks")) == sorted(
        [tasks["waiting"], tasks["failed"]]
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than", "7d"],
        ["--state", "succeeded"],
        ["--state", "queued", "--older-than", "1d"],
        ["--state", "succeeded", "--older-than", "soon"],
    ],
    ids=["no-state", "no-age", "not-final", "bad-age"],
)
def test_purge_usage_errors(runner: FlaskCliRunner, args: list[str]) -> None:
    invoke(runner, "purge", *args, code=2)


def test_workers_table_and_json(app: Flask, q: PgTq, runner: FlaskCliRunner) -> None:
    assert "no workers registered" in invoke(runner, "workers")
    with app.app_context():
        task = q.push("add", 1, 1)
        q.pop()
    out = invoke(runner, "workers")
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "ID",
        "HOST",
        "PID",
        "QUEUES",
        "THREADS",
        "HEARTBEAT",
        "STATE",
        "RUNNING",
    ]
    assert "(pop)" in row and "alive" in row and f"{task.id} add" in row
    (worker,) = json.loads(invoke(runner, "workers", "--json"))
    assert worker["alive"] is True
    assert worker["tasks"][0]["id"] == task.id


# -- task data is untrusted text ------------------------------------------------------

#: Sets the terminal's title and rings the bell (OSC ... BEL), then turns text
#: red with a one-byte CSI (0x9b): what a task's error must not do to a terminal.
NASTY = "\x1b]0;pwned\x07 and \x9b31m red \x7f\u202e"
#: Control characters (but newline and tab) as raw bytes.
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]")


def test_control_characters_in_task_data_are_printed_escaped(
    app: Flask, q: PgTq, runner: FlaskCliRunner, dsn: str
) -> None:
    with app.app_context():
        failed = q.push("boom", NASTY).id
        q.pop("risky").run()
    (planted,) = sql_all(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, args, kwargs, state, result, error, history)"
        " SELECT t, t, jsonb_build_array(t), jsonb_build_object(t, 1), 'succeeded',"
        " to_jsonb(t), t, jsonb_build_array(jsonb_build_object("
        " 'attempt', 1, 'state', t, 'worker', t, 'error', t))"
        " FROM (SELECT %(t)s::text AS t) AS nasty RETURNING id",
        {"t": f"multi\nline\t{NASTY}"},
    )[0]

    outputs = {
        "tasks": invoke(runner, "tasks"),
        "status": invoke(runner, "status"),
        "show failed": invoke(runner, "show", str(failed)),
        "show planted": invoke(runner, "show", str(planted)),
        "show --json": invoke(runner, "show", str(planted), "--json"),
        "tasks --json": invoke(runner, "tasks", "--json"),
        "status --json": invoke(runner, "status", "--json"),
    }
    for command, out in outputs.items():
        assert not RAW_CONTROL.findall(out), f"raw control characters in {command}: {out!r}"
    assert r"RuntimeError: \x1b]0;pwned\x07 and \x9b31m red \x7f\u202e" in outputs["tasks"]
    assert r"multi\x0aline\x09\x1b]0;pwned" in outputs["status"]  # one line per queue
    # A traceback keeps its lines; a table cell stays on one line.
    assert "\n  Traceback (most recent call last):\n" in outputs["show failed"]
    assert r"\x9b31m" in outputs["show planted"].split("\nresult:\n", 1)[1]
    # JSON escapes decode to the stored text.
    data = json.loads(outputs["show --json"])
    assert data["name"] == data["error"] == data["result"] == f"multi\nline\t{NASTY}"
    assert json.loads(outputs["tasks --json"])["total"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["tasks"],
        ["show", "1"],
        ["retry", "1"],
        ["cancel", "1"],
        ["workers"],
        ["purge", "--state", "succeeded", "--older-than", "1d"],
    ],
    ids=lambda a: a[0],
)
def test_commands_fail_cleanly_when_the_database_is_unreachable(args: list[str]) -> None:
    app = make_app(
        f"host=127.0.0.1 port=1 user=alice password={PASSWORD} dbname=shop connect_timeout=5"
    )
    PgTq(app)
    result = app.test_cli_runner().invoke(args=["pgtq", *args])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output


@pytest.mark.slow
def test_cancel_stops_a_task_running_in_a_real_worker(
    dsn: str, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTQ_TEST_APP_DSN", dsn)
    app = worker_app.create_app()
    with app.app_context():
        task = worker_app.stubborn.push("cancel-me")
    start_worker(settings={"PGTQ_CANCEL_GRACE": 0.5})
    poll_until(lambda: runs(dsn, "cancel-me"), 10, 0.02, "the task to start")

    out = invoke(app.test_cli_runner(), "cancel", str(task.id))
    assert "cancel requested" in out
    poll_until(
        lambda: (
            sql_all(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task.id,))
            == [("cancelled",)]
        ),
        15,
        0.05,
        "the worker to stop the task",
    )
    assert [r["event"] for r in runs(dsn, "cancel-me")] == ["started"]


def test_show_traceback_prints_every_attempts_error_in_full(
    app: Flask, q: PgTq, runner: FlaskCliRunner
) -> None:
    @q.handler(max_attempts=2)
    def deep(step: int) -> None:
        from flask_pgtq import current_task

        def inner() -> None:
            raise ValueError(f"attempt {current_task.attempts} went wrong")

        inner()

    with app.app_context():
        task_id = deep.push(1).id
        q.drain(now=True)
    short = invoke(runner, "show", str(task_id))
    assert "ValueError: attempt 1 went wrong" in short  # the history's one line
    assert short.count("in inner") == 1  # the last error's traceback only
    full = invoke(runner, "show", str(task_id), "--traceback")
    first = full.split("\nattempt 1 (retried):\n", 1)[1]
    assert first.startswith("  Traceback (most recent call last)")
    assert "in inner" in first.split("\nattempt 2")[0]
    assert "ValueError: attempt 1 went wrong" in first.split("\nattempt 2")[0]
    assert "\nattempt 2 (failed):\n  Traceback" in full
    assert full.count("in inner") == 3  # the error, and each attempt in full
