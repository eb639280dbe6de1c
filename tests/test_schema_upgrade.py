"""Upgrades of a database with tasks in it: a database is built at each earlier
schema version (the migrations up to it), filled with rows as that version wrote
them, and upgraded as ``flask pgtq init-db`` does.  Every row keeps its values,
the new columns hold their documented defaults, and the queue works on the old
tasks as on new ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from flask import Flask

from flask_pgtq import PgTq, State, TaskFailed, schema
from flask_pgtq.task import COLUMNS
from tests.helpers import sql_all
from tests.old_rows import LIVE_WORKER, TRACEPARENT, contents, fill

#: Every version a database can be upgraded from: all but the latest.
EARLIER_VERSIONS = [m.version for m in schema.migrations()[:-1]]

#: The value each column added by a migration gives the rows already there,
#: as the migration (and :class:`~flask_pgtq.Task`, for the columns it holds)
#: documents it.  A migration that adds a column adds it here.
NEW_COLUMN_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgtq_tasks": {
        "unique_key": None,  # 0002
        "unique_until": None,
        "snoozes": 0,  # 0005
        "key": None,
        "workflow_id": None,  # 0006
        "waiting_for": 0,
        "run_on_failure": False,
        "pass_result": None,
        "meta": None,  # 0007
        "tags": [],  # 0008
        "limited": False,  # 0009
    },
    "pgtq_workers": {"stopping_since": None},  # 0004
}


@pytest.fixture(params=EARLIER_VERSIONS, ids="from-{:04d}".format)
def version(request: pytest.FixtureRequest) -> int:
    """The schema version the test's database starts at."""
    return int(request.param)


@pytest.fixture
def dsn(empty_dsn: str, version: int) -> str:
    """In this module, the test's database is at the schema *version*: the
    migrations up to it applied, none after (``queue_settings``, ``app`` and
    ``q`` use it as in other modules)."""
    conn = psycopg2.connect(empty_dsn)
    try:
        assert schema.upgrade(conn, target=version)[-1] == version
    finally:
        conn.close()
    return empty_dsn


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    # A rescued task is due again at once.
    return {"PGTQ_RETRY_BACKOFF": 0}


@pytest.fixture
def q(q: PgTq) -> Iterator[PgTq]:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    yield q


def init_db(app: Flask, version: int) -> None:
    """Upgrade as ``flask pgtq init-db`` does, and check what it said."""
    result = app.test_cli_runner().invoke(args=["pgtq", "init-db"])
    assert result.exit_code == 0, result.output
    later = [m.version for m in schema.migrations() if m.version > version]
    assert result.output == f"applied migrations: {', '.join(map(str, later))}\n"


# -- the tests ------------------------------------------------------------------------


def test_every_row_keeps_its_values_and_new_columns_get_their_defaults(
    app: Flask, q: PgTq, dsn: str, version: int
) -> None:
    ids = fill(dsn, version)
    before = contents(dsn)
    assert sorted(row["id"] for row in before["pgtq_tasks"]) == sorted(ids.values())

    init_db(app, version)

    after = contents(dsn)
    added: dict[str, set[str]] = {}
    for table, rows in before.items():
        assert rows, f"fill() writes no row in {table}"
        assert [{column: row[column] for column in rows[0]} for row in after[table]] == rows, table
        added[table] = set(after[table][0]) - set(rows[0])
        defaults = NEW_COLUMN_DEFAULTS.get(table, {})
        assert added[table] <= set(defaults), f"{table}: add {added[table] - set(defaults)} above"
        for column in added[table]:
            values = [row[column] for row in after[table]]
            assert values == [defaults[column]] * len(values), (table, column)
    # The tasks as the queue reads them.
    for task_id in ids.values():
        task = q.get_task(task_id)
        for column in added["pgtq_tasks"] & set(COLUMNS):
            assert getattr(task, column) == NEW_COLUMN_DEFAULTS["pgtq_tasks"][column], column
    assert sql_all(dsn, "SELECT version FROM pgtq_schema_version ORDER BY 1") == [
        (m.version,) for m in schema.migrations()
    ]


def test_the_upgraded_queue_runs_reads_and_takes_the_old_tasks(
    app: Flask, q: PgTq, dsn: str, version: int
) -> None:
    ids = fill(dsn, version)
    init_db(app, version)

    # Unique keys still hold: a push of a held key returns the old holder.
    if version >= 2:
        add = q.handlers["add"]
        queued = add.options(unique_key="add:1+1").push(1, 1)
        assert (queued.id, queued.is_new) == (ids["unique_queued"], False)
        held = add.options(unique_key="report:2026-10").push(0, 0)
        assert (held.id, held.is_new) == (ids["unique_held"], False)

    # The dead worker's task goes back to the queue; the live worker's stay.
    rescued = q.app_queue().store.rescue()
    assert [(r["id"], r["state"]) for r in rescued] == [(ids["lost"], "queued")]

    ran = {task.id: task for task in q.drain()}
    expected = {ids["ready"]: 5, ids["ready_by_kwargs"]: 42, ids["lost"]: 15}
    if version >= 2:
        expected[ids["unique_queued"]] = 2
    if version >= 6:
        # The chain's second step was released by its first and got its result.
        expected[ids["chain_first"]] = 3
        expected[ids["chain_second"]] = 13
    assert {i: (t.state, t.result) for i, t in ran.items()} == {
        i: (State.SUCCEEDED, result) for i, result in expected.items()
    }
    assert ran[ids["lost"]].attempts == 2
    assert [h["state"] for h in ran[ids["lost"]].history] == ["lost"]
    assert next(iter(ran)) == ids["ready"], "the highest priority first"
    assert q.pop() is None, "the tasks due later stay queued"
    for role in ("running", "cancel_requested"):
        task = q.get_task(ids[role])
        assert (task.state, task.locked_by) == (State.RUNNING, LIVE_WORKER)
    assert q.get_task(ids["cancel_requested"]).cancel_requested
    assert q.get_task(ids["running"]).progress == {"done": 40, "total": 100}

    # Results and errors of old tasks, read as new ones are.
    assert q.get_task(ids["succeeded"]).wait(timeout=5) == 9
    assert q.get_task(ids["succeeded_after_a_retry"]).wait(timeout=5) == {
        "rows": [1, 2, 3],
        "title": "Zoë's report",
        "ok": True,
        "none": None,
    }
    with pytest.raises(TaskFailed) as failed:
        q.get_task(ids["failed"]).wait(timeout=5)
    assert failed.value.error.endswith("TypeError: unsupported operand")
    assert len(failed.value.task.history) == 3
    with pytest.raises(TaskFailed, match="cancelled by operator"):
        q.get_task(ids["cancelled"]).wait(timeout=5)
    if version >= 6:
        workflow = q.get_task(ids["chain_first"]).workflow_id
        assert workflow is not None
        assert q.get_workflow(workflow).wait(timeout=5) == 13
        assert q.get_task(ids["on_finish"]).state is State.WAITING
    if version >= 7:
        assert q.get_task(ids["traced"]).meta == {"trace": {"traceparent": TRACEPARENT}}

    # New tasks: ids go on after the old ones, and they run.
    new = q.handlers["add"].push(20, 22)
    assert new.id > max(ids.values())
    assert [(t.id, t.result) for t in q.drain()] == [(new.id, 42)]
