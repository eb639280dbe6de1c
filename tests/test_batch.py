"""Batch push: many tasks in one statement, all or nothing."""

from __future__ import annotations

import select
from typing import Any

import psycopg2
import pytest

from flask_pgtq import Args, ArgumentsNotSerializable, PayloadTooLarge, PgTq, State, signals
from tests.helpers import sql_all, sql_one


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_MAX_PAYLOAD_BYTES": 1000}


@pytest.fixture
def q(standalone_q: PgTq) -> PgTq:
    return standalone_q


def test_push_many_stores_every_item_in_order(q: PgTq, dsn: str) -> None:
    @q.handler()
    def send(to: str, lang: str = "en") -> str:
        return f"{to}/{lang}"

    ids = send.push_many([("a@x",), ["b@x", "fr"], {"to": "c@x"}, Args("d@x", lang="de")])
    assert len(ids) == 4 and ids == sorted(ids)
    rows = sql_all(dsn, "SELECT id, args, kwargs, state FROM pgtq_tasks ORDER BY id")
    assert [r[0] for r in rows] == ids
    assert [(r[1], r[2]) for r in rows] == [
        (["a@x"], {}),
        (["b@x", "fr"], {}),
        ([], {"to": "c@x"}),
        (["d@x"], {"lang": "de"}),
    ]
    assert {r[3] for r in rows} == {"queued"}
    results = [t.result for t in q.drain()]
    assert results == ["a@x/en", "b@x/fr", "c@x/en", "d@x/de"]


def test_push_many_by_name_with_options(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job(n: int) -> None:
        pass

    q.push_many("job", [(n,) for n in range(1000)])
    job.options(queue="bulk", priority=7, delay=3600).push_many([(1,), (2,)])
    stored = sql_all(dsn, "SELECT args FROM pgtq_tasks WHERE queue = 'default' ORDER BY id")
    assert [row[0] for row in stored] == [[n] for n in range(1000)]
    assert (
        sql_one(
            dsn,
            "SELECT count(*) FROM pgtq_tasks WHERE queue = 'bulk' AND priority = 7 "
            "AND run_at > now() + interval '50 minutes'",
        )[0]
        == 2
    )


@pytest.mark.parametrize(
    "bad",
    [object(), {"x": float("nan")}, ("x" * 2000,), "not-a-tuple", {1: "int key"}],
    ids=["object", "nan", "oversize", "string", "int-key"],
)
def test_one_bad_item_rejects_the_batch(q: PgTq, dsn: str, bad) -> None:
    @q.handler()
    def job(*args, **kwargs) -> None:
        pass

    with pytest.raises((ArgumentsNotSerializable, PayloadTooLarge)):
        job.push_many([("fine",), ("also fine",), bad, ("never stored",)])
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 0


def test_an_empty_batch_does_nothing(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job() -> None:
        pass

    assert job.push_many([]) == []
    assert job.push_many(iter(())) == []


def test_push_many_is_one_statement_and_one_notify(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job(n: int) -> None:
        pass

    listener = psycopg2.connect(dsn)
    listener.autocommit = True
    listener.cursor().execute("LISTEN pgtq")
    try:
        job.push_many([(n,) for n in range(500)])
        assert select.select([listener], [], [], 5)[0]
        listener.poll()
        # One statement, one NOTIFY (its queue).
        assert [n.payload for n in listener.notifies] == ["default"]
    finally:
        listener.close()
    (statements,) = sql_one(dsn, "SELECT count(DISTINCT xmin::text) FROM pgtq_tasks")
    assert statements == 1, "the batch was not inserted in one transaction"


def test_batch_signal_carries_ids_and_arguments(q: PgTq) -> None:
    @q.handler()
    def job(n: int) -> None:
        pass

    seen = []
    with signals.tasks_pushed.connected_to(lambda sender, **kw: seen.append(kw), q):
        ids = job.push_many([(1,), (2,)])
    assert seen == [
        {"name": "job", "queue": "default", "ids": ids, "args": [[1], [2]], "kwargs": [{}, {}]}
    ]
    assert all(t.state is State.SUCCEEDED for t in q.drain())


def test_every_statement_that_queues_tasks_wakes_listeners(q: PgTq, dsn: str) -> None:
    """Each push statement sends NOTIFY pgtq with the queue of the tasks it
    queued (schema 13: no trigger), once per queue; a task that waits for
    others sends none until it is released."""
    import datetime as dt

    from flask_pgtq import chain

    @q.handler()
    def job(n: int = 0) -> int:
        return n

    @q.handler(queue="other")
    def elsewhere(n: int = 0) -> int:
        return n

    listener = psycopg2.connect(dsn)
    listener.autocommit = True
    listener.cursor().execute("LISTEN pgtq")

    def heard() -> list[str]:
        assert select.select([listener], [], [], 5)[0], "no notification"
        listener.poll()
        payloads = [n.payload for n in listener.notifies]
        listener.notifies.clear()
        return payloads

    store = q.app_queue().store
    try:
        job.push(1)
        assert heard() == ["default"]
        elsewhere.push(1)
        assert heard() == ["other"]
        job.options(delay=3600).push(2)
        assert heard() == ["default"]
        job.push_many([(n,) for n in range(300)])
        assert heard() == ["default"]
        first = job.options(unique_key="k").push(3)
        assert heard() == ["default"]
        again = job.options(unique_key="k").push(4)
        assert again.id == first.id and not again.is_new
        chain(job.s(5), elsewhere.s()).push()
        # The chain's second step waits: only its first step's queue.
        assert heard() == ["default"]
        fired = store.fire_periodic(
            "every-minute",
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            {
                "queue": "other",
                "name": "elsewhere",
                "args": "[]",
                "kwargs": "{}",
                "priority": 0,
                "max_attempts": 1,
                "tags": [],
                "limited": False,
            },
        )
        assert fired is not None
        assert heard() == ["other"]
        # Nothing more was sent (the unique push that found its holder).
        assert not select.select([listener], [], [], 0.2)[0]
    finally:
        listener.close()
