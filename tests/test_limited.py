"""The "limited" mark: tasks only the limited claim may take, out of the
plain claim's index (migration 0009), set at push and corrected by workers
when limits change."""

from __future__ import annotations

from typing import Any

from flask_pgtq import PgTq, chain
from flask_pgtq.queue import new_owner_id
from tests.helpers import poll_until, sql_all, sql_one
from tests.workers import runs


def marks(dsn: str) -> dict[str, list[bool]]:
    found: dict[str, list[bool]] = {}
    for name, limited in sql_all(dsn, "SELECT name, limited FROM pgtq_tasks ORDER BY id"):
        found.setdefault(name.rsplit(".", 1)[-1], []).append(limited)
    return found


def run_all_marked(dsn: str, start_worker: Any, limited: bool) -> None:
    """Mark every task *limited* (as an older push or another app would
    have), start a worker, wait for every task to succeed."""
    total = sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0]
    sql_all(dsn, "UPDATE pgtq_tasks SET limited = %s RETURNING 1", (limited,))
    start_worker("--concurrency", "3")
    poll_until(
        lambda: (
            sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE state = 'succeeded'")[0] == total
        ),
        30,
        0.05,
        "every task to run",
    )


def test_a_push_marks_the_tasks_of_limited_handlers(standalone_q: PgTq, dsn: str) -> None:
    q = standalone_q

    @q.handler(concurrency=2)
    def capped(n: int) -> int:
        return n

    @q.handler(key_concurrency=1)
    def per_key(n: int) -> int:
        return n

    @q.handler()
    def free(n: int) -> int:
        return n

    capped.push(1)
    capped.push_many([(2,), (3,)])
    capped.options(unique_key="u").push(4)
    per_key.options(key="a").push(5)
    per_key.push(6)  # no key: nothing limits it
    per_key.options(key="b").push_many([(7,)])
    free.push(8)
    free.options(key="c").push(9)  # a key means nothing without key limits
    chain(free.s(10), capped.s()).push()
    assert marks(dsn) == {
        "capped": [True, True, True, True, True],
        "per_key": [True, False, True],
        "free": [False, False, False],
    }


def test_unmarked_tasks_of_a_limited_handler_are_marked_and_run_within_the_limit(
    served_app, dsn, start_worker
):
    # Pushed before the handler had its limit (or by an app without it):
    # a worker marks them at start, then runs them one at a time.
    from tests.worker_app import exclusive

    ids = [exclusive.push(f"m{i}").id for i in range(3)]
    run_all_marked(dsn, start_worker, False)
    events = [r["event"] for r in runs(dsn) if r["tag"].startswith("m")]
    assert events == ["started", "finished"] * 3  # never two at once
    assert sorted(sql_all(dsn, "SELECT id FROM pgtq_tasks WHERE limited")) == [(i,) for i in ids]


def test_marked_tasks_of_a_handler_no_longer_limited_are_unmarked_and_run(
    served_app, dsn, start_worker
):
    # Marked when their handler had a limit it no longer has (or that this
    # app never gave it): the plain claim's index does not hold them until
    # a worker unmarks them.
    from tests.worker_app import mark

    ids = [mark.push(f"u{i}").id for i in range(3)]
    run_all_marked(dsn, start_worker, True)
    assert sql_all(dsn, "SELECT id FROM pgtq_tasks WHERE limited") == []
    assert sorted(r["task_id"] for r in runs(dsn)) == ids


def test_the_limited_claim_takes_only_marked_tasks(standalone_q: PgTq) -> None:
    # What the sync is for: an unmarked task of a limited handler waits for
    # it, and the plain claim never takes it (its handler is limited).
    q = standalone_q

    @q.handler(concurrency=5)
    def capped(n: int) -> int:
        return n

    marked = capped.push(1)
    unmarked = capped.push(2)
    store = q.app_queue().store
    with store.db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE pgtq_tasks SET limited = false WHERE id = %s", (unmarked.id,))
    owner = new_owner_id()
    store.register_owner(owner)
    assert capped.limit is not None
    assert [t.id for t in store.claim(owner, "default", 10, [capped.limit])] == [marked.id]
    assert store.sync_limited(["default"], [capped.limit]) == (1, 0)
    assert [t.id for t in store.claim(owner, "default", 10, [capped.limit])] == [unmarked.id]
