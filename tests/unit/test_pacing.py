"""The worker's claim policies, without a database."""

from __future__ import annotations

from flask_pgtq.pacing import LimitTimer, Prefetch
from flask_pgtq.values import Limit


def test_no_prefetch_before_the_first_task_finished() -> None:
    policy = Prefetch(concurrency=4, cap=500)
    assert policy.room(held=0) == (4, 0)
    assert policy.room(held=3) == (1, 0)
    assert policy.refill_at == 0


def test_prefetch_is_what_the_threads_get_through_in_the_wait() -> None:
    policy = Prefetch(concurrency=2, cap=500, wait=0.05)
    policy.note_run(0.01)  # 2 threads x 50 ms / 10 ms = 10 ahead
    assert policy.room(held=0) == (2, 10)
    assert policy.refill_at == 5
    assert policy.room(held=2) == (0, 10)
    assert policy.room(held=7) == (0, 5)
    assert policy.room(held=12) == (0, 0)


def test_prefetch_is_capped_and_can_be_off() -> None:
    fast = Prefetch(concurrency=2, cap=500)
    fast.note_run(1e-7)
    assert fast.room(held=0) == (2, 500)
    off = Prefetch(concurrency=2, cap=0)
    off.note_run(1e-7)
    assert off.room(held=0) == (2, 0)


def test_slow_tasks_are_not_prefetched() -> None:
    policy = Prefetch(concurrency=2, cap=500)
    policy.note_run(1.0)
    assert policy.room(held=0) == (2, 0)


def test_the_mean_run_time_moves_slowly() -> None:
    policy = Prefetch(concurrency=1, cap=500)
    policy.note_run(1.0)
    policy.note_run(0.0)
    assert policy.mean_run == 0.9


def test_max_tasks_bounds_both_counts() -> None:
    policy = Prefetch(concurrency=4, cap=500)
    policy.note_run(0.001)
    assert policy.room(held=0, left=3) == (3, 0)
    assert policy.room(held=0, left=10) == (4, 6)
    assert policy.room(held=0, left=0) == (0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_limited_handler_with_nothing_waits_a_poll_interval() -> None:
    clock = Clock()
    a, b = Limit("a", concurrency=1), Limit("b", rate=4, period=1.0)
    timer = LimitTimer([a, b], retry_after=5.0, clock=clock)
    assert timer.names == ["a", "b"]
    assert timer.due() == [a, b]
    timer.tried([a, b], claimed=["b"])
    assert timer.due() == [b]  # b claimed something: worth another try at once
    clock.now += 4.9
    assert timer.due() == [b]
    clock.now += 0.2
    assert timer.due() == [a, b]


def test_news_makes_limited_handlers_due_again() -> None:
    clock = Clock()
    a, b = Limit("a", concurrency=1), Limit("b", concurrency=2)
    timer = LimitTimer([a, b], retry_after=5.0, clock=clock)
    timer.tried([a, b], claimed=[])
    assert timer.due() == []
    timer.wake("a")  # one of a's tasks finished
    assert timer.due() == [a]
    timer.wake("unknown")
    timer.wake_all()  # new tasks arrived
    assert timer.due() == [a, b]
