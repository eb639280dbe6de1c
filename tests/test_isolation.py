"""Isolated handlers: each attempt in a child process of the worker.

The child mechanics (:class:`flask_pgtq.isolation.Child`) first, then real
worker processes running ``isolated=True`` handlers of ``tests/worker_app.py``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
import warnings

import pytest

from flask_pgtq import ConfigurationError, PgTq, State
from flask_pgtq.connection import Database
from flask_pgtq.exceptions import TaskTimeout
from flask_pgtq.isolation import Child
from tests import worker_app
from tests.helpers import poll_until
from tests.worker_app import isolated, isolated_regex
from tests.workers import runs


def state(task_id: int) -> State:
    return worker_app.q.get_task(task_id).state


def finished(task_id: int) -> bool:
    return state(task_id).is_final


# -- the child process ------------------------------------------------------------


def test_a_child_sends_back_the_text_its_work_returns() -> None:
    big = "x" * 1_000_000  # far more than a pipe holds: read while it writes
    ended = Child.start(lambda: f"{os.getpid()} {big}").wait()
    pid, text = ended.output.split(" ")
    assert int(pid) != os.getpid()
    assert text == big
    assert ended.describe() == "exited with code 0"
    assert ended.stopped_for is None


def test_a_child_that_exits_or_crashes_sends_nothing() -> None:
    def exits() -> str:
        os._exit(3)

    def crashes() -> str:
        faulthandler.disable()  # pytest's would print the child's stack
        os.kill(os.getpid(), signal.SIGSEGV)
        return "never"

    def raises() -> str:
        raise RuntimeError("broken work")

    assert (Child.start(exits).wait().output, Child.start(exits).wait().describe()) == (
        None,
        "exited with code 3",
    )
    assert Child.start(crashes).wait().describe() == "killed by signal SIGSEGV"
    assert Child.start(raises).wait().describe() == "exited with code 70"


def test_kill_ends_a_child_at_once_and_remembers_why() -> None:
    child = Child.start(lambda: time.sleep(60) or "late")
    started = time.monotonic()
    threading.Timer(0.2, child.kill, args=(TaskTimeout,)).start()
    ended = child.wait()
    assert time.monotonic() - started < 5
    assert ended.output is None
    assert ended.describe() == "killed by signal SIGKILL"
    assert ended.stopped_for is TaskTimeout
    child.kill(TaskTimeout)  # reaped: does nothing


def test_a_grandchild_holding_the_pipe_does_not_delay_the_end() -> None:
    def work() -> str:
        if os.fork() == 0:
            time.sleep(10)  # holds the pipe's write end open
            os._exit(0)
        return "done"

    started = time.monotonic()
    ended = Child.start(work).wait()
    assert ended.output == "done"
    assert time.monotonic() - started < 5


def test_the_python_3_12_warning_about_forking_threads_is_silenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_fork = os.fork

    def fork() -> int:
        warnings.warn(
            f"This process (pid={os.getpid()}) is multi-threaded, use of fork() may "
            "lead to deadlocks in the child.",
            DeprecationWarning,
            stacklevel=2,
        )
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Child.start(lambda: "quiet").wait().output == "quiet"
        with pytest.raises(DeprecationWarning):
            warnings.warn("other warnings still count", DeprecationWarning, stacklevel=1)


def test_a_pool_lock_held_by_another_thread_does_not_hang_the_child(dsn: str) -> None:
    db = Database(dsn)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db._lock:
            holding.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        child = Child.start(lambda: str(_select_one(db)))
        timer = threading.Timer(10, child.kill, args=(TaskTimeout,))
        timer.start()
        ended = child.wait()
        timer.cancel()
    finally:
        release.set()
        thread.join()
    assert ended.output == "1", ended.describe()


def _select_one(db: Database) -> int:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        return int(cur.fetchone()[0])


# -- the handler option -----------------------------------------------------------


def test_a_plain_call_of_an_isolated_handler_runs_in_this_process(dsn: str) -> None:
    q = PgTq(dsn=dsn)

    @q.handler(isolated=True, timeout=5)
    def whose_pid(a: int, b: int) -> tuple[int, int]:
        return os.getpid(), a + b

    assert whose_pid.isolated is True
    assert whose_pid(1, 2) == (os.getpid(), 3)


def test_isolated_must_be_a_bool(dsn: str) -> None:
    q = PgTq(dsn=dsn)
    with pytest.raises(ConfigurationError, match="isolated must be True or False"):
        q.handler(name="job", isolated="yes")(lambda: None)  # type: ignore[arg-type]


# -- in a worker ------------------------------------------------------------------

#: A lease the GIL-holding handler would outlive, and two workers that could
#: steal its task if the lease ran out.
SHORT_LEASE = {"PGTQ_LEASE": 4.0, "PGTQ_HEARTBEAT_INTERVAL": 1.0}


def test_a_gil_holding_handler_times_out_and_keeps_its_lease(served_app, dsn, start_worker):
    workers = [start_worker(settings=SHORT_LEASE) for _ in range(2)]
    ids = {w.wait_ready(): w for w in workers}
    task = isolated_regex.push(15, "regex")
    poll_until(lambda: finished(task.id), 30, 0.05, "both attempts to time out")
    final = worker_app.q.get_task(task.id)
    assert final.state is State.FAILED
    assert final.attempts == 2
    assert final.error == "TaskTimeout: ran longer than its timeout of 2.0s and was stopped"
    # Each attempt recorded by the worker that ran it: a retry, then the end.
    assert [(h["attempt"], h["state"]) for h in final.history] == [(1, "queued"), (2, "failed")]
    assert all(h["worker"] in ids and "TaskTimeout" in h["error"] for h in final.history)
    # Each attempt started once, and was killed in its child (no "finished").
    starts = runs(dsn, "regex")
    assert [(r["attempt"], r["event"]) for r in starts] == [(1, "started"), (2, "started")]
    assert not {r["pid"] for r in starts} & {w.pid for w in workers}
    for worker in workers:
        assert "lease expired" not in worker.output()
        assert "rescued" not in worker.output()
        worker.terminate()
    assert [w.wait() for w in workers] == [0, 0]


def test_an_isolated_handler_runs_in_a_child_with_a_fresh_context(served_app, dsn, start_worker):
    worker = start_worker()
    task = isolated.push("result", "result")
    poll_until(lambda: finished(task.id), 15, 0.05)
    final = worker_app.q.get_task(task.id)
    assert final.state is State.SUCCEEDED
    assert final.result["parent"] == worker.pid
    assert final.result["pid"] != worker.pid
    assert final.result["attempt"] == 1
    events = runs(dsn, "result")
    assert [r["event"] for r in events] == ["started", "teardown"]
    assert {r["pid"] for r in events} == {final.result["pid"]}


@pytest.mark.parametrize(
    ("how", "outcome", "error"),
    [
        ("retry", State.FAILED, "Retry: later, please"),
        ("cancel", State.CANCELLED, "not worth it"),
        ("not-json", State.FAILED, "cannot be stored as JSON (set)"),
    ],
)
def test_retry_cancel_and_bad_results_end_as_in_a_thread(
    served_app, dsn, start_worker, how, outcome, error
):
    start_worker()
    task = isolated.push(how, how)
    poll_until(lambda: finished(task.id), 15, 0.05)
    final = worker_app.q.get_task(task.id)
    assert final.state is outcome
    assert error in final.error
    attempts = 2 if how == "retry" else 1
    assert final.attempts == attempts
    assert [r["attempt"] for r in runs(dsn, how) if r["event"] == "started"] == list(
        range(1, attempts + 1)
    )


def test_an_exception_comes_back_with_its_traceback(served_app, dsn, start_worker):
    start_worker()
    task = isolated.push("raise", "raise")
    poll_until(lambda: finished(task.id), 15, 0.05)
    final = worker_app.q.get_task(task.id)
    assert final.state is State.FAILED
    assert final.attempts == 2
    assert final.error.startswith("Traceback (most recent call last):")
    assert 'worker_app.py", line' in final.error
    assert final.error.rstrip().endswith("ValueError: boom in raise")
    assert "ValueError: boom in raise" in final.history[0]["error"]


@pytest.mark.parametrize(
    ("how", "death"), [("exit", "exited with code 3"), ("segfault", "killed by signal SIGSEGV")]
)
def test_a_child_that_dies_is_a_failed_attempt(served_app, dsn, start_worker, how, death):
    worker = start_worker()
    task = isolated.push(how, how)
    poll_until(lambda: finished(task.id), 15, 0.05)
    final = worker_app.q.get_task(task.id)
    assert final.state is State.FAILED
    assert final.attempts == 2
    assert f"child process running this isolated attempt {death}" in final.error
    assert len(runs(dsn, how)) == 2
    # The worker itself lives on.
    assert worker.proc.poll() is None
    later = isolated.push("result", "after")
    poll_until(lambda: finished(later.id), 15, 0.05)
    assert worker_app.q.get_task(later.id).result["parent"] == worker.pid


def test_cancel_kills_a_running_isolated_handler_at_once(served_app, dsn, start_worker):
    worker = start_worker(settings={"PGTQ_CANCEL_GRACE": 30})
    task = isolated.push("sleep", "sleeper")
    (start,) = poll_until(lambda: runs(dsn, "sleeper"), 10, 0.02, "the task to start")
    asked = time.monotonic()
    worker_app.q.cancel(task.id)
    poll_until(lambda: finished(task.id), 10, 0.02)
    assert time.monotonic() - asked < 5, "killed at once, not after PGTQ_CANCEL_GRACE"
    final = worker_app.q.get_task(task.id)
    assert final.state is State.CANCELLED
    assert final.error == "cancelled while running: stopped by the worker"
    poll_until(lambda: not _alive(start["pid"]), 5, 0.02, "the child to be gone")
    assert worker.proc.poll() is None


def test_a_stopping_worker_kills_its_children_and_releases_their_tasks(
    served_app, dsn, start_worker
):
    worker = start_worker(settings={"PGTQ_SHUTDOWN_GRACE": 0.5})
    task = isolated.push("sleep", "stopped")
    (start,) = poll_until(lambda: runs(dsn, "stopped"), 10, 0.02, "the task to start")
    worker.terminate()
    assert worker.wait() == 0
    assert state(task.id) is State.QUEUED
    poll_until(lambda: not _alive(start["pid"]), 5, 0.02, "the child to be gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running: it waits to be reaped by its parent (or init).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
