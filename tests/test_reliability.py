"""Fault injection: workers killed, frozen and starved, the database
restarted, connections cut, poison tasks.  Nothing may be lost, and every
duplicate execution must trace to an attempt whose worker was killed.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import re
import signal
import threading
import time
import traceback
from typing import Any

import psycopg2
import pytest

from flask_pgtq import DatabaseError, PgTq, State, signals
from flask_pgtq import queue as queue_module
from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import crash, cut_own_connections, mark, slow
from tests.workers import runs


def counts(dsn: str) -> dict[str, int]:
    return dict(sql_all(dsn, "SELECT state, count(*) FROM pgtq_tasks GROUP BY state"))


def listener_backends(dsn: str, pid: int) -> list[int]:
    rows = sql_all(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        (f"flask_pgtq-listen:{pid}",),
    )
    return [row[0] for row in rows]


@pytest.mark.slow
def test_chaos_drain_with_workers_killed_every_1_5_seconds(served_app, dsn, start_worker):
    settings = {"PGTQ_LEASE": 2.0, "PGTQ_HEARTBEAT_INTERVAL": 0.3, "PGTQ_RETRY_BACKOFF": 0.05}
    # 0.1 s of work per task: with six handler threads the drain lasts long
    # enough for several kills, and kills land mid-task.
    ids = [slow.options(max_attempts=50).push(0.1, f"c{i}").id for i in range(360)]
    workers = [start_worker("--concurrency", "2", settings=settings) for _ in range(3)]
    killed: set[int] = set()
    deadline = time.monotonic() + 240
    while counts(dsn).get("succeeded", 0) < len(ids):
        assert time.monotonic() < deadline, f"not drained: {counts(dsn)}"
        victim = random.choice(workers)
        victim.kill()
        killed.add(victim.pid)
        workers.remove(victim)
        workers.append(start_worker("--concurrency", "2", settings=settings))
        # ~1.5 s between kills, or stop as soon as everything is done.
        try:
            poll_until(lambda: counts(dsn).get("succeeded", 0) == len(ids), 1.5, 0.1, "drained")
        except AssertionError:
            pass

    assert counts(dsn) == {"succeeded": len(ids)}, "nothing may be left running or queued"
    assert len(killed) >= 3, "the chaos did not happen"
    final_attempt = dict(sql_all(dsn, "SELECT id, attempts FROM pgtq_tasks"))
    by_task = collections.defaultdict(list)
    for row in runs(dsn):
        if row["event"] in ("ran", "started"):
            by_task[row["task_id"]].append(row)
    assert set(by_task) == set(ids)
    duplicates = 0
    for task_id, executions in by_task.items():
        for execution in executions:
            if execution["attempt"] != final_attempt[task_id]:
                duplicates += 1
                assert execution["pid"] in killed, (
                    f"task {task_id} attempt {execution['attempt']} ran on {execution['pid']}, "
                    "which was never killed"
                )
        finals = [e for e in executions if e["attempt"] == final_attempt[task_id]]
        assert len(finals) == 1, f"task {task_id}'s final attempt ran {len(finals)} times"
    for w in workers:
        w.terminate()
    assert [w.wait() for w in workers] == [0] * len(workers)


def test_frozen_worker_loses_its_lease_and_its_late_outcome_is_rejected(
    served_app, dsn, start_worker
):
    settings = {"PGTQ_LEASE": 2.0, "PGTQ_HEARTBEAT_INTERVAL": 0.3}
    frozen = start_worker(settings=settings)
    task = slow.push(1.0, "frozen")
    poll_until(lambda: runs(dsn, "frozen"), 10, 0.02, "the task to start")
    frozen.send(signal.SIGSTOP)
    try:
        rescuer = start_worker(settings=settings)
        poll_until(
            lambda: "finished" in [r["event"] for r in runs(dsn, "frozen")],
            20,
            0.05,
            "the rescuer to finish the task",
        )
        assert worker_app.q.get_task(task.id).attempts == 2
    finally:
        frozen.send(signal.SIGCONT)
    poll_until(lambda: "lease lost" in frozen.output(), 20, 0.05, "the frozen worker to notice")
    events = [(r["pid"], r["attempt"], r["event"]) for r in runs(dsn, "frozen")]
    assert (rescuer.pid, 2, "finished") in events
    assert (frozen.pid, 1, "finished") in events  # it did finish, late...
    final = worker_app.q.get_task(task.id)
    assert final.state is State.SUCCEEDED  # ...but the newer outcome stands
    assert final.attempts == 2
    assert [h["state"] for h in final.history] == ["lost"]
    # The thawed worker carries on: it registers again and takes new work.
    poll_until(
        lambda: sql_one(dsn, "SELECT count(*) FROM pgtq_workers WHERE pid = %s", (frozen.pid,))[0],
        10,
        0.05,
        "the thawed worker to register again",
    )
    rescuer.terminate()
    assert rescuer.wait() == 0
    later = mark.push("after-thaw")
    poll_until(lambda: runs(dsn, "after-thaw"), 10, 0.05, "the thawed worker to work")
    assert runs(dsn, "after-thaw")[0]["pid"] == frozen.pid
    assert worker_app.q.get_task(later.id).attempts == 1
    frozen.terminate()
    assert frozen.wait() == 0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_workers_survive_a_database_restart(served_app, dsn, start_worker, pg_server, mode):
    # Polling every 30 s: only a re-established LISTEN explains a quick start.
    worker = start_worker(settings={"PGTQ_POLL_INTERVAL": 30.0})
    before = poll_until(lambda: listener_backends(dsn, worker.pid), 10, 0.05, "LISTEN")
    pg_server.restart(mode)
    after = poll_until(
        lambda: [p for p in listener_backends(dsn, worker.pid) if p not in before],
        15,
        0.05,
        "the worker to LISTEN again",
    )
    assert after
    assert worker.proc.poll() is None, "the worker died"
    pushed = time.monotonic()
    task = mark.push(f"after-{mode}-restart")
    poll_until(
        lambda: runs(dsn, f"after-{mode}-restart"), 3, 0.01, "the task to start after the restart"
    )
    started_after = time.monotonic() - pushed
    assert started_after < 1.0, f"started {started_after:.2f}s after the push"
    poll_until(lambda: worker_app.q.get_task(task.id).state is State.SUCCEEDED, 10, 0.02)
    worker.terminate()
    assert worker.wait() == 0


def test_a_worker_waits_for_a_database_that_is_down(served_app, dsn, start_worker, pg_server):
    task = mark.push("patient")
    pg_server.stop("fast")
    try:
        worker = start_worker(ready=False)
        poll_until(
            lambda: "database error while starting" in worker.output(),
            15,
            0.05,
            "the worker to wait for the database",
        )
        assert worker.proc.poll() is None
    finally:
        pg_server.start()
    poll_until(lambda: runs(dsn, "patient"), 15, 0.05, "the task to run once the database is up")
    assert worker_app.q.get_task(task.id).state in (State.RUNNING, State.SUCCEEDED)
    worker.terminate()
    assert worker.wait() == 0


def test_a_listen_connection_killed_before_its_listen_is_retried_not_raised(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_pgtq.listener import Listener

    listener = Listener(dsn, ("pgtq",), "test")
    connect = listener._db.connect
    killed: list[int] = []

    def connect_then_kill(**options: Any) -> Any:
        conn = connect(**options)
        pid = conn.get_backend_pid()
        sql_one(dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        poll_until(
            lambda: (
                not sql_one(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))[0]
            ),
            10,
            0.01,
            "the backend to exit",
        )
        killed.append(pid)
        return conn

    monkeypatch.setattr(listener._db, "connect", connect_then_kill)
    listener.ensure()  # the LISTEN fails: a warning and a later retry, no exception
    assert killed and not listener.connected
    assert listener.next_try > time.monotonic()
    monkeypatch.undo()
    listener.next_try = 0.0
    listener.ensure()
    try:
        assert listener.connected
    finally:
        listener.close()


def test_killed_listener_connection_is_rebuilt(served_app, dsn, start_worker):
    worker = start_worker(settings={"PGTQ_POLL_INTERVAL": 30.0})
    (old,) = poll_until(lambda: listener_backends(dsn, worker.pid), 10, 0.05, "LISTEN")
    sql_one(dsn, "SELECT pg_terminate_backend(%s)", (old,))
    poll_until(
        lambda: [p for p in listener_backends(dsn, worker.pid) if p != old],
        10,
        0.05,
        "a new LISTEN connection",
    )
    task = mark.push("relisten")
    poll_until(lambda: runs(dsn, "relisten"), 3, 0.01, "NOTIFY over the new connection")
    poll_until(lambda: worker_app.q.get_task(task.id).state is State.SUCCEEDED, 10, 0.02)
    assert "lost its LISTEN connection" in worker.output()


def test_killed_control_connections_between_handler_and_ack(served_app, dsn, start_worker):
    worker = start_worker()
    tasks = [cut_own_connections.push(f"cut{i}") for i in range(5)]
    for task in tasks:
        poll_until(
            lambda t=task: worker_app.q.get_task(t.id).state is State.SUCCEEDED,
            15,
            0.05,
            f"task {task.id} to be recorded",
        )
    assert all(worker_app.q.get_task(t.id).attempts == 1 for t in tasks)
    assert worker.proc.poll() is None
    # And the worker keeps working afterwards.
    later = mark.push("after-cuts")
    poll_until(lambda: worker_app.q.get_task(later.id).state is State.SUCCEEDED, 10, 0.02)


def test_killing_every_worker_connection_under_load_loses_nothing(served_app, dsn, start_worker):
    worker = start_worker("--concurrency", "2")
    ids = [mark.push(f"load{i}").id for i in range(150)]
    for _ in range(5):
        sql_one(
            dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE %s",
            (f"flask_pgtq%:{worker.pid}",),
        )
        time.sleep(0.2)  # noqa: TID251 - spacing the faults out, not waiting for a result
    poll_until(lambda: counts(dsn).get("succeeded") == len(ids), 60, 0.1, "all tasks to succeed")
    executions = collections.Counter(r["task_id"] for r in runs(dsn))
    assert set(executions) == set(ids)
    assert worker.proc.poll() is None


@pytest.mark.slow
def test_poison_tasks_fail_after_max_attempts_and_spare_the_rest(served_app, dsn, start_worker):
    settings = {"PGTQ_LEASE": 1.5, "PGTQ_HEARTBEAT_INTERVAL": 0.25, "PGTQ_RETRY_BACKOFF": 0.3}
    poison = {how: crash.push(how).id for how in ("exit", "segfault", "memory")}
    good = [mark.push(f"good{i}").id for i in range(30)]
    workers = [start_worker(settings=settings, ready=False) for _ in range(2)]
    deadline = time.monotonic() + 90
    finished = ("succeeded", "failed", "cancelled")
    while sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE state <> ALL(%s)", (list(finished),))[
        0
    ]:
        assert time.monotonic() < deadline, counts(dsn)
        for i, w in enumerate(workers):
            if w.proc.poll() is not None:  # a supervisor's job: start a new one
                workers[i] = start_worker(settings=settings, ready=False)
        try:
            poll_until(lambda: any(w.proc.poll() is not None for w in workers), 0.5, 0.05)
        except AssertionError:
            pass

    for how, task_id in poison.items():
        task = worker_app.q.get_task(task_id)
        assert task.state is State.FAILED, how
        assert task.attempts == 3, how
        # A task prefetched by a worker that another poison task killed loses
        # that attempt without running (only tasks with an attempt to spare
        # are prefetched): it ran at least once, at most max_attempts times.
        assert 1 <= len(runs(dsn, how)) <= 3, how
    # os._exit and a segfault kill the worker: each attempt is rescued ("lost"),
    # with backoff before the next one.
    for how in ("exit", "segfault"):
        history = worker_app.q.get_task(poison[how]).history
        # Every attempt died with its worker; the task then failed for good.
        assert [h["state"] for h in history] == ["lost", "lost", "lost"], how
        starts = [
            r
            for r in sql_all(
                dsn, "SELECT attempt, at FROM test_runs WHERE tag = %s ORDER BY id", (how,)
            )
        ]
        gaps = [(b[1] - a[1]).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
        assert all(gap >= 1.5 for gap in gaps), f"{how}: no lease/backoff between attempts {gaps}"
    # Memory exhaustion is a MemoryError: an ordinary failure, retried with
    # backoff.  (Its last attempt may instead be lost with a worker that
    # another poison task killed: the MemoryError is then in its history.)
    memory = worker_app.q.get_task(poison["memory"])
    errors = [memory.error or "", *(h.get("error") or "" for h in memory.history)]
    assert any("MemoryError" in error for error in errors), errors
    assert all(worker_app.q.get_task(i).state is State.SUCCEEDED for i in good)


def test_memory_ceiling_recycles_the_worker_between_tasks(served_app, dsn, start_worker):
    for i in range(3):
        mark.push(f"mem{i}")
    worker = start_worker("--max-memory", "1", ready=False)  # any Python is above 1 MiB
    assert worker.wait() == 0
    assert "memory ceiling" in worker.output()
    assert "running" not in counts(dsn)


def test_fork_makes_new_connections_and_the_parent_keeps_its_own(dsn):
    q = PgTq(dsn=dsn)

    @q.handler()
    def job(n: int) -> None:
        pass

    job.push(1)
    with q.app_queue().db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (parent_backend,) = cur.fetchone()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with q.app_queue().db.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                ok = cur.fetchone()[0] != parent_backend
            job.push(2)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child reused the parent's connection"
    with q.app_queue().db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] == parent_backend, "the parent's connection was lost"
    job.push(3)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 3


def test_threads_never_share_a_connection(dsn):
    q = PgTq(dsn=dsn, pool_size=3)

    @q.handler()
    def job(n: int) -> None:
        pass

    errors: list[BaseException] = []
    backends: set[tuple[int, int]] = set()
    lent: set[int] = set()  # backends lent to a thread right now
    shared: list[int] = []
    lock = threading.Lock()

    def pusher(n: int) -> None:
        try:
            for i in range(40):
                job.push(n * 100 + i)
                with q.app_queue().db.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    backend = cur.fetchone()[0]
                    with lock:
                        if backend in lent:
                            shared.append(backend)
                        lent.add(backend)
                    backends.add((threading.get_ident(), backend))
                    cur.execute("SELECT pg_sleep(0.001)")  # hold it a moment
                    with lock:
                        lent.discard(backend)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert shared == [], "a connection was lent to two threads at once"
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 320
    assert len({backend for _, backend in backends}) <= 3, "the pool exceeded its size"


def test_connection_budget_of_a_busy_worker(served_app, dsn, start_worker):
    worker = start_worker("--concurrency", "4")
    for i in range(12):
        slow.push(0.3, f"budget{i}")
    peak = 0
    in_transaction = 0
    deadline = time.monotonic() + 20
    while len([r for r in runs(dsn) if r["event"] == "finished"]) < 12:
        assert time.monotonic() < deadline
        rows = sql_all(
            dsn,
            "SELECT state, now() - xact_start > interval '100 ms' FROM pg_stat_activity "
            "WHERE application_name LIKE %s",
            (f"flask_pgtq%:{worker.pid}",),
        )
        peak = max(peak, len(rows))
        # A transaction left open (idle in it for more than a round trip).
        in_transaction += sum(
            1 for state, long in rows if state.startswith("idle in transaction") and long
        )
    # The documented budget: one LISTEN connection plus at most two pooled
    # ones (claims/outcomes and heartbeats), whatever the concurrency.
    assert 1 <= peak <= 3
    assert in_transaction == 0


def test_claim_uses_the_ready_index_with_a_large_history(dsn, db):
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, state, finished_at) "
            "SELECT 'default', 'job', 'succeeded', now() FROM generate_series(1, 50000)"
        )
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name) SELECT 'default', 'job' "
            "FROM generate_series(1, 1000)"
        )
        cur.execute("ANALYZE pgtq_tasks")
        from flask_pgtq import queries

        cur.execute(
            "EXPLAIN " + queries.get("finish_and_claim"), round_params(limit=5, prefetch=20)
        )
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "pgtq_tasks_ready" in plan, plan
    assert "Seq Scan" not in plan, plan


def round_params(**values: Any) -> dict[str, Any]:
    """Parameters of the worker's round (finish_and_claim): no outcomes, a
    claim of *values* (default: nothing) from queue "default"."""
    params = {
        "owner": "00000000-0000-0000-0000-000000000000",
        "outcomes": "[]",
        "durable": False,
        "queue": "default",
        "limit": 0,
        "prefetch": 0,
        "limited": [],
        "key_only": [],
    }
    params.update(values)
    return params


def test_the_plain_claim_never_reads_a_limited_backlog(dsn, db):
    # 20,000 queued tasks of a limited handler, marked as a push marks them:
    # the plain claim's index does not hold them, so a claim of the other
    # tasks reads none of them (it used to read past all of them).
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, limited) "
            "SELECT 'default', 'capped', true FROM generate_series(1, 20000)"
        )
        cur.execute("INSERT INTO pgtq_tasks (queue, name, priority) VALUES ('default', 'job', -1)")
        cur.execute("ANALYZE pgtq_tasks")
        from flask_pgtq import queries

        cur.execute("BEGIN")
        cur.execute(
            "EXPLAIN (ANALYZE, TIMING OFF) " + queries.get("finish_and_claim"),
            round_params(limit=5, prefetch=20, limited=["capped"]),
        )
        plan = "\n".join(row[0] for row in cur.fetchall())
        cur.execute("ROLLBACK")
    assert "Seq Scan" not in plan, plan
    scans = plan.split("->")
    ready = [scan for scan in scans if "Index Scan using pgtq_tasks_ready" in scan]
    assert ready, plan
    for scan in ready:
        # Only the plain task is read (the claim ahead reads it again and
        # leaves it: it was claimed now).
        removed = re.findall(r"Rows Removed by Filter: (\d+)", scan)
        assert sum(map(int, removed)) <= 1, scan


@pytest.mark.parametrize(
    "statement, params",
    [
        ("rescue_tasks", {"backoff": 1.0, "backoff_max": 60.0}),
        ("cancel_requests", {"owner": "00000000-0000-0000-0000-000000000000"}),
        (
            "claim_limited_tasks",
            {
                "owner": "00000000-0000-0000-0000-000000000000",
                "queue": "default",
                "limit": 5,
                "name": "job",
                "concurrency": 2,
                "rate": None,
                "period": None,
                "by_key": False,
                "key_concurrency": None,
                "key_rate": None,
                "key_period": None,
                "unkeyed": True,
                "scan": 84,
            },
        ),
        (
            "claim_limited_tasks",
            {
                "owner": "00000000-0000-0000-0000-000000000000",
                "queue": "default",
                "limit": 5,
                "name": "job",
                "concurrency": None,
                "rate": None,
                "period": None,
                "by_key": True,
                "key_concurrency": 1,
                "key_rate": None,
                "key_period": None,
                "unkeyed": False,
                "scan": 84,
            },
        ),
    ],
)
def test_running_task_lookups_use_the_running_index_with_a_large_history(
    dsn, db, statement, params
):
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, state, finished_at) "
            "SELECT 'default', 'job', 'succeeded', now() FROM generate_series(1, 50000)"
        )
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, state, locked_by, started_at) "
            "SELECT 'default', 'job', 'running', gen_random_uuid(), now() "
            "FROM generate_series(1, 100)"
        )
        cur.execute("ANALYZE pgtq_tasks")
        from flask_pgtq import queries

        cur.execute("EXPLAIN " + queries.get(statement), params)
        plan = "\n".join(row[0] for row in cur.fetchall())
    # (A claim with limits per key counts running tasks by key.)
    assert "pgtq_tasks_running_by_name" in plan or "pgtq_tasks_running_key" in plan, plan
    assert "Seq Scan on pgtq_tasks" not in plan, plan


def test_retention_deletes_in_small_batches(dsn, db):
    q = PgTq(dsn=dsn, keep_succeeded=3600, keep_failed=None, prune_batch=500)
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, state, finished_at) "
            "SELECT 'default', 'job', s, now() - interval '2 hours' "
            "FROM unnest(array['succeeded', 'failed']) AS s, generate_series(1, 1200)"
        )
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, state, finished_at) "
            "SELECT 'default', 'job', 'succeeded', now() FROM generate_series(1, 10)"
        )
    store = q.app_queue().store
    assert [store.prune() for _ in range(4)] == [500, 500, 200, 0]
    assert counts(dsn) == {"failed": 1200, "succeeded": 10}


def test_a_canary_password_never_shows(served_app, dsn, start_worker, pg_server, caplog):
    canary = "canary-Pa55w0rd-xyzzy"
    # The throwaway server trusts everyone, so a password is accepted and ignored.
    secret_dsn = psycopg2.extensions.make_dsn(dsn, password=canary)
    worker = start_worker("--log-level", "DEBUG", settings={"PGTQ_DSN": secret_dsn})
    crash_free = [mark.push("secret-ok"), worker_app.flaky.push(5, "secret-fail")]
    poll_until(
        lambda: all(worker_app.q.get_task(t.id).state.is_final for t in crash_free), 20, 0.05
    )
    worker.terminate()
    assert worker.wait() == 0
    # A connection failure, logged at every level.
    down_dsn = psycopg2.extensions.make_dsn(dsn, password=canary, port=1)
    broken = start_worker("--log-level", "DEBUG", settings={"PGTQ_DSN": down_dsn}, ready=False)
    poll_until(lambda: "database error while starting" in broken.output(), 15, 0.05)
    broken.terminate()
    assert broken.wait() == 0
    standalone = PgTq(dsn=down_dsn)
    with pytest.raises(Exception) as info:
        standalone.pop()
    # Signal payloads, in-process, with every kind of outcome.
    payloads: list[str] = []

    def capture(sender, **payload):
        payloads.append(repr(sender) + repr(payload))

    local = PgTq(dsn=secret_dsn)

    @local.handler(max_attempts=2)
    def sometimes(fail: bool) -> str:
        if fail:
            raise RuntimeError("failing")
        return "ok"

    receivers = [getattr(signals, name) for name in signals.__dict__ if name.startswith("task_")]
    for signal_ in receivers:
        signal_.connect(capture)
    try:
        sometimes.push(False)
        sometimes.push(True)
        for _ in range(3):
            popped = local.pop()
            if popped is not None:
                popped.run()
    finally:
        for signal_ in receivers:
            signal_.disconnect(capture)
    assert len(payloads) >= 6
    for text in (
        worker.output(),
        broken.output(),
        str(info.value),
        repr(info.value),
        repr(standalone),
        repr(standalone.config),
        caplog.text,
        *payloads,
    ):
        assert canary not in text


def test_a_server_error_that_echoes_the_password_is_scrubbed(dsn, start_worker, caplog):
    canary = "canary-Pa55w0rd-plugh"
    # The server trusts everyone and ignores the password, but it names the
    # database it cannot find: here the password is that name too, so a real
    # server error carries the password.
    echoing = psycopg2.extensions.make_dsn(dsn, password=canary, dbname=canary)
    standalone = PgTq(dsn=echoing)
    with caplog.at_level(logging.DEBUG, logger="flask_pgtq"):
        with pytest.raises(DatabaseError) as info:
            standalone.pop()
    message = str(info.value)
    assert canary not in message
    assert 'database "***" does not exist' in message, message  # the server named it
    shown = "".join(traceback.format_exception(info.value))
    worker = start_worker("--log-level", "DEBUG", settings={"PGTQ_DSN": echoing}, ready=False)
    poll_until(
        lambda: worker.output().count("database error while starting") >= 2,
        15,
        0.05,
        "the worker to retry twice",
    )
    worker.terminate()
    assert worker.wait() == 0
    assert 'database "***" does not exist' in worker.output()
    for text in (message, repr(info.value), shown, worker.output(), caplog.text):
        assert canary not in text


def test_recorded_outcomes_survive_a_server_crash(dsn, pg_server):
    # Every outcome is committed durably before it counts as recorded: an
    # asynchronous commit still in the server's WAL buffers is lost when the
    # server crashes.  The WAL writer writes full pages as they fill, and the
    # last partial page every wal_writer_delay: 10 s here, so that the last
    # outcomes of a quick run of tasks, then a crash, would surely be lost.
    sql_all(pg_server.dsn, "ALTER SYSTEM SET wal_writer_delay = '10s'")
    sql_all(pg_server.dsn, "SELECT pg_reload_conf()")
    try:
        q = PgTq(dsn=dsn)  # no heartbeat in the run: its commit would flush the WAL

        @q.handler()
        def job(n: int) -> int:
            return n

        job.push_many([[n] for n in range(200)])
        claimed = [q.pop() for _ in range(200)]
        assert None not in claimed
        for task in claimed:
            assert task.run().state is State.SUCCEEDED
        pg_server.restart("immediate")
        q.close()
    finally:
        sql_all(pg_server.dsn, "ALTER SYSTEM RESET wal_writer_delay")
        sql_all(pg_server.dsn, "SELECT pg_reload_conf()")
    rows = sql_all(dsn, "SELECT state, count(*), count(result) FROM pgtq_tasks GROUP BY state")
    assert rows == [("succeeded", 200, 200)], "recorded outcomes were lost in the crash"


@pytest.mark.parametrize("prepared", [True, False])
def test_the_worker_round_runs_without_jit(dsn, prepared):
    # On a big table the round's estimates pass jit_above_cost, and
    # PostgreSQL compiled it on every run (80-150 ms of a 13 ms round at
    # 2,000,000 tasks): each pooled statement says "SET LOCAL jit = off".
    q = PgTq(dsn=dsn, prepared_statements=prepared)
    try:
        store = q.app_queue().store
        at, rows = store._execute("finish_and_claim", round_params(), None, queue_module._indexed)
        assert rows[0][at["jit"]] == "off"
        # Only for that statement: the connection's own setting is left alone.
        with store.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT setting = reset_val FROM pg_settings WHERE name = 'jit'")
            assert cur.fetchone()[0] is True
    finally:
        q.close()


def test_the_claim_reads_the_ready_index_in_order_behind_a_large_backlog(dsn, db):
    # 100,000 queued tasks of one handler, analyzed: "name <> ALL(the paused
    # handlers)" then looks false for nearly every row (one name, an array
    # not known when planning), so the planner expected one task and chose
    # a bitmap scan of every queued task plus a sort, on disk, per round:
    # ~100 ms for a round of 200, a 100,000-task drain at 7,700/s instead of
    # 29,000/s.  The round is sent as a worker sends it (queue.sent) and
    # planned with its parameters, as the worker's rounds were; it must read
    # the ready index in order, about as many entries as it claims.
    from flask_pgtq import queries

    prepare, execute = queries.prepared("finish_and_claim")
    with db.cursor() as cur:
        # Pushed over a minute and a half, one after the other (as by
        # batches of push_many): run_at grows with the id.
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, args, run_at) "
            "SELECT 'default', 'job', jsonb_build_array(g), "
            "       now() - interval '1 hour' + g * interval '1 ms' "
            "FROM generate_series(1, 100000) AS g"
        )
        cur.execute("ANALYZE pgtq_tasks")
        cur.execute("BEGIN")
        cur.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        cur.execute(prepare)

        def fetched() -> int:
            cur.execute(
                "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'pgtq_tasks'"
            )
            return int(cur.fetchone()[0])

        before = fetched()
        cur.execute(
            queue_module.sent("finish_and_claim", execute),
            round_params(owner="00000000-0000-0000-0000-000000000002", limit=1, prefetch=199),
        )
        assert len([row for row in cur.fetchall() if row[0] == 1]) == 200
        assert fetched() - before < 2_000
        cur.execute("ROLLBACK")


def test_the_worker_round_keeps_index_plans_made_on_an_empty_table(dsn, db):
    # A prepared round's generic plan is made after five runs and kept:
    # made while pgtq_tasks was empty (a new deployment, a table filling
    # faster than autovacuum analyzes it), it read the whole table for each
    # outcome once the backlog came (a 2-process drain at 700 tasks/s).  The
    # round is sent as a worker sends it (queue.sent): with sequential scans
    # priced out.  Counted in one transaction: pg_stat_xact_user_tables.
    from flask_pgtq import queries

    prepare, execute = queries.prepared("finish_and_claim")
    owner = "00000000-0000-0000-0000-000000000001"
    with db.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(prepare)
        for _ in range(8):
            cur.execute(queue_module.sent("finish_and_claim", execute), round_params(limit=1))
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, args) "
            "SELECT 'default', 'job', jsonb_build_array(g) FROM generate_series(1, 20000) AS g"
        )

        def seq_scans() -> int:
            cur.execute(
                "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'pgtq_tasks'"
            )
            return int(cur.fetchone()[0])

        outcomes: list[dict[str, Any]] = []
        for _ in range(4):
            before = seq_scans()
            cur.execute(
                queue_module.sent("finish_and_claim", execute),
                round_params(
                    owner=owner,
                    outcomes=json.dumps(outcomes),
                    durable=bool(outcomes),
                    limit=1,
                    prefetch=199,
                ),
            )
            rows = cur.fetchall()
            assert seq_scans() == before
            claimed = [row for row in rows if row[0] == 1]
            assert len(claimed) == 200
            outcomes = [
                {
                    "id": row[7],
                    "attempt": row[12],
                    "state": "succeeded",
                    "result": "1",
                    "error": None,
                    "delay": 0,
                    "snooze": False,
                    "meta": None,
                }
                for row in claimed
            ]
        cur.execute("ROLLBACK")
