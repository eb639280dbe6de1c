"""Testing helpers for users' own test suites."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from typing import Any

import pytest
from flask import Flask

from flask_pgtq import ArgumentsNotSerializable, PgTq, State
from flask_pgtq.testing import record_pushes
from tests.helpers import sql_all, sql_one


def make_app(dsn: str, **config) -> tuple[Flask, PgTq]:
    app = Flask(__name__)
    app.config.update(PGTQ_DSN=dsn, **config)
    return app, PgTq(app)


def test_eager_mode_runs_at_push_time_and_stores_nothing(dsn: str) -> None:
    app, q = make_app(dsn, PGTQ_EAGER=True)
    calls = []

    @q.handler()
    def add(a, b, scale=1):
        calls.append((a, b, scale))
        return (a + b) * scale

    with app.app_context():
        task = add.push(2, 3, scale=10)
        assert calls == [(2, 3, 10)]
        assert task.state is State.SUCCEEDED and task.result == 50
        assert add.push_many([(1, 1), (2, 2)]) == [0, 0]
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 0


def test_eager_mode_round_trips_arguments_through_json(dsn: str) -> None:
    app, q = make_app(dsn, PGTQ_EAGER=True)

    @q.handler()
    def inspect(value):
        return type(value).__name__

    with app.app_context():
        assert inspect.push((1, 2)).result == "list"  # a tuple arrives as a list
        with pytest.raises(ArgumentsNotSerializable):
            inspect.push(datetime.now())


def test_eager_mode_propagates_exceptions(dsn: str) -> None:
    app, q = make_app(dsn, PGTQ_EAGER=True)

    @q.handler()
    def boom():
        raise RuntimeError("in the handler")

    with app.app_context(), pytest.raises(RuntimeError, match="in the handler"):
        boom.push()


def test_drain_runs_everything_ready_through_sql(dsn: str) -> None:
    app, q = make_app(dsn)

    @q.handler()
    def fan_out(n: int) -> int:
        for i in range(n):
            leaf.push(i)
        return n

    @q.handler()
    def leaf(i: int) -> int:
        return i * i

    with app.app_context():
        fan_out.push(3)
        later = leaf.options(delay=3600).push(99)
        ran = q.drain()
        assert [t.name for t in ran] == ["fan_out", "leaf", "leaf", "leaf"]
        assert [t.result for t in ran] == [3, 0, 1, 4]
        assert q.get_task(later.id).state is State.QUEUED
        assert q.drain() == []


def test_record_pushes_sees_single_and_batch_pushes(dsn: str) -> None:
    app, q = make_app(dsn)

    @q.handler()
    def send(to: str) -> None:
        pass

    @app.post("/signup")
    def signup():
        send.push("ada@example.com")
        send.push_many([("b@example.com",), ("c@example.com",)])
        return "ok"

    with record_pushes(app) as pushed:
        app.test_client().post("/signup")
    assert [(p.name, p.args) for p in pushed] == [
        ("send", ["ada@example.com"]),
        ("send", ["b@example.com"]),
        ("send", ["c@example.com"]),
    ]
    assert all(p.id > 0 for p in pushed)
    with record_pushes(app) as nothing:
        pass
    assert nothing == []


def test_drain_now_runs_retries_and_delayed_tasks_without_waiting(dsn: str) -> None:
    from flask_pgtq import Retry

    app, q = make_app(dsn)
    attempts: list[int] = []

    @q.handler(max_attempts=3, retry_backoff=3600)
    def flaky() -> str:
        from flask_pgtq import current_task

        attempts.append(current_task.attempts)
        if current_task.attempts == 1:
            raise RuntimeError("first attempt fails")
        if current_task.attempts == 2:
            raise Retry(delay=86400)
        return "third time lucky"

    @q.handler()
    def later() -> str:
        return "ran"

    with app.app_context():
        task = flaky.push()
        delayed = later.options(delay=3600).push()
        other_queue = later.options(queue="elsewhere", delay=3600).push()
        assert [t.state for t in q.drain()] == [State.QUEUED]  # waits an hour
        assert attempts == [1]
        ran = q.drain(now=True)
        assert attempts == [1, 2, 3]
        assert q.get_task(task.id).state is State.SUCCEEDED
        assert q.get_task(task.id).result == "third time lucky"
        assert q.get_task(delayed.id).state is State.SUCCEEDED
        assert {t.id for t in ran} == {task.id, delayed.id}
        assert q.get_task(other_queue.id).state is State.QUEUED  # not a drained queue


# -- PGTQ_EAGER runs a task as a worker would --------------------------------------------


def sqlalchemy_app(dsn: str, **config) -> tuple[Flask, PgTq, Any, Any]:
    """An app with Flask-SQLAlchemy on the test database, a ``notes`` table
    and the queue; returns ``(app, q, db, Note)``."""
    import psycopg2.extensions
    import sqlalchemy as sa
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = sa.engine.make_url("postgresql+psycopg2://").set(
        query=dict(psycopg2.extensions.parse_dsn(dsn))
    )
    app.config.update(PGTQ_DSN=dsn, **config)
    db = SQLAlchemy(app)
    q = PgTq(app)

    class Note(db.Model):  # type: ignore[name-defined]
        __tablename__ = "notes"
        id = db.Column(db.Integer, primary_key=True)
        text = db.Column(db.String, nullable=False)

    with app.app_context():
        db.create_all()
    return app, q, db, Note


def notes(dsn: str) -> list[str]:
    return [row[0] for row in sql_all(dsn, "SELECT text FROM notes ORDER BY id")]


def test_eager_runs_the_handler_in_a_fresh_app_context_like_a_worker(dsn: str) -> None:
    from flask import g

    from flask_pgtq import signals

    app, q, db, Note = sqlalchemy_app(dsn, PGTQ_EAGER=True)
    seen: dict[str, Any] = {}
    teardowns: list[str] = []
    events: list[str] = []

    @app.teardown_appcontext
    def note_teardown(exc: BaseException | None) -> None:
        teardowns.append("handler" if g.get("in_handler") else "request")

    @q.handler()
    def write(text: str) -> None:
        seen["view_user"] = g.get("user")
        g.in_handler = True
        db.session.add(Note(text=text))
        db.session.commit()  # commits the handler's work only

    @app.post("/")
    def view():
        g.user = "ada"
        db.session.add(Note(text="the view's own, rolled back"))
        db.session.flush()
        task = write.push("the handler's")
        seen["task"] = task
        db.session.rollback()
        return "ok"

    def record(name: str):
        def receive(sender: Any, **payload: Any) -> None:
            events.append(name)

        return receive

    receivers = {name: record(name) for name in ("task_pushed", "task_started", "task_succeeded")}
    with ExitStack() as stack:
        for name, receiver in receivers.items():
            stack.enter_context(getattr(signals, name).connected_to(receiver, app))
        assert app.test_client().post("/").status_code == 200
    assert notes(dsn) == ["the handler's"]
    assert seen["view_user"] is None, "the handler saw the view's g"
    # The handler's own context was torn down when it returned, before the view's.
    assert teardowns[0] == "handler" and teardowns.count("handler") == 1
    assert events == ["task_pushed", "task_started", "task_succeeded"]
    assert seen["task"].state is State.SUCCEEDED and seen["task"].attempts == 1
    with app.app_context():
        db.engine.dispose()


def test_eager_failure_sends_task_failed_and_propagates(dsn: str) -> None:
    from flask_pgtq import Retry, signals

    app, q = make_app(dsn, PGTQ_EAGER=True)
    failed: list[str] = []

    @q.handler(max_attempts=3)
    def later() -> None:
        raise Retry(delay=60, reason="not yet")

    def on_failed(sender: Any, task: Any, error: str, **extra: Any) -> None:
        failed.append(error)

    with signals.task_failed.connected_to(on_failed, app), app.app_context():
        with pytest.raises(Retry):
            later.push()
    assert failed == ["Retry: not yet"]


def test_eager_push_in_a_session_runs_at_its_commit_and_never_after_a_rollback(
    dsn: str,
) -> None:
    app, q, db, Note = sqlalchemy_app(dsn, PGTQ_EAGER=True)
    ran: list[list[str]] = []

    @q.handler()
    def count_notes(text: str) -> None:
        # A fresh session, as in a worker: it sees what the caller committed.
        ran.append([n.text for n in db.session.scalars(db.select(Note).order_by(Note.id))])

    with app.app_context():
        db.session.add(Note(text="kept"))
        task = count_notes.options(connection=db.session).push("a")
        assert ran == [] and task.state is State.QUEUED
        db.session.commit()
        assert ran == [["kept"]] and task.state is State.SUCCEEDED
        db.session.add(Note(text="dropped"))
        count_notes.options(connection=db.session).push("b")
        db.session.rollback()
        db.session.commit()
        assert ran == [["kept"]]
        db.engine.dispose()
