"""No value and no transient error can stall a worker or poison a connection.

Each test names the finding it pins: a bad value (NUL, lone surrogates, deep
nesting, oversize or non-finite results, bad ``Retry`` delays) or a transient
statement error (statement timeout, cancelled query) must end in a recorded
outcome and the loop going on.  Real PostgreSQL, real worker processes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg2
import pytest

from flask_pgtq import ArgumentsNotSerializable, DatabaseError, PgTq, State
from flask_pgtq.codec import MAX_DEPTH
from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import bad_error, bad_result, bad_retry, mark, slow
from tests.workers import runs


def with_options(dsn: str, **settings: Any) -> str:
    """*dsn* with server settings for its sessions (``-c name=value``)."""
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{dsn} options='{options}'"


def task_row(dsn: str, task_id: int) -> dict[str, Any]:
    rows = sql_all(
        dsn,
        "SELECT state, attempts, result, error, locked_by FROM pgtq_tasks WHERE id = %s",
        (task_id,),
    )
    (state, attempts, result, error, locked_by) = rows[0]
    return {
        "state": state,
        "attempts": attempts,
        "result": result,
        "error": error,
        "locked_by": locked_by,
    }


def final(dsn: str, task_id: int, timeout: float = 20) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        row = task_row(dsn, task_id)
        return row if row["state"] in ("succeeded", "failed", "cancelled") else None

    return poll_until(done, timeout, 0.05, f"task {task_id} to end")


class TableLock:
    """Hold ``pgtq_tasks`` locked (ACCESS EXCLUSIVE) from another session,
    so the queue's statements wait on it, until released."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        with self.conn.cursor() as cur:
            cur.execute("LOCK TABLE pgtq_tasks IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


# -- 1. a failed statement never leaves a pooled connection half-broken --------


def test_a_push_that_timed_out_does_not_break_later_pushes(dsn: str) -> None:
    # One pooled connection, prepared statements on: on 0b61ba8 the server
    # kept the prepared push after the failed EXECUTE, the client forgot it,
    # and every later push failed with "already exists".
    q = PgTq(dsn=with_options(dsn, statement_timeout=300), pool_size=1)
    try:

        @q.handler()
        def job(n: int) -> int:
            return n

        job.push(1)  # prepares the push on the one connection
        lock = TableLock(dsn)
        try:
            with pytest.raises(DatabaseError) as info:
                job.push(2)
            assert info.value.sqlstate == "57014"  # query_canceled: statement timeout
            assert info.value.transient
        finally:
            lock.release()
        assert [job.push(n).id for n in range(3, 6)] == [2, 3, 4]
        assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 4
    finally:
        q.close()


def test_a_connection_given_back_after_any_error_is_not_reused(dsn: str) -> None:
    q = PgTq(dsn=dsn, pool_size=1)
    try:
        db = q.app_queue().db
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            first = cur.fetchone()[0]
        with pytest.raises(ZeroDivisionError), db.connection() as conn:
            1 / 0  # noqa: B018 - any error inside the block
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone()[0] != first
    finally:
        q.close()


@pytest.mark.slow
def test_a_worker_goes_on_after_statement_timeouts_and_cancelled_queries(
    served_app, dsn, start_worker
):
    worker = start_worker(
        settings={"PGTQ_DSN": with_options(dsn, statement_timeout=200), "PGTQ_POLL_INTERVAL": 0.1}
    )
    first = mark.push("before")
    assert final(dsn, first.id)["state"] == "succeeded"
    # The worker's round now waits on the lock until its statement times out,
    # again and again; then a cancel while it waits.
    lock = TableLock(dsn)
    try:
        poll_until(
            lambda: "database error while working" in worker.output(),
            10,
            0.05,
            "a statement timeout in the worker",
        )
        poll_until(
            lambda: sql_all(
                dsn,
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'flask_pgtq:%%' AND wait_event_type = 'Lock'",
            ),
            10,
            0.02,
            "a worker statement waiting on the lock to cancel",
        )
    finally:
        lock.release()
    tasks = [mark.push(f"after{i}") for i in range(20)]
    for task in tasks:
        assert final(dsn, task.id)["state"] == "succeeded"
    assert worker.proc.poll() is None
    assert "already exists" not in worker.output()


# -- 2. every outcome is storable, or becomes a failure that is ---------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nul", "NUL character"),
        ("surrogate", "lone surrogate"),
        ("int-key", "dict keys must be strings"),
        ("deep", f"nested more than {MAX_DEPTH} levels"),
        ("big", "PGTQ_MAX_RESULT_BYTES"),
        ("nan", "Out of range float values"),
    ],
)
def test_an_unstorable_result_fails_its_task_and_holds_back_no_other(
    served_app, dsn, start_worker, kind, reason
):
    worker = start_worker(
        "--concurrency", "1", settings={"PGTQ_MAX_RESULT_BYTES": 1_000, "PGTQ_PREFETCH": 50}
    )
    pid = worker.pid
    bad = bad_result.push(kind, "bad")
    good = [mark.push(f"g{i}") for i in range(30)]
    row = final(dsn, bad.id)
    assert row["state"] == "failed"
    assert row["attempts"] == 1  # failed without retry: the value will not change
    assert "cannot be stored as JSON" in row["error"]
    assert reason in row["error"]
    for task in good:
        assert final(dsn, task.id)["state"] == "succeeded"
    assert len(runs(dsn, "bad")) == 1
    assert worker.proc.poll() is None and worker.pid == pid


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nul", "surrogate"])
def test_an_error_text_postgresql_cannot_store_is_recorded_escaped(
    served_app, dsn, start_worker, kind
):
    start_worker()
    task = bad_error.push(kind, "err")
    row = final(dsn, task.id)
    assert row["state"] == "failed"
    assert row["attempts"] == 2  # an ordinary failure: retried, then failed
    escaped = {"nul": "nul\\x00here", "surrogate": "surrogate\\ud800here"}[kind]
    assert f"ValueError: bad {escaped}" in row["error"]
    history = sql_one(dsn, "SELECT history FROM pgtq_tasks WHERE id = %s", (task.id,))[0]
    assert [h["state"] for h in history] == ["queued", "failed"]


@pytest.mark.slow
def test_an_outcome_the_database_refuses_is_replaced_by_a_readable_failure(
    served_app, dsn, start_worker
):
    # A constraint the codec knows nothing about: the database refuses the
    # batch that carries this outcome.  The others are recorded one by one
    # and the refused one becomes a failure that says why.
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "ALTER TABLE pgtq_tasks ADD CONSTRAINT no_poison "
            "CHECK (result IS DISTINCT FROM '\"poison-canary\"'::jsonb)"
        )
    conn.close()
    worker = start_worker("--concurrency", "2")
    good = [slow.push(0.05, f"g{i}") for i in range(10)]
    bad = bad_result.push("poison-canary", "bad")
    more = [mark.push(f"m{i}") for i in range(10)]
    row = final(dsn, bad.id)
    assert row["state"] == "failed"
    assert row["attempts"] == 1
    assert "could not be stored" in row["error"]
    assert "no_poison" in row["error"]
    assert "poison-canary" not in row["error"]  # the database's DETAIL quotes the row
    for task in good + more:
        assert final(dsn, task.id)["state"] == "succeeded"
    assert len(runs(dsn, "bad")) == 1
    output = worker.output()
    assert "could not be recorded" in output
    assert "poison-canary" not in output  # no result value in the logs


@pytest.mark.slow
def test_an_outcome_that_always_times_out_ends_failed_and_the_worker_goes_on(
    served_app, dsn, start_worker
):
    # A transient error that never passes for one outcome: a trigger makes
    # recording it outlast the statement timeout, every time.
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """
            CREATE FUNCTION slow_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.result = '"slow-poison"'::jsonb THEN PERFORM pg_sleep(1); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER slow_poison BEFORE UPDATE ON pgtq_tasks
            FOR EACH ROW EXECUTE FUNCTION slow_poison();
            """
        )
    conn.close()
    worker = start_worker(
        "--concurrency", "1", settings={"PGTQ_DSN": with_options(dsn, statement_timeout=300)}
    )
    bad = bad_result.push("slow-poison", "bad")
    good = [mark.push(f"g{i}") for i in range(10)]
    row = final(dsn, bad.id, timeout=30)
    assert row["state"] == "failed"
    assert "could not be stored" in row["error"]
    assert "statement timeout" in row["error"]
    for task in good:
        assert final(dsn, task.id)["state"] == "succeeded"
    assert worker.proc.poll() is None


# -- 3. Retry(delay=...) is validated -------------------------------------------


@pytest.mark.slow
def test_retry_takes_a_timedelta(served_app, dsn, start_worker):
    start_worker()
    task = bad_retry.push(["timedelta", 0.2], "td")
    row = final(dsn, task.id)
    assert row["state"] == "succeeded"
    assert row["attempts"] == 2
    first, second = (r["at"] for r in _runs_at(dsn, "td"))
    assert (second - first).total_seconds() >= 0.2


def _runs_at(dsn: str, tag: str) -> list[dict[str, Any]]:
    rows = sql_all(dsn, "SELECT at FROM test_runs WHERE tag = %s ORDER BY id", (tag,))
    return [{"at": row[0]} for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("delay", ["nan", "inf", "1e300", -1, "soon", {"s": 1}])
def test_a_bad_retry_delay_fails_the_task_with_a_readable_reason(
    served_app, dsn, start_worker, delay
):
    worker = start_worker("--concurrency", "1")
    pid = worker.pid
    task = bad_retry.push(delay, "bad")
    after = mark.push("after")
    row = final(dsn, task.id)
    assert row["state"] == "failed"
    assert row["attempts"] == 1
    assert "Retry(delay=...) must be" in row["error"]
    assert "failed without retry" in row["error"]
    assert final(dsn, after.id)["state"] == "succeeded"
    assert worker.proc.poll() is None and worker.pid == pid


# -- 4. no nesting kills a thread or a worker ------------------------------------


def test_deep_or_unstorable_arguments_are_refused_at_push(dsn: str) -> None:
    q = PgTq(dsn=dsn)
    try:

        @q.handler()
        def job(value: Any) -> None:
            pass

        deep: Any = []
        for _ in range(985):
            deep = [deep]
        for bad, words in [
            (deep, "nested more than"),
            ("a\x00b", "NUL character"),
            ("\ud800", "lone surrogate"),
            ({"k\x00": 1}, "NUL character"),
        ]:
            with pytest.raises(ArgumentsNotSerializable, match=words):
                job.push(bad)
            with pytest.raises(ArgumentsNotSerializable, match=words):
                job.push_many([(bad,)])
        ok: Any = []
        for _ in range(MAX_DEPTH - 2):
            ok = [ok]
        job.push(ok)  # just inside the limit (the argument list is a level)
        assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 1
    finally:
        q.close()


@pytest.mark.slow
def test_stored_arguments_too_deep_to_decode_fail_the_task_not_the_worker(
    served_app, dsn, start_worker
):
    # Rows written by other means than a push (raw SQL, another client):
    # PostgreSQL takes 5,000 levels; Python's decoder does not.
    deep = "[" * 5000 + "]" * 5000
    (bad_id,) = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, args, kwargs, max_attempts) "
        "VALUES ('default', 'mark', %s::jsonb, '{}', 3) RETURNING id",
        (f"[{deep}]",),
    )
    worker = start_worker("--concurrency", "1")
    good = [mark.push(f"g{i}") for i in range(10)]
    row = final(dsn, bad_id)
    assert row["state"] == "failed"
    assert row["attempts"] == 1
    assert "cannot be decoded" in row["error"]
    for task in good:
        assert final(dsn, task.id)["state"] == "succeeded"
    assert worker.proc.poll() is None


# -- 6. argument and result values stay out of error texts and logs --------------


def test_database_errors_about_data_do_not_quote_the_values(dsn: str, caplog) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "ALTER TABLE pgtq_tasks ADD CONSTRAINT no_canary "
            "CHECK (args::text NOT LIKE '%%secret-canary%%')"
        )
    conn.close()
    q = PgTq(dsn=dsn)
    try:

        @q.handler()
        def job(value: str) -> None:
            pass

        caplog.set_level(logging.DEBUG)
        with pytest.raises(DatabaseError) as info:
            job.push("secret-canary")
        assert "no_canary" in str(info.value)
        assert info.value.sqlstate == "23514"
        assert not info.value.transient
        assert "secret-canary" not in str(info.value)
        assert "secret-canary" not in caplog.text
        job.push("fine")  # the pool recovered
    finally:
        q.close()


def test_results_are_as_strict_as_arguments(dsn: str) -> None:
    q = PgTq(dsn=dsn, max_result_bytes=100)
    try:

        @q.handler()
        def job(kind: str) -> Any:
            return worker_app.bad_value(kind)

        for kind in ("int-key", "nul", "big"):
            job.push(kind)
        errors = [q.pop().run().error for _ in range(3)]
        assert "dict keys must be strings" in errors[0]
        assert "NUL character" in errors[1]
        assert "PGTQ_MAX_RESULT_BYTES" in errors[2]
        states = sql_all(dsn, "SELECT DISTINCT state FROM pgtq_tasks")
        assert states == [(State.FAILED.value,)]
    finally:
        q.close()


# -- a run that never records an outcome counts ----------------------------------


@pytest.mark.slow
def test_a_task_interrupted_at_every_shutdown_ends_failed(served_app, dsn, start_worker):
    # On 0b61ba8 a released attempt was uncounted: a max_attempts=2 task that
    # never finishes before shutdown was still queued after 4 restarts.
    task = slow.options(max_attempts=2).push(60, "endless")
    for restart in range(4):
        if sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task.id,))[0] == "failed":
            break
        worker = start_worker(settings={"PGTQ_SHUTDOWN_GRACE": 0.2})
        poll_until(lambda n=restart: len(runs(dsn, "endless")) > n, 10, 0.02, "the task to start")
        worker.terminate()
        assert worker.wait(10) == 0
    state, attempts, error, history = sql_one(
        dsn, "SELECT state, attempts, error, history FROM pgtq_tasks WHERE id = %s", (task.id,)
    )
    assert (state, attempts) == ("failed", 2)
    assert "interrupted" in error
    assert [h["state"] for h in history] == ["released", "released"]
    assert len(runs(dsn, "endless")) == 2


def test_concurrent_pushes_survive_a_cancel_storm(dsn: str) -> None:
    """Pushers on a shared pool while their statements are cancelled: each
    push either stores its task or raises a transient DatabaseError, and the
    pool keeps serving (no connection left half-broken)."""
    q = PgTq(dsn=dsn, pool_size=4)
    stop = threading.Event()
    stored: list[int] = []
    refused: list[DatabaseError] = []
    attempts: list[int] = []

    @q.handler()
    def job(n: int) -> int:
        return n

    def push(base: int) -> None:
        # At least 300 pushes each, and on until the storm has hit a few
        # (a cancel finds a push active only by chance; at most 5,000).
        n = base
        while n < base + 300 or (len(refused) < 5 and n < base + 5000):
            attempts.append(n)
            try:
                stored.append(job.push(n).id)
            except DatabaseError as exc:
                refused.append(exc)
            n += 1

    def cancel() -> None:
        while not stop.is_set():
            sql_all(
                dsn,
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'flask_pgtq:%%' AND state = 'active'",
            )
            time.sleep(0.005)

    canceller = threading.Thread(target=cancel)
    canceller.start()
    threads = [threading.Thread(target=push, args=(i * 10_000,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        canceller.join()
        assert all(exc.transient for exc in refused), {str(e) for e in refused}
        assert refused  # the storm hit
        assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == len(stored)
        assert len(stored) + len(refused) == len(attempts) >= 1200
        stored += [job.push(-n).id for n in range(1, 5)]  # every pooled connection serves
    finally:
        stop.set()
        canceller.join()
        q.close()


# -- the fault-injection drain ----------------------------------------------------


@pytest.fixture
def chaos_dsn(dsn: str) -> str:
    """*dsn* as a role whose statements time out after 50 ms in this database."""
    database = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "DO $$ BEGIN CREATE ROLE pgtq_chaos LOGIN SUPERUSER; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        cur.execute(
            psycopg2.sql.SQL(
                "ALTER ROLE pgtq_chaos IN DATABASE {} SET statement_timeout = '50ms'"
            ).format(psycopg2.sql.Identifier(database))
        )
    conn.close()
    return psycopg2.extensions.make_dsn(dsn, user="pgtq_chaos")


@pytest.mark.slow
def test_a_drain_under_bad_values_timeouts_and_cancels_loses_nothing(
    served_app, dsn, chaos_dsn, start_worker, capsys
):
    """1,000 tasks: 2 % return unstorable results, 1 % raise Retry with a bad
    delay; the workers' role has a 50 ms statement timeout and their
    statements are cancelled every 200 ms.  So that the timeout and the
    cancels hit statements (a worker's statements take about a millisecond),
    another session locks the task table for 100 ms in every 200: the
    workers' statements wait on it, time out or are cancelled.  Every good
    task succeeds exactly once, every bad one fails with a readable reason,
    no worker restarts."""
    from tests.worker_app import chaos

    kinds = ["nul"] * 20 + ["bad-retry"] * 10 + ["good"] * 970
    random = __import__("random").Random(12)
    random.shuffle(kinds)
    chaos.push_many([(kind, f"c{i}") for i, kind in enumerate(kinds)])
    settings = {"PGTQ_DSN": chaos_dsn, "PGTQ_RETRY_BACKOFF": 0.05}
    workers = [start_worker("--concurrency", "2", settings=settings) for _ in range(2)]
    pids = [w.pid for w in workers]
    stop = threading.Event()
    cancels = [0]

    def cancel_every_200_ms() -> None:
        while not stop.wait(0.2):
            rows = sql_all(
                dsn,
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE usename = 'pgtq_chaos' AND application_name LIKE 'flask_pgtq%%'",
            )
            cancels[0] += sum(1 for (sent,) in rows if sent)

    def lock_100_ms_in_200() -> None:
        conn = psycopg2.connect(dsn)
        try:
            while not stop.wait(0.1):
                with conn.cursor() as cur:
                    cur.execute("LOCK TABLE pgtq_tasks IN EXCLUSIVE MODE")
                stop.wait(0.1)
                conn.rollback()
        finally:
            conn.close()

    canceller = threading.Thread(target=cancel_every_200_ms)
    locker = threading.Thread(target=lock_100_ms_in_200)
    started = time.monotonic()
    canceller.start()
    locker.start()
    try:
        poll_until(
            lambda: (
                sql_one(
                    dsn, "SELECT count(*) FROM pgtq_tasks WHERE state IN ('queued', 'running')"
                )[0]
                == 0
            ),
            240,
            0.2,
            "the drain to end",
        )
    finally:
        stop.set()
        canceller.join()
        locker.join()
    elapsed = time.monotonic() - started
    rows = sql_all(dsn, "SELECT args->>1, args->>0, state, attempts, result, error FROM pgtq_tasks")
    ran = {}
    for (tag,) in sql_all(dsn, "SELECT tag FROM test_runs"):
        ran[tag] = ran.get(tag, 0) + 1
    outcomes: dict[str, int] = {}
    for tag, kind, state, attempts, result, error in rows:
        outcomes[f"{kind}:{state}"] = outcomes.get(f"{kind}:{state}", 0) + 1
        if kind == "good":
            assert (state, result) == ("succeeded", tag), (tag, state, error)
            assert ran[tag] == 1, f"{tag} ran {ran[tag]} times"
        elif kind == "nul":
            assert (state, attempts) == ("failed", 1), (tag, state, error)
            assert "NUL character" in error and "cannot be stored as JSON" in error
        else:
            assert (state, attempts) == ("failed", 1), (tag, state, error)
            assert "Retry(delay=...) must be a finite number" in error
    assert outcomes == {"good:succeeded": 970, "nul:failed": 20, "bad-retry:failed": 10}
    outputs = [w.output() for w in workers]
    errors = sum(o.count("database error while") for o in outputs)
    timeouts = sum(o.count("statement timeout") for o in outputs)
    cancelled = sum(o.count("due to user request") for o in outputs)
    assert timeouts and cancelled, "the faults did not reach the workers' statements"
    for worker, pid, output in zip(workers, pids, outputs, strict=True):
        assert worker.proc.poll() is None and worker.pid == pid
        assert "restarting" not in output
    with capsys.disabled():
        print(
            f"\nfault-injection drain: 1000 tasks in {elapsed:.1f}s, {cancels[0]} cancels "
            f"sent, {errors} database errors survived by the workers ({timeouts} statement "
            f"timeouts, {cancelled} cancelled statements), {outcomes}"
        )


@pytest.mark.slow
def test_a_task_claimed_for_a_worker_that_never_got_it_is_released(served_app, dsn, start_worker):
    # As if a claim committed although its statement's reply was an error (a
    # statement timeout firing during the commit): the row says the worker
    # holds the task, the worker never heard of it, and its lease is alive.
    worker = start_worker(settings={"PGTQ_HEARTBEAT_INTERVAL": 0.3, "PGTQ_LEASE": 2.0})
    owner = worker.wait_ready()
    task = mark.options(delay=3600).push("orphan")
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET state = 'running', locked_by = %s, attempts = 1, "
        "started_at = now(), run_at = now() WHERE id = %s",
        (owner, task.id),
    )
    row = final(dsn, task.id, timeout=20)
    assert row["state"] == "succeeded"
    assert row["attempts"] == 1  # the lost claim was given back uncounted
    assert len(runs(dsn, "orphan")) == 1
    assert "never got" in worker.output()
