"""The fixtures themselves: a server, and a fresh database per test."""

from __future__ import annotations

import psycopg2.extensions
import pytest

from flask_pgtq import schema
from tests.conftest import PgServer
from tests.helpers import poll_until, sql_all, sql_one


def test_server_is_postgresql_13_or_newer(pg_server: PgServer) -> None:
    row = sql_one(pg_server.dsn, "SHOW server_version_num")
    assert row is not None
    assert int(row[0]) >= 130000


def test_database_has_the_schema(dsn: str) -> None:
    assert sql_one(dsn, "SELECT to_regclass('pgtq_tasks') IS NOT NULL") == (True,)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (0,)


def test_database_is_at_the_latest_version(db: psycopg2.extensions.connection) -> None:
    assert schema.current_version(db) == schema.latest_version()


def test_empty_database_has_no_tables(empty_dsn: str) -> None:
    query = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert sql_one(empty_dsn, query) == (0,)


# The two tests below run in this order (pytest keeps file order): the second
# must not see the row of the first, whichever of them runs first.
@pytest.mark.parametrize("queue", ["first", "second"])
def test_databases_are_not_shared(db: psycopg2.extensions.connection, queue: str) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgtq_tasks")
        assert cur.fetchone() == (0,)
        cur.execute("INSERT INTO pgtq_tasks (queue, name) VALUES (%s, 'noop')", (queue,))


def test_each_test_gets_its_own_database(dsn: str, empty_dsn: str) -> None:
    assert dsn != empty_dsn
    assert sql_one(dsn, "SELECT current_database()") != sql_one(
        empty_dsn, "SELECT current_database()"
    )


def test_sql_all_returns_rows(dsn: str) -> None:
    assert sql_all(dsn, "SELECT generate_series(1, %s)", (3,)) == [(1,), (2,), (3,)]
    assert sql_all(dsn, "UPDATE pgtq_tasks SET priority = 1") == []


def test_poll_until_returns_the_first_truthy_value() -> None:
    calls = iter([0, None, "done"])
    assert poll_until(lambda: next(calls), timeout=1, interval=0) == "done"


def test_poll_until_raises_with_the_message_on_timeout() -> None:
    with pytest.raises(AssertionError, match="the queue to drain"):
        poll_until(lambda: False, timeout=0.05, message="the queue to drain")
