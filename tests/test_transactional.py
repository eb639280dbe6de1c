"""Pushing inside the caller's transaction: psycopg2, SQLAlchemy and
Flask-SQLAlchemy.  The task exists if and only if the transaction commits."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator

import psycopg2
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from flask_pgtq import PgTq
from tests.helpers import sql_all, sql_one


@pytest.fixture
def q(standalone_q: PgTq) -> PgTq:
    @standalone_q.handler()
    def welcome(user: str) -> str:
        return f"hello {user}"

    return standalone_q


def task_count(dsn: str) -> int:
    return sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0]


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    connection = psycopg2.connect(dsn)
    connection.cursor().execute("CREATE TABLE IF NOT EXISTS users (name text)")
    connection.commit()
    yield connection
    connection.close()


def test_a_rolled_back_transaction_never_had_the_task(q, dsn, conn) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users VALUES ('ada')")
    task = q.handlers["welcome"].options(connection=conn).push("ada")
    assert task.id > 0
    assert task_count(dsn) == 0, "visible before commit"
    conn.rollback()
    assert task_count(dsn) == 0
    assert q.pop() is None


def test_a_committed_transaction_has_the_task_and_wakes_workers_at_commit(q, dsn, conn) -> None:
    listener = psycopg2.connect(dsn)
    listener.autocommit = True
    listener.cursor().execute("LISTEN pgtq")
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO users VALUES ('bob')")
        task = q.handlers["welcome"].options(connection=conn).push("bob")
        assert not select.select([listener], [], [], 0.3)[0], "woken before the commit"
        conn.commit()
        assert select.select([listener], [], [], 5)[0], "not woken by the commit"
        listener.poll()
        assert [n.payload for n in listener.notifies] == ["default"]
    finally:
        listener.close()
    assert task_count(dsn) == 1
    claimed = q.pop()
    assert claimed.id == task.id
    assert claimed.run().result == "hello bob"


def test_a_long_open_transaction_hides_the_task_until_it_commits(q, dsn, conn) -> None:
    q.handlers["welcome"].options(connection=conn).push("slow")
    # Meanwhile the queue works as usual for everybody else.
    other = q.handlers["welcome"].push("fast")
    assert q.pop().id == other.id
    assert q.pop() is None, "an uncommitted task was claimed"
    conn.commit()
    assert q.pop().args == ["slow"]


def test_batch_push_joins_the_transaction(q, dsn, conn) -> None:
    ids = q.handlers["welcome"].options(connection=conn).push_many([("a",), ("b",)])
    assert len(ids) == 2 and task_count(dsn) == 0
    conn.rollback()
    assert task_count(dsn) == 0


def test_sqlalchemy_connection_and_session(q, dsn) -> None:
    engine = sa.create_engine(
        sa.engine.make_url("postgresql+psycopg2://").set(
            query=dict(psycopg2.extensions.parse_dsn(dsn))
        )
    )
    try:
        with engine.connect() as connection:
            q.handlers["welcome"].options(connection=connection).push("sa-rollback")
            connection.rollback()
            q.handlers["welcome"].options(connection=connection).push("sa-commit")
            connection.commit()
        with Session(engine) as session:
            q.handlers["welcome"].options(connection=session).push("session-rollback")
            session.rollback()
            q.handlers["welcome"].options(connection=session).push("session-commit")
            session.commit()
    finally:
        engine.dispose()
    (pushed,) = sql_one(dsn, "SELECT array_agg(args->>0 ORDER BY id) FROM pgtq_tasks")
    assert pushed == ["sa-commit", "session-commit"]


def test_flask_sqlalchemy_db_session(dsn) -> None:
    app = Flask(__name__)
    params = psycopg2.extensions.parse_dsn(dsn)
    app.config["SQLALCHEMY_DATABASE_URI"] = sa.engine.make_url("postgresql+psycopg2://").set(
        query=dict(params)
    )
    app.config["PGTQ_DSN"] = dsn
    db = SQLAlchemy(app)
    q = PgTq(app)

    class User(db.Model):  # type: ignore[name-defined]
        __tablename__ = "fsa_users"
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String)

    @q.handler()
    def greet(user_id: int) -> None:
        pass

    with app.app_context():
        db.create_all()
        user = User(name="ada")
        db.session.add(user)
        db.session.flush()
        greet.options(connection=db.session).push(user.id)
        db.session.rollback()
        assert task_count(dsn) == 0
        user = User(name="bob")
        db.session.add(user)
        db.session.flush()
        task = greet.options(connection=db.session).push(user.id)
        db.session.commit()
        assert q.get_task(task.id).args == [user.id]
        db.engine.dispose()


def test_a_push_that_fails_inside_the_transaction_is_a_clear_error(q, conn) -> None:
    from flask_pgtq import DatabaseError

    with conn.cursor() as cur:
        with pytest.raises(psycopg2.Error):
            cur.execute("SELECT 1/0")
    with pytest.raises(DatabaseError, match="aborted"):
        q.handlers["welcome"].options(connection=conn).push("doomed")
    conn.rollback()


def test_not_a_connection_is_refused(q) -> None:
    with pytest.raises(TypeError, match="psycopg2 connection"):
        q.handlers["welcome"].options(connection=object()).push("x")


def test_concurrent_transactions_each_see_only_their_own(q, dsn) -> None:
    barrier = threading.Barrier(4)
    seen: dict[int, list[list[str]]] = {}

    def pusher(n: int, commit: bool) -> None:
        connection = psycopg2.connect(dsn)
        try:
            q.handlers["welcome"].options(connection=connection).push(f"{n}:{commit}")
            # Every pusher has pushed and none has ended its transaction yet.
            barrier.wait(10)
            with connection.cursor() as cur:
                cur.execute("SELECT args FROM pgtq_tasks ORDER BY id")
                seen[n] = [row[0] for row in cur.fetchall()]
            barrier.wait(10)
            connection.commit() if commit else connection.rollback()
        finally:
            connection.close()

    threads = [threading.Thread(target=pusher, args=(n, n % 2 == 0)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {n: [[f"{n}:{n % 2 == 0}"]] for n in range(4)}
    committed = sorted(row[0][0] for row in sql_all(dsn, "SELECT args FROM pgtq_tasks"))
    assert committed == ["0:True", "2:True"]


# -- signals and record_pushes wait for the commit ----------------------------------------


def test_signals_and_record_pushes_report_only_committed_pushes(dsn) -> None:
    from flask_pgtq import signals
    from flask_pgtq.testing import record_pushes

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = sa.engine.make_url("postgresql+psycopg2://").set(
        query=dict(psycopg2.extensions.parse_dsn(dsn))
    )
    app.config["PGTQ_DSN"] = dsn
    db = SQLAlchemy(app)
    q = PgTq(app)
    announced: list[list[str]] = []

    @q.handler()
    def greet(name: str) -> None:
        pass

    def pushed(sender, task, **extra) -> None:
        announced.append(task.args)

    with (
        app.app_context(),
        signals.task_pushed.connected_to(pushed, app),
        record_pushes(app) as recorded,
    ):
        greet.options(connection=db.session).push("rolled back")
        greet.options(connection=db.session).push_many([("rolled back too",)])
        db.session.rollback()
        greet.options(connection=db.session).push("committed")
        greet.options(connection=db.session).push_many([("batch",)])
        assert announced == [] and recorded == [], "reported before the commit"
        with db.session.begin_nested():
            greet.options(connection=db.session).push("released savepoint")
        savepoint = db.session.begin_nested()
        greet.options(connection=db.session).push("rolled back savepoint")
        savepoint.rollback()
        db.session.commit()
        assert announced == [["committed"], ["released savepoint"]]
        assert [p.args for p in recorded] == [["committed"], ["batch"], ["released savepoint"]]
        stored = sql_all(dsn, "SELECT id FROM pgtq_tasks ORDER BY id")
        assert [p.id for p in recorded] == [row[0] for row in stored]
        # A session closed without a commit (the app context's end) reports nothing.
        greet.options(connection=db.session).push("never committed")
        db.session.close()
        db.session.commit()
        assert len(recorded) == 3
        db.engine.dispose()


def test_signals_of_a_sqlalchemy_connection_wait_for_its_commit(q, dsn) -> None:
    from flask_pgtq.testing import record_pushes

    engine = sa.create_engine(
        sa.engine.make_url("postgresql+psycopg2://").set(
            query=dict(psycopg2.extensions.parse_dsn(dsn))
        )
    )
    try:
        with record_pushes(q) as recorded, engine.connect() as connection:
            q.handlers["welcome"].options(connection=connection).push("rolled back")
            connection.rollback()
            q.handlers["welcome"].options(connection=connection).push("committed")
            assert recorded == []
            connection.commit()
        assert [p.args for p in recorded] == [["committed"]]
    finally:
        engine.dispose()


def test_a_psycopg2_connection_has_no_commit_hook_so_signals_come_at_push(q, conn) -> None:
    from flask_pgtq.testing import record_pushes

    with record_pushes(q) as recorded:
        q.handlers["welcome"].options(connection=conn).push("at push")
        assert [p.args for p in recorded] == [["at push"]]
        conn.rollback()
