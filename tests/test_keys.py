"""Limits per key (key_concurrency, key_rate_limit), fair between keys."""

from __future__ import annotations

from collections import defaultdict

import pytest

from flask_pgtq import ConfigurationError, PgTq, Task
from flask_pgtq.handler import Handler
from flask_pgtq.queue import new_owner_id
from tests.helpers import poll_until, sql_all, sql_one
from tests.workers import runs


def events(dsn: str) -> list[tuple[str, str, object]]:
    return sql_all(dsn, "SELECT tag, event, at FROM test_runs ORDER BY at, id")


@pytest.mark.slow
def test_never_two_tasks_of_one_key_at_once_across_three_workers(served_app, dsn, start_worker):
    from tests.worker_app import one_per_key

    for _ in range(6):
        for key in ("a", "b"):
            one_per_key.options(key=f"account:{key}").push(0.15, key)
    for _ in range(3):
        start_worker("--concurrency", "3")
    poll_until(
        lambda: sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE state = 'succeeded'")[0] == 12,
        60,
        0.1,
        "every task to run",
    )
    running: dict[str, int] = defaultdict(int)
    overlap_across_keys = 0
    for tag, event, _ in events(dsn):
        running[tag] += 1 if event == "started" else -1
        assert running[tag] <= 1, f"two tasks of key {tag} ran at once"
        overlap_across_keys = max(overlap_across_keys, sum(running.values()))
    assert overlap_across_keys == 2  # the two keys did run side by side


@pytest.mark.slow
def test_a_flooded_key_does_not_delay_another_keys_task(served_app, dsn, start_worker):
    from tests.worker_app import fair

    fair.options(key="big").push_many([("big",)] * 300)
    fair.options(key="small").push("small")  # pushed last, behind 300 of "big"
    start_worker("--concurrency", "2", settings={"PGTQ_PREFETCH": 0})
    poll_until(lambda: len(runs(dsn)) == 301, 60, 0.1, "every task to run")
    order = [r["tag"] for r in runs(dsn)]
    # Claims go round-robin over keys: the first round (2 threads) takes one
    # task of each key, instead of the 2 oldest (both "big").
    assert order.index("small") < 2, order[:5]


@pytest.mark.slow
def test_a_key_rate_limit_holds_per_key(served_app, dsn, start_worker):
    from tests.worker_app import key_rated

    for key in ("x", "y"):
        key_rated.options(key=key).push_many([(key,)] * 6)
    for _ in range(2):
        start_worker("--concurrency", "2")
    poll_until(lambda: len(runs(dsn)) == 12, 60, 0.1, "every task to run")
    starts = sql_all(
        dsn,
        "SELECT key, started_at FROM pgtq_tasks ORDER BY key, started_at",
    )
    by_key: dict[str, list] = defaultdict(list)
    for key, at in starts:
        by_key[key].append(at)
    for key, times in by_key.items():
        for i in range(len(times) - 2):
            # No three starts of one key within one second.
            assert (times[i + 2] - times[i]).total_seconds() >= 1.0 - 0.01, (key, times)
    # The keys did not wait for each other: both started in the first second.
    firsts = sorted(times[0] for times in by_key.values())
    assert (firsts[1] - firsts[0]).total_seconds() < 1.0


def test_key_options_are_checked(standalone_q: PgTq) -> None:
    with pytest.raises(ConfigurationError, match="key_concurrency"):
        standalone_q.handler(key_concurrency=0)
    with pytest.raises(ConfigurationError, match="key_rate_limit"):
        standalone_q.handler(key_rate_limit="fast")

    @standalone_q.handler(key_concurrency=2)
    def sync(n: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="key must be"):
        sync.options(key="")
    with pytest.raises(ConfigurationError, match="key must be"):
        sync.options(key="x" * 201)
    task = sync.options(key="account:1").push(1)
    assert task.key == "account:1"
    assert standalone_q.get_task(task.id).key == "account:1"


def claim_all(q: PgTq, handler: Handler, queue: str = "default") -> list[Task]:
    """One claim of up to 50 tasks, as a worker's round makes it."""
    store = q.app_queue().store
    owner = new_owner_id()
    store.register_owner(owner)
    assert handler.limit is not None
    return store.claim(owner, queue, 50, [handler.limit])


def test_a_claim_takes_each_keys_best_ready_tasks_within_its_limit(standalone_q: PgTq) -> None:
    @standalone_q.handler(key_concurrency=2)
    def sync(n: int) -> None:
        pass

    low = [sync.options(key="a").push(i) for i in range(3)]
    high = sync.options(key="a", priority=5).push(3)
    sync.options(key="a", priority=9, delay=3600).push(4)  # best, but not ready
    other = sync.options(key="b").push(5)
    sync.options(key="c", queue="elsewhere").push(6)  # another queue
    loose = [sync.push(7 + i) for i in range(4)]  # no key: not limited
    claimed = claim_all(standalone_q, sync)
    assert sorted(t.id for t in claimed) == sorted(
        [high.id, low[0].id, other.id] + [t.id for t in loose]
    )
    # The running tasks count: key "a" has no room left, "b" has one.
    sync.options(key="b").push(8)
    again = claim_all(standalone_q, sync)
    assert [t.args for t in again] == [[8]]


def test_a_handler_wide_limit_also_holds_for_tasks_without_a_key(standalone_q: PgTq) -> None:
    @standalone_q.handler(concurrency=3, key_concurrency=1)
    def sync(n: int) -> None:
        pass

    for i in range(5):
        sync.push(i)
    sync.options(key="a").push(5)
    sync.options(key="a").push(6)
    claimed = claim_all(standalone_q, sync)
    assert len(claimed) == 3
    assert sum(t.key == "a" for t in claimed) == 1
    assert claim_all(standalone_q, sync) == []
