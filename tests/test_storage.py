"""Succeeded tasks live apart (schema 13): the outcome statement moves a
success to pgtq_tasks_succeeded, which pgtq_tasks reads by inheritance.
Real PostgreSQL; the queue core's statements, as a worker sends them."""

from __future__ import annotations

import json
import re

from flask_pgtq import PgTq, State, queries
from flask_pgtq.queue import new_owner_id
from flask_pgtq.values import Outcome
from tests.helpers import sql_all, sql_one


def claimed(q: PgTq, owner: str) -> list:
    store = q.app_queue().store
    store.register_owner(owner)
    return store.claim(owner, "default", 10)


def test_a_success_moves_the_row_with_every_column_it_had(standalone_q: PgTq, dsn: str) -> None:
    @standalone_q.handler(tags=["t1"])
    def carried(n: int) -> int:
        return n

    task = carried.options(key="k1", priority=3, max_attempts=5).push(7)
    owner = new_owner_id()
    (running,) = claimed(standalone_q, owner)
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET progress = '{\"p\": 1}', history = '[{\"h\": 1}]' WHERE id = %s",
        (task.id,),
    )
    (before,) = sql_one(dsn, "SELECT to_jsonb(t) FROM pgtq_tasks AS t WHERE id = %s", (task.id,))
    running.meta, running.meta_changed = {"m": 2}, True
    store = standalone_q.app_queue().store
    assert store.finish(owner, [Outcome(running, State.SUCCEEDED, result="[1, 2]")]) == {task.id}

    assert sql_one(dsn, "SELECT count(*) FROM ONLY pgtq_tasks WHERE id = %s", (task.id,)) == (0,)
    (after,) = sql_one(
        dsn, "SELECT to_jsonb(t) FROM pgtq_tasks_succeeded AS t WHERE id = %s", (task.id,)
    )
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"state", "finished_at", "locked_by", "result", "meta"}
    assert (after["state"], after["result"], after["meta"], after["locked_by"]) == (
        "succeeded",
        [1, 2],
        {"m": 2},
        None,
    )
    assert after["progress"] == {"p": 1} and after["history"] == [{"h": 1}]
    # Read back through pgtq_tasks, as every reader does.
    done = standalone_q.get_task(task.id)
    assert (done.state, done.result, done.key, done.tags) == (State.SUCCEEDED, [1, 2], "k1", ["t1"])
    assert task.wait(timeout=5) == [1, 2]


def test_the_move_names_every_column_of_pgtq_tasks(standalone_q: PgTq, dsn: str) -> None:
    # A column added to pgtq_tasks later reaches pgtq_tasks_succeeded by
    # inheritance, but the move writes only the columns it names: each must
    # be named, or a success would drop its value.
    columns = [
        name
        for (name,) in sql_all(
            dsn,
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pgtq_tasks'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
    ]
    text = queries.get("finish_and_claim")
    named = re.search(r"INSERT INTO pgtq_tasks_succeeded \(([^)]*)\)", text)
    assert named is not None
    assert [c.strip() for c in named.group(1).split(",")] == columns


def test_only_successes_move_the_other_outcomes_stay(standalone_q: PgTq, dsn: str) -> None:
    @standalone_q.handler()
    def several(n: int) -> int:
        return n

    for n in range(3):
        several.options(max_attempts=2).push(n)
    owner = new_owner_id()
    tasks = claimed(standalone_q, owner)
    store = standalone_q.app_queue().store
    outcomes = [
        Outcome(tasks[0], State.SUCCEEDED, result="0"),
        Outcome(tasks[1], State.FAILED, error="boom"),
        Outcome(tasks[2], State.QUEUED, error="again", delay=0),
    ]
    assert store.finish(owner, outcomes) == {t.id for t in tasks}
    assert sql_all(dsn, "SELECT tableoid::regclass::text, state FROM pgtq_tasks ORDER BY id") == [
        ("pgtq_tasks_succeeded", "succeeded"),
        ("pgtq_tasks", "failed"),
        ("pgtq_tasks", "queued"),
    ]


def test_a_lost_lease_moves_nothing(standalone_q: PgTq, dsn: str) -> None:
    @standalone_q.handler()
    def fenced(n: int) -> int:
        return n

    task = fenced.push(1)
    owner = new_owner_id()
    (running,) = claimed(standalone_q, owner)
    sql_all(
        dsn, "UPDATE pgtq_tasks SET locked_by = NULL, state = 'queued' WHERE id = %s", (task.id,)
    )
    store = standalone_q.app_queue().store
    assert store.finish(owner, [Outcome(running, State.SUCCEEDED, result="1")]) == set()
    assert sql_all(dsn, "SELECT tableoid::regclass::text, state FROM pgtq_tasks") == [
        ("pgtq_tasks", "queued")
    ]
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks_succeeded") == (0,)


def test_retention_and_delete_reach_moved_tasks(standalone_q: PgTq, dsn: str) -> None:
    @standalone_q.handler()
    def kept(n: int) -> int:
        return n

    ids = [kept.push(n).id for n in range(4)]
    owner = new_owner_id()
    tasks = claimed(standalone_q, owner)
    store = standalone_q.app_queue().store
    store.finish(owner, [Outcome(t, State.SUCCEEDED, result=json.dumps(t.id)) for t in tasks])
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks_succeeded") == (4,)
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET finished_at = now() - interval '30 days' WHERE id = ANY(%s)",
        (ids[:2],),
    )
    # (Retention keeps succeeded tasks 7 days by default.)
    assert store.prune() == 2
    standalone_q.admin.delete(ids[2])
    assert [i for (i,) in sql_all(dsn, "SELECT id FROM pgtq_tasks")] == [ids[3]]
    assert standalone_q.admin.tasks(state="succeeded").tasks[0].id == ids[3]
