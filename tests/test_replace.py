"""Replace and debounce: a push that updates the queued task of its unique key."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from flask_pgtq import ConfigurationError, PgTq
from tests.helpers import sql_all, sql_one


@pytest.fixture
def q(standalone_q: PgTq) -> PgTq:
    @standalone_q.handler()
    def sync(account: int, version: int) -> int:
        return version

    return standalone_q


def test_replace_updates_the_queued_holder(q: PgTq, dsn: str) -> None:
    first = q.handlers["sync"].options(unique_key="acct:1").push(1, 1)
    second = q.handlers["sync"].options(unique_key="acct:1", on_conflict="replace").push(1, 2)
    assert (first.is_new, second.is_new, second.id) == (True, False, first.id)
    assert second.args == [1, 2]
    assert sql_all(dsn, "SELECT args FROM pgtq_tasks") == [([1, 2],)]
    kept = q.handlers["sync"].options(unique_key="acct:1").push(1, 3)
    assert kept.args == [1, 2]  # "keep", the default, leaves it alone


def test_a_running_holder_is_not_replaced(q: PgTq, dsn: str) -> None:
    q.handlers["sync"].options(unique_key="acct:2").push(2, 1)
    running = q.pop()
    assert running is not None
    again = q.handlers["sync"].options(unique_key="acct:2", on_conflict="replace").push(2, 9)
    assert (again.id, again.is_new, again.args) == (running.id, False, [2, 1])
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 1


def test_debounce_runs_after_the_last_push(q: PgTq, dsn: str) -> None:
    sync = q.handlers["sync"]
    first = sync.options(unique_key="acct:3", debounce=timedelta(seconds=5)).push(3, 1)
    last = sync.options(unique_key="acct:3", debounce=60).push(3, 2)
    assert last.id == first.id
    (args, wait) = sql_one(
        dsn,
        "SELECT args, extract(epoch FROM run_at - now()) FROM pgtq_tasks WHERE id = %s",
        (first.id,),
    )
    assert args == [3, 2] and 55 < wait <= 60  # 60 s after the last push, not 5 after the first
    assert q.pop() is None


def test_replace_and_debounce_need_a_unique_key(q: PgTq) -> None:
    sync = q.handlers["sync"]
    with pytest.raises(ConfigurationError, match="unique_key"):
        sync.options(on_conflict="replace")
    with pytest.raises(ConfigurationError, match="unique_key"):
        sync.options(debounce=5)
    with pytest.raises(ConfigurationError, match="on_conflict"):
        sync.options(unique_key="k", on_conflict="merge")
    with pytest.raises(ConfigurationError, match="no delay"):
        sync.options(unique_key="k", debounce=5, delay=1)


@pytest.mark.parametrize("mode", ["replace", "debounce"])
def test_sixteen_concurrent_pushers_leave_one_task_with_a_pushed_version(
    q: PgTq, dsn: str, mode: str
) -> None:
    sync = q.handlers["sync"]
    options = {"on_conflict": "replace"} if mode == "replace" else {"debounce": 30}
    barrier = threading.Barrier(16)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def push(version: int) -> None:
        barrier.wait()
        try:
            for round_ in range(10):
                task = sync.options(unique_key="acct:hot", **options).push(
                    9, version * 100 + round_
                )
                results.append((task.id, bool(task.is_new)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(v,)) for v in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = sql_all(dsn, "SELECT id, args FROM pgtq_tasks")
    assert len(rows) == 1  # one task, however the pushes interleaved
    (task_id, args) = rows[0]
    assert {tid for tid, _ in results} == {task_id}
    assert sum(new for _, new in results) == 1
    assert args[1] in {v * 100 + r for v in range(16) for r in range(10)}
