"""``flask pgtq ...``: init-db and a burst worker, run through Flask's CLI runner."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from flask_pgtq import PgTq, schema, worker
from tests.helpers import sql_all

PASSWORD = "canary-Pa55word"


@pytest.fixture(autouse=True)
def package_logger() -> Iterator[None]:
    """Undo what ``pgtq worker`` does to the ``flask_pgtq`` logger in-process
    (a handler on the runner's stderr, which is closed after the invoke)."""
    logger = logging.getLogger("flask_pgtq")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def make_app(dsn: str) -> Flask:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    app.config["PGTQ_POLL_INTERVAL"] = 0.05
    app.config["PGTQ_RETRY_BACKOFF"] = 0.05
    app.config["PGTQ_SHUTDOWN_GRACE"] = 5
    return app


def test_init_db_applies_then_says_up_to_date(empty_dsn: str) -> None:
    app = make_app(empty_dsn)
    PgTq(app)
    runner = app.test_cli_runner()

    first = runner.invoke(args=["pgtq", "init-db"])
    assert first.exit_code == 0, first.output
    versions = [m.version for m in schema.migrations()]
    assert f"applied migrations: {', '.join(map(str, versions))}" in first.output

    second = runner.invoke(args=["pgtq", "init-db"])
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output

    assert sql_all(empty_dsn, "SELECT version FROM pgtq_schema_version ORDER BY 1") == [
        (v,) for v in versions
    ]


@pytest.mark.parametrize(
    "unreachable",
    [
        f"host=127.0.0.1 port=1 user=alice password={PASSWORD} dbname=shop connect_timeout=5",
        f"postgresql://alice:{PASSWORD}@127.0.0.1:1/shop?connect_timeout=5",
    ],
    ids=["key-value", "uri"],
)
def test_init_db_on_an_unreachable_database_fails_clearly(unreachable: str) -> None:
    app = make_app(unreachable)
    PgTq(app)
    result = app.test_cli_runner().invoke(args=["pgtq", "init-db"])
    assert result.exit_code != 0
    assert "Error:" in result.output
    assert "connect" in result.output.lower()
    assert "Traceback" not in result.output
    assert PASSWORD not in result.output


def test_init_db_without_the_extension_says_so(dsn: str) -> None:
    app = make_app(dsn)
    PgTq(app)
    bare = Flask("bare")
    bare.cli.add_command(app.cli.commands["pgtq"])
    result = bare.test_cli_runner().invoke(args=["pgtq", "init-db"])
    assert result.exit_code != 0
    assert "PgTq(app)" in result.output


@pytest.fixture
def app(dsn: str) -> Flask:
    """No app context: the commands run in their own, as under ``flask``."""
    return make_app(dsn)


@pytest.fixture
def q(q: PgTq) -> PgTq:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    @q.handler(queue="other")
    def elsewhere() -> str:
        return "other"

    return q


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def test_burst_worker_runs_ready_tasks_then_exits(
    app: Flask, q: PgTq, runner: FlaskCliRunner, dsn: str
) -> None:
    with app.app_context():
        ids = [q.push("add", i, i).id for i in range(5)]
        later = q.handlers["add"].options(delay=3600).push(0, 0).id
    result = runner.invoke(args=["pgtq", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    rows = sql_all(dsn, "SELECT id, state, result FROM pgtq_tasks ORDER BY id")
    assert rows == [*[(i, "succeeded", 2 * n) for n, i in enumerate(ids)], (later, "queued", None)]


def test_the_worker_shortens_the_thread_switch_interval_while_it_runs(
    app: Flask, q: PgTq, runner: FlaskCliRunner
) -> None:
    """Handler threads hold the GIL for at most 0.5 ms before the main thread
    (which sends the rounds) gets it; the interpreter's own interval is
    restored when the worker returns."""
    seen: list[float] = []

    @q.handler()
    def interval() -> None:
        seen.append(sys.getswitchinterval())

    before = sys.getswitchinterval()
    with app.app_context():
        q.push("interval")
    result = runner.invoke(args=["pgtq", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    assert seen == [worker.SWITCH_INTERVAL] and worker.SWITCH_INTERVAL < before
    assert sys.getswitchinterval() == before


def test_an_outcome_that_cannot_be_encoded_fails_its_task_not_the_worker(
    app: Flask, q: PgTq, runner: FlaskCliRunner, dsn: str
) -> None:
    """A middleware left meta that is not JSON: the handler thread, which
    encodes outcomes, must not die of it; the attempt is recorded as failed
    and the next task runs."""

    @q.middleware
    def bad_meta(task, call_next):  # type: ignore[no-untyped-def]
        if task.args == [1, 1]:
            task.meta, task.meta_changed = {"not json": object()}, True
        return call_next()

    with app.app_context():
        bad = q.push("add", 1, 1).id
        good = q.push("add", 2, 2).id
    result = runner.invoke(args=["pgtq", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    rows = {
        i: (state, error)
        for i, state, error in sql_all(dsn, "SELECT id, state, error FROM pgtq_tasks")
    }
    assert rows[good] == ("succeeded", None)
    assert rows[bad][0] == "failed"
    assert "meta could not be stored as JSON" in rows[bad][1]
    assert "(succeeded) is recorded as failed" in rows[bad][1]


def test_burst_worker_serves_the_queues_given(
    app: Flask, q: PgTq, runner: FlaskCliRunner, dsn: str
) -> None:
    with app.app_context():
        default_id = q.push("add", 1, 2).id
        other_id = q.push("elsewhere").id
    result = runner.invoke(args=["pgtq", "worker", "--burst", "--queue", "other"])
    assert result.exit_code == 0, result.output
    assert sql_all(dsn, "SELECT id, state FROM pgtq_tasks ORDER BY id") == [
        (default_id, "queued"),
        (other_id, "succeeded"),
    ]


def test_burst_worker_with_nothing_to_do_exits(runner: FlaskCliRunner, q: PgTq) -> None:
    result = runner.invoke(args=["pgtq", "worker", "--burst", "--concurrency", "2"])
    assert result.exit_code == 0, result.output


def test_worker_refuses_an_invalid_queue_name(runner: FlaskCliRunner, q: PgTq) -> None:
    result = runner.invoke(args=["pgtq", "worker", "--burst", "--queue", "two words"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "queue" in result.output


def test_worker_on_an_empty_database_says_to_run_init_db(empty_dsn: str) -> None:
    app = make_app(empty_dsn)
    PgTq(app)
    result = app.test_cli_runner().invoke(args=["pgtq", "worker", "--burst"])
    assert result.exit_code != 0
    assert "flask pgtq init-db" in result.output
