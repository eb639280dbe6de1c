"""Handlers: names, plain calls, push, options, and arguments that must be JSON."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from flask_pgtq import (
    Args,
    ArgumentsNotSerializable,
    DuplicateHandler,
    InvalidName,
    PayloadTooLarge,
    PgTq,
    State,
    Task,
    UnknownTask,
    codec,
)
from tests.helpers import sql_one


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_MAX_PAYLOAD_BYTES": 1000}


def count_tasks(dsn: str) -> int:
    row = sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")
    assert row is not None
    return int(row[0])


def row_of(dsn: str, task: Task, *columns: str) -> tuple[Any, ...]:
    row = sql_one(dsn, f"SELECT {', '.join(columns)} FROM pgtq_tasks WHERE id = %s", (task.id,))
    assert row is not None, f"task {task.id} has no row"
    return row


# -- names -------------------------------------------------------------------------


def test_name_is_the_function_name(q: PgTq) -> None:
    @q.handler()
    def add_numbers(a: int, b: int) -> int:
        return a + b

    assert add_numbers.name == "add_numbers"
    assert q.handlers["add_numbers"] is add_numbers
    assert add_numbers.__name__ == "add_numbers"


def test_bare_decorator_works_too(q: PgTq) -> None:
    @q.handler
    def bare() -> None:
        pass

    assert bare.name == "bare"


def test_name_can_be_given(q: PgTq) -> None:
    @q.handler(name="sum_task")
    def add(a: int, b: int) -> int:
        return a + b

    assert add.name == "sum_task"
    assert set(q.handlers) == {"sum_task"}
    assert add.push(1, 2).name == "sum_task"


def test_duplicate_name_is_refused_at_decoration(q: PgTq) -> None:
    @q.handler()
    def send(to: str) -> None:
        pass

    with pytest.raises(DuplicateHandler, match="'send'"):

        @q.handler(name="send")
        def other_send(to: str) -> None:
            pass

    assert q.handlers["send"] is send


def test_invalid_handler_name_is_refused(q: PgTq) -> None:
    with pytest.raises(InvalidName):
        q.handler(name="two words")(lambda: None)


# -- plain call -------------------------------------------------------------------


def test_plain_call_runs_now_and_stores_nothing(q: PgTq, dsn: str) -> None:
    calls = []

    @q.handler()
    def add_numbers(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    assert add_numbers(2, 3) == 5
    assert calls == [(2, 3)]
    assert count_tasks(dsn) == 0


# -- push ---------------------------------------------------------------------------


def test_push_returns_the_stored_task(q: PgTq, dsn: str) -> None:
    @q.handler()
    def add_numbers(a: int, b: int) -> int:
        return a + b

    task = add_numbers.push(2, 3)
    assert isinstance(task, Task)
    assert isinstance(task.id, int)
    assert task.name == "add_numbers"
    assert task.args == [2, 3]
    assert task.kwargs == {}
    assert task.queue == "default"
    assert task.state == State.QUEUED
    assert task.state == "queued"
    assert task.attempts == 0
    assert task.max_attempts == 3
    assert task.priority == 0
    assert row_of(dsn, task, "name", "args", "kwargs", "queue", "state") == (
        "add_numbers",
        [2, 3],
        {},
        "default",
        "queued",
    )


def test_arguments_round_trip(q: PgTq, dsn: str) -> None:
    @q.handler()
    def store(*args: Any, **kwargs: Any) -> None:
        pass

    kwargs = {
        "text": "h\u00e9llo \u2603 \"quoted\" 'single' \\ \x01",
        "nested": {"list": [1, 2.5, None, True, False], "empty": {}},
        "big": 2**62,
        "negative": -1.25e-10,
    }
    task = store.push("a", [1, [2]], **kwargs)
    assert task.args == ["a", [1, [2]]]
    assert task.kwargs == kwargs
    assert row_of(dsn, task, "args", "kwargs") == (["a", [1, [2]]], kwargs)
    fresh = q.get_task(task.id)
    assert (fresh.args, fresh.kwargs) == (["a", [1, [2]]], kwargs)


def test_handler_defaults_are_stored(q: PgTq, dsn: str) -> None:
    @q.handler(queue="math", max_attempts=5, priority=7)
    def add(a: int, b: int) -> int:
        return a + b

    task = add.push(1, 2)
    assert (task.queue, task.max_attempts, task.priority) == ("math", 5, 7)
    assert row_of(dsn, task, "queue", "max_attempts", "priority") == ("math", 5, 7)


def test_push_by_name(q: PgTq, dsn: str) -> None:
    @q.handler(name="sum_task", queue="math")
    def add(a: int, b: int) -> int:
        return a + b

    task = q.push("sum_task", 2, b=3)
    assert (task.name, task.args, task.kwargs, task.queue) == ("sum_task", [2], {"b": 3}, "math")
    assert row_of(dsn, task, "name", "queue") == ("sum_task", "math")


def test_push_of_an_unknown_name_is_refused(q: PgTq, dsn: str) -> None:
    @q.handler()
    def known() -> None:
        pass

    with pytest.raises(UnknownTask, match="'unknown'") as info:
        q.push("unknown", 1)
    assert "known" in str(info.value)
    assert count_tasks(dsn) == 0


# -- options ---------------------------------------------------------------------------


def test_options_are_stored(q: PgTq, dsn: str) -> None:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    task = add.options(delay=30, priority=10, queue="urgent", max_attempts=7).push(2, 3)
    assert (task.priority, task.queue, task.max_attempts) == (10, "urgent", 7)
    assert task.args == [2, 3] and task.kwargs == {}
    assert row_of(
        dsn,
        task,
        "priority",
        "queue",
        "max_attempts",
        "extract(epoch FROM run_at - created_at)",
    ) == (10, "urgent", 7, pytest.approx(30, abs=0.5))


def test_delay_as_timedelta(q: PgTq, dsn: str) -> None:
    @q.handler()
    def later() -> None:
        pass

    task = later.options(delay=timedelta(minutes=2)).push()
    (seconds,) = row_of(dsn, task, "extract(epoch FROM run_at - created_at)")
    assert seconds == pytest.approx(120, abs=0.5)


def test_a_delayed_task_is_not_popped_yet(q: PgTq) -> None:
    @q.handler()
    def later() -> None:
        pass

    later.options(delay=3600).push()
    assert q.pop() is None


def test_no_delay_means_ready_now(q: PgTq, dsn: str) -> None:
    @q.handler()
    def now() -> None:
        pass

    task = now.push()
    assert row_of(dsn, task, "run_at <= now()", "run_at = created_at") == (True, True)


def test_eta_is_stored(q: PgTq, dsn: str) -> None:
    @q.handler()
    def at() -> None:
        pass

    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    task = at.options(eta=eta).push()
    assert row_of(dsn, task, "run_at") == (eta,)


def test_naive_eta_is_refused(q: PgTq, dsn: str) -> None:
    @q.handler()
    def at() -> None:
        pass

    with pytest.raises(ValueError, match="aware"):
        at.options(eta=datetime(2030, 1, 1)).push()
    assert count_tasks(dsn) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"delay": -1},
        {"delay": math.nan},
        {"delay": "soon"},
        {"priority": 1.5},
        {"priority": True},
        {"max_attempts": 0},
        {"eta": "2030-01-01"},
        {"delay": 5, "eta": datetime(2030, 1, 1, tzinfo=UTC)},
    ],
)
def test_invalid_options_are_refused(q: PgTq, dsn: str, options: dict[str, Any]) -> None:
    @q.handler()
    def job() -> None:
        pass

    with pytest.raises(ValueError):
        job.options(**options).push()
    assert count_tasks(dsn) == 0


def test_invalid_queue_in_options_is_refused(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job() -> None:
        pass

    for queue in ["", "two words", "'; DROP TABLE pgtq_tasks; --", "x" * 201]:
        with pytest.raises(InvalidName):
            job.options(queue=queue).push()
    assert count_tasks(dsn) == 0


def test_options_never_mix_with_the_handlers_arguments(q: PgTq, dsn: str) -> None:
    @q.handler()
    def schedule(delay: int, queue: str, priority: int, max_attempts: int, eta: str) -> None:
        pass

    task = schedule.push(delay=60, queue="not a queue", priority=9, max_attempts=0, eta="now")
    assert task.kwargs == {
        "delay": 60,
        "queue": "not a queue",
        "priority": 9,
        "max_attempts": 0,
        "eta": "now",
    }
    assert task.args == []
    assert (task.queue, task.priority, task.max_attempts) == ("default", 0, 3)
    assert row_of(dsn, task, "queue", "priority", "run_at = created_at") == ("default", 0, True)


def test_options_then_arguments_of_the_same_names(q: PgTq, dsn: str) -> None:
    @q.handler()
    def schedule(delay: int, queue: str) -> None:
        pass

    task = schedule.options(queue="urgent").push(delay=5, queue="mine")
    assert task.queue == "urgent"
    assert task.kwargs == {"delay": 5, "queue": "mine"}
    assert row_of(dsn, task, "run_at = created_at") == (True,)


def test_options_do_not_stick_to_the_handler(q: PgTq) -> None:
    @q.handler()
    def job() -> None:
        pass

    assert job.options(queue="urgent", priority=5).push().queue == "urgent"
    plain = job.push()
    assert (plain.queue, plain.priority) == ("default", 0)


# -- arguments must be JSON -------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    "bad",
    [
        object(),
        Opaque(),
        datetime(2030, 1, 1, tzinfo=UTC),
        {1, 2},
        math.nan,
        math.inf,
        -math.inf,
        b"bytes",
        {1: "int key"},
        {(1, 2): "tuple key"},
        [1, {"deep": [object()]}],
        {"deep": {2: "int key"}},
    ],
    ids=[
        "object",
        "class",
        "datetime",
        "set",
        "nan",
        "inf",
        "-inf",
        "bytes",
        "int-key",
        "tuple-key",
        "nested-object",
        "nested-int-key",
    ],
)
def test_non_json_arguments_are_refused_by_position_and_name(q: PgTq, dsn: str, bad: Any) -> None:
    @q.handler()
    def job(*args: Any, **kwargs: Any) -> None:
        pass

    with pytest.raises(ArgumentsNotSerializable) as info:
        job.push("fine", bad)
    assert isinstance(info.value, TypeError)
    assert "argument 1" in str(info.value)
    assert "'job'" in str(info.value)

    with pytest.raises(TypeError) as info:
        job.push("fine", ok=1, when=bad)
    assert isinstance(info.value, ArgumentsNotSerializable)
    assert "'when'" in str(info.value)

    with pytest.raises(TypeError):
        q.push("job", when=bad)
    with pytest.raises(TypeError):
        job.options(priority=1).push(bad)
    assert count_tasks(dsn) == 0


def test_payload_exactly_at_the_limit_is_accepted_one_byte_more_is_not(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job(text: str, *, note: str = "") -> None:
        pass

    def size(args: list[Any], kwargs: dict[str, Any]) -> int:
        """Bytes of the JSON stored for both (compact, non-ASCII escaped)."""
        return sum(len(codec.dumps(v).encode()) for v in (args, kwargs))

    # Non-ASCII too: the limit counts the bytes of the JSON, not characters.
    for kwargs in ({}, {"note": "\u00e9t\u00e9"}):
        filler = 1000 - size(["\u20ac"], kwargs)  # PGTQ_MAX_PAYLOAD_BYTES = 1000
        at_limit = "\u20ac" + "x" * filler
        assert size([at_limit], kwargs) == 1000
        task = job.push(at_limit, **kwargs)
        assert q.get_task(task.id).args == [at_limit]
        with pytest.raises(PayloadTooLarge, match="1001 bytes"):
            job.push(at_limit + "x", **kwargs)
        # The batch push applies the same limit.
        with pytest.raises(PayloadTooLarge):
            job.push_many([Args(at_limit + "x", **kwargs)])
        assert len(job.push_many([Args(at_limit, **kwargs)])) == 1
    assert count_tasks(dsn) == 4


def test_payload_over_the_limit_is_refused(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job(text: str) -> None:
        pass

    job.push("x" * 900)  # under PGTQ_MAX_PAYLOAD_BYTES = 1000
    with pytest.raises(PayloadTooLarge, match="PGTQ_MAX_PAYLOAD_BYTES"):
        job.push("x" * 1000)
    with pytest.raises(PayloadTooLarge):
        job.push(text="\u00e9" * 600)  # 600 characters, over 1000 bytes however encoded
    assert count_tasks(dsn) == 1


# -- arguments checked against the signature at push -----------------------------------


def test_arguments_that_do_not_fit_the_signature_are_refused_at_push(q: PgTq, dsn: str) -> None:
    from flask_pgtq import ArgumentsMismatch, PgTqError

    @q.handler()
    def f(a: int) -> int:
        return a

    @q.handler(name="greeting")
    def greet(name: str, *, loud: bool = False) -> str:
        return name

    for push, message in [
        (lambda: f.push(2, 5), "too many positional arguments"),  # type: ignore[call-arg]
        (lambda: f.push(), "missing a required argument: 'a'"),  # type: ignore[call-arg]
        (lambda: f.options(priority=3).push(b=1), "missing a required argument"),  # type: ignore[call-arg]
        (lambda: q.push("greeting", "ada", shout=True), "unexpected keyword argument 'shout'"),
        (lambda: q.push("greeting", "ada", True), "too many positional arguments"),
    ]:
        with pytest.raises(ArgumentsMismatch) as refused:
            push()
        assert isinstance(refused.value, TypeError) and isinstance(refused.value, PgTqError)
        assert "of handler 'f' (a): " in str(refused.value) or (
            "of handler 'greeting' (name, *, loud=False): " in str(refused.value)
        )
        assert message in str(refused.value)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (0,)
    assert f.push(2).args == [2]
    assert q.push("greeting", "ada", loud=True).kwargs == {"loud": True}


def test_push_many_checks_each_item_against_the_signature(q: PgTq, dsn: str) -> None:
    from flask_pgtq import ArgumentsMismatch

    @q.handler()
    def f(a: int, b: int = 0) -> int:
        return a + b

    with pytest.raises(ArgumentsMismatch, match=r"push_many item 2: .*handler 'f'.*too many"):
        f.push_many([(1,), Args(1, b=2), (1, 2, 3)])
    with pytest.raises(ArgumentsMismatch, match=r"item 0: .*unexpected keyword argument 'c'"):
        q.push_many("f", [{"a": 1, "c": 1}])
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (0,)
    assert len(f.push_many([(1,), Args(1, b=2), {"a": 5}])) == 3
