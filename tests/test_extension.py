"""The Flask extension: setup styles, per-app state, standalone use, Flask at the edge."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_pgtq import ConfigurationError, PgTq, State
from tests.helpers import sql_all, sql_one

ROOT = Path(__file__).resolve().parent.parent


def make_app(dsn: str, **config: object) -> Flask:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    app.config.update(config)
    return app


@pytest.fixture
def app(dsn: str) -> Flask:
    """No app context: the tests push one where they need it."""
    return make_app(dsn)


def count_tasks(dsn: str) -> int:
    row = sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")
    assert row is not None
    return int(row[0])


# -- setting up --------------------------------------------------------------------


def test_extension_with_the_app(app: Flask) -> None:
    q = PgTq(app)

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    assert "pgtq" in app.extensions
    with app.app_context():
        task = add.push(1, 2)
        assert q.get_task(task.id).args == [1, 2]


def test_app_extensions_holds_the_extension(app: Flask) -> None:
    # STYLE rule 1: init_app "stores itself in app.extensions['pgtq']", so
    # code holding only the app finds the extension there.
    q = PgTq(app)
    assert app.extensions["pgtq"] is q


def test_extension_with_an_app_factory(app: Flask) -> None:
    q = PgTq()

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    q.init_app(app)
    assert "pgtq" in app.extensions
    with app.app_context():
        task = add.push(1, 2)
        assert q.get_task(task.id).args == [1, 2]


def test_second_init_app_on_the_same_app_is_refused(app: Flask) -> None:
    q = PgTq(app)
    with pytest.raises(RuntimeError, match="already registered"):
        q.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        PgTq(app)


def test_init_app_reads_and_validates_the_config(dsn: str) -> None:
    app = make_app(dsn, PGTQ_QUEUE="emails", PGTQ_CONCURRENCY=3)
    q = PgTq(app)
    with app.app_context():
        assert q.config.queue == "emails"
        assert q.config.concurrency == 3
    with pytest.raises(ConfigurationError, match="PGTQ_CONCURRENCY"):
        PgTq(make_app(dsn, PGTQ_CONCURRENCY=0))
    with pytest.raises(ConfigurationError, match="PGTQ_DSN is not set"):
        PgTq(Flask(__name__))


def test_init_app_makes_no_connection() -> None:
    app = make_app("host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1")
    PgTq(app)  # the database is unreachable, and nothing noticed yet


def test_cli_commands_are_registered(app: Flask) -> None:
    PgTq(app)
    group = app.cli.commands["pgtq"]
    assert {"init-db", "worker"} <= set(group.commands)  # type: ignore[attr-defined]


def test_push_outside_an_app_context_says_to_use_one(app: Flask) -> None:
    q = PgTq(app)

    @q.handler()
    def noop() -> None:
        pass

    with pytest.raises(RuntimeError, match=r"app\.app_context\(\)"):
        noop.push()
    with pytest.raises(RuntimeError, match="application context"):
        q.pop()


def test_extension_not_registered_on_the_current_app(dsn: str) -> None:
    q = PgTq(make_app(dsn))
    other = make_app(dsn)
    with other.app_context(), pytest.raises(RuntimeError, match="init_app"):
        q.pop()


# -- two apps, two databases ---------------------------------------------------------


@pytest.fixture
def two_apps(dsn: str, empty_dsn: str) -> Iterator[tuple[PgTq, Flask, Flask]]:
    """One extension on two apps; app B's database is migrated here."""
    q = PgTq()

    @q.handler()
    def where(tag: str) -> str:
        return tag

    app_a, app_b = make_app(dsn), make_app(empty_dsn)
    q.init_app(app_a)
    q.init_app(app_b)
    with app_b.app_context():
        q.init_db()
    yield q, app_a, app_b


def test_each_app_pushes_to_its_own_database(
    two_apps: tuple[PgTq, Flask, Flask], dsn: str, empty_dsn: str
) -> None:
    q, app_a, app_b = two_apps
    with app_a.app_context():
        q.push("where", "a")
    with app_b.app_context():
        q.push("where", "b1")
        q.push("where", "b2")
    assert sql_all(dsn, "SELECT args FROM pgtq_tasks ORDER BY id") == [(["a"],)]
    assert sql_all(empty_dsn, "SELECT args FROM pgtq_tasks ORDER BY id") == [
        (["b1"],),
        (["b2"],),
    ]


def test_each_app_pops_from_its_own_database(two_apps: tuple[PgTq, Flask, Flask]) -> None:
    q, app_a, app_b = two_apps
    with app_a.app_context():
        pushed = q.push("where", "a")
    with app_b.app_context():
        assert q.pop() is None
    with app_a.app_context():
        task = q.pop()
        assert task is not None and task.id == pushed.id
        assert task.run().result == "a"


def test_each_app_keeps_its_own_settings(dsn: str, empty_dsn: str) -> None:
    q = PgTq()
    app_a = make_app(dsn, PGTQ_QUEUE="alpha")
    app_b = make_app(empty_dsn, PGTQ_QUEUE="beta")
    q.init_app(app_a)
    q.init_app(app_b)
    with app_a.app_context():
        assert q.config.queue == "alpha"
    with app_b.app_context():
        assert q.config.queue == "beta"


# -- standalone ------------------------------------------------------------------------


def test_standalone_push_pop_run(dsn: str) -> None:
    q = PgTq(dsn=dsn, queue="test_queue")

    @q.handler()
    def add_numbers(a: int, b: int) -> int:
        return a + b

    assert q.init_db() == []  # already migrated: nothing to do
    pushed = add_numbers.push(2, 3)
    assert pushed.queue == "test_queue"
    assert pushed.state == State.QUEUED
    task = q.pop()
    assert task is not None and task.id == pushed.id
    assert task.state == State.RUNNING
    done = task.run()
    assert done.state == State.SUCCEEDED
    assert done.result == 5
    assert q.get_task(pushed.id).result == 5
    assert q.pop() is None
    assert sql_one(dsn, "SELECT state, queue FROM pgtq_tasks") == ("succeeded", "test_queue")


def test_pgtq_order_queue_name_then_dsn(dsn: str) -> None:
    q = PgTq("test_queue", dsn)
    assert q.config.queue == "test_queue" and q.config.dsn == dsn
    assert PgTq("test_queue", dsn=dsn, max_attempts=5).config.max_attempts == 5
    assert PgTq(None, dsn).config.queue == "default"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("test_queue",), {}, "needs a DSN after the queue name"),
        (("test_queue", "dbname=q"), {"dsn": "dbname=r"}, "multiple values for argument 'dsn'"),
        (("test_queue", "dbname=q"), {"queue": "other"}, "got the queue twice"),
        (("dbname=q password=s3cret", "test_queue"), {}, "the queue name comes first"),
        ((42,), {}, "not int 42"),
        ((b"test_queue", "dbname=q"), {}, "not bytes"),
    ],
    ids=["no-dsn", "dsn-twice", "queue-twice", "swapped", "int", "bytes"],
)
def test_other_first_arguments_are_a_type_error(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message) as caught:
        PgTq(*args, **kwargs)
    assert "s3cret" not in str(caught.value)


def test_an_app_first_keeps_its_meaning(dsn: str) -> None:
    app = make_app(dsn)
    q = PgTq(app=app)
    assert app.extensions["pgtq"] is q
    with pytest.raises(ConfigurationError, match="not both"):
        PgTq(make_app(dsn), dsn)


def test_standalone_settings_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_LEASE"):
        PgTq(dsn="dbname=q", lease=-1)
    with pytest.raises(ConfigurationError, match="PGTQ_NO_SUCH_SETTING"):
        PgTq(dsn="dbname=q", no_such_setting=1)


def test_standalone_cannot_join_an_app(dsn: str) -> None:
    q = PgTq(dsn=dsn)
    with pytest.raises(ConfigurationError):
        q.init_app(make_app(dsn))
    with pytest.raises(ConfigurationError):
        PgTq(make_app(dsn), dsn=dsn)


def test_settings_as_keywords_need_a_dsn() -> None:
    with pytest.raises(ConfigurationError, match="app.config"):
        PgTq(queue="emails")


# -- Flask stays at the edge ----------------------------------------------------------

CORE_MODULES = [
    "flask_pgtq.queue",
    "flask_pgtq.worker",
    "flask_pgtq.runner",
    "flask_pgtq.connection",
    "flask_pgtq.config",
    "flask_pgtq.task",
    "flask_pgtq.schema",
    "flask_pgtq.middleware",
    "flask_pgtq.tracing",
    "flask_pgtq.health",
]


@pytest.mark.parametrize("module", [CORE_MODULES, ["flask_pgtq"]], ids=["core", "package"])
def test_core_does_not_import_flask(module: list[str]) -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {module!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'flask' or m.startswith('flask.'))\n"
        "print(leaked)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"flask was imported: {result.stdout}"
