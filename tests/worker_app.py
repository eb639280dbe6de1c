"""The app that worker subprocesses of the tests run::

    flask --app tests.worker_app pgtq worker

``PGTQ_TEST_APP_DSN`` names the test's database; ``PGTQ_TEST_APP_SETTINGS``
holds extra ``PGTQ_*`` settings as JSON.  Handlers write what they did to the
table ``test_runs`` (see :data:`RUNS_TABLE`), so tests can count executions.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg2
from flask import Flask, current_app, g

from flask_pgtq import Cancel, PgTq, Retry, Snooze, Task, current_task

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS test_runs (
    id        bigserial PRIMARY KEY,
    task_id   bigint,
    attempt   integer,
    pid       integer,
    tag       text,
    event     text NOT NULL DEFAULT 'ran',
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

q = PgTq()


def record(tag: str, event: str = "ran") -> None:
    """Write a row to test_runs for the current task."""
    with psycopg2.connect(current_app.config["PGTQ_DSN"]) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO test_runs (task_id, attempt, pid, tag, event) VALUES (%s, %s, %s, %s, %s)",
            (current_task.id, current_task.attempts, os.getpid(), tag, event),
        )
    conn.close()


@q.handler()
def mark(tag: str) -> str:
    record(tag)
    return tag


@q.handler()
def add(a: int, b: int) -> int:
    return a + b


@q.handler()
def slow(seconds: float, tag: str) -> str:
    """Record a start, sleep, record the end."""
    record(tag, "started")
    time.sleep(seconds)
    record(tag, "finished")
    return tag


@q.handler(max_attempts=4)
def flaky(failures: int, tag: str) -> int:
    """Fail the first *failures* attempts, then succeed."""
    record(tag)
    if current_task.attempts <= failures:
        raise RuntimeError(f"failing attempt {current_task.attempts}")
    return current_task.attempts


@q.handler()
def retry_later(delay: float) -> None:
    raise Retry(delay=delay, reason="not yet")


@q.handler()
def give_up(reason: str) -> None:
    raise Cancel(reason)


@q.handler()
def probe_context(tag: str) -> str:
    """Prove each task gets a fresh app context: g starts empty."""
    assert "seen" not in g, "g leaked from another task"
    g.seen = tag
    g.tag = tag
    return tag


@q.handler(max_attempts=3)
def crash(how: str) -> None:
    """A poison task: kill the worker process, or exhaust memory."""
    record(how)
    if how == "exit":
        os._exit(13)
    elif how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif how == "memory":
        hog = bytearray(2**40)  # 1 TiB: refused by the kernel, MemoryError
        del hog


@q.handler()
def cut_own_connections(tag: str) -> str:
    """Terminate this worker's queue connections, then return: the outcome
    must still be recorded (over a new connection)."""
    record(tag)
    with psycopg2.connect(current_app.config["PGTQ_DSN"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE %s",
            (f"flask_pgtq%:{os.getpid()}",),
        )
    conn.close()
    return tag


@q.handler(timeout=0.5, max_attempts=2)
def spin(seconds: float, tag: str) -> str:
    """Busy Python code past its timeout: stopped by the watchdog's exception."""
    record(tag, "started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    record(tag, "finished")
    return tag


@q.handler(timeout=0.5, max_attempts=1)
def block(seconds: float, tag: str) -> str:
    """Blocked in C past its timeout: only a fresh process ends it."""
    record(tag, "started")
    time.sleep(seconds)
    record(tag, "finished")
    return tag


@q.handler()
def cooperative(tag: str) -> None:
    """Stops by itself once asked to."""
    record(tag, "started")
    while not current_task.cancel_requested:
        time.sleep(0.01)
    record(tag, "noticed")
    raise Cancel("noticed the request")


@q.handler()
def stubborn(tag: str) -> None:
    """Ignores cancel requests."""
    record(tag, "started")
    while True:
        time.sleep(0.001)


@q.handler(concurrency=1)
def exclusive(tag: str) -> str:
    record(tag, "started")
    time.sleep(0.15)
    record(tag, "finished")
    return tag


@q.handler(rate_limit="4/s")
def limited(tag: str) -> str:
    record(tag)
    return tag


def hold_gil(seconds: float) -> None:
    """Run about *seconds* in one C call that never releases the GIL: a
    catastrophic regular expression (each extra "a" doubles its time)."""
    started = time.perf_counter()
    re.match(r"(a+)+$", "a" * 18 + "b")
    unit = max(time.perf_counter() - started, 1e-4)
    n = 18 + max(0, round(math.log2(seconds / unit)))
    re.match(r"(a+)+$", "a" * n + "b")


@q.handler(isolated=True, timeout=2, max_attempts=2)
def isolated_regex(seconds: float, tag: str) -> str:
    """Holds the GIL past its timeout, in a child process."""
    record(tag, "started")
    hold_gil(seconds)
    record(tag, "finished")
    return tag


@q.handler(isolated=True, max_attempts=2)
def isolated(how: str, tag: str) -> object:
    """Does *how* in a child process of the worker."""
    if how == "none":
        return None
    record(tag, "started")
    g.tag = tag  # the teardown records it: in the child, which has this g
    if how == "result":
        return {"pid": os.getpid(), "parent": os.getppid(), "attempt": current_task.attempts}
    if how == "retry":
        raise Retry(delay=0.2, reason="later, please")
    if how == "cancel":
        raise Cancel("not worth it")
    if how == "raise":
        raise ValueError(f"boom in {tag}")
    if how == "exit":
        os._exit(3)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    if how == "not-json":
        return {1, 2}
    if how == "sleep":
        time.sleep(60)
    return None


@q.periodic("* * * * * *", queue="periodic")
def every_second() -> None:
    record("tick")


def bad_value(kind: str) -> Any:
    """A value PostgreSQL cannot store as a result, or that breaks a codec."""
    if kind == "nul":
        return "a\x00b"
    if kind == "surrogate":
        return {"text": "\ud800"}
    if kind == "int-key":
        return {1: "a"}
    if kind == "deep":
        value: Any = []
        for _ in range(100_000):
            value = [value]
        return value
    if kind == "big":
        return "x" * 2_000
    if kind == "nan":
        return float("nan")
    return kind


@q.handler(max_attempts=2)
def bad_result(kind: str, tag: str) -> Any:
    """Record a run, then return a value that cannot be stored as is."""
    record(tag)
    return bad_value(kind)


@q.handler(max_attempts=2)
def bad_error(kind: str, tag: str) -> None:
    """Fail with an error text PostgreSQL could not store as is."""
    record(tag)
    raise ValueError("bad " + {"nul": "nul\x00here", "surrogate": "surrogate\ud800here"}[kind])


@q.handler(max_attempts=3)
def bad_retry(delay: Any, tag: str) -> None:
    """Retry with the given delay (a number, or ["timedelta", seconds]), once."""
    record(tag)
    if current_task.attempts > 1:
        return
    if isinstance(delay, list):
        delay = timedelta(seconds=delay[1])
    elif isinstance(delay, str) and delay in ("nan", "inf", "1e300"):
        delay = float(delay)
    raise Retry(delay=delay)


@q.handler(max_attempts=5)
def chaos(kind: str, tag: str) -> Any:
    """The fault-injection drain's task: good, unstorable or a bad Retry."""
    record(tag)
    if kind == "bad-retry":
        raise Retry(delay=float("nan"))
    return bad_value(kind) if kind != "good" else tag


@q.handler(max_attempts=5)
def report_then_sleep(seconds: float, tag: str) -> None:
    """Report progress, record a start, then sleep (to be interrupted)."""
    current_task.set_progress({"step": 1, "of": 2})
    record(tag, "started")
    time.sleep(seconds)


@q.handler(max_attempts=1, max_snoozes=10)
def sleepy(times: int, tag: str) -> int:
    """Snooze *times* times (0.1 s each), then succeed."""
    record(tag)
    if current_task.snoozes < times:
        raise Snooze(delay=timedelta(seconds=0.1), reason="not yet")
    return current_task.snoozes


# -- workflows (tests/test_workflows.py) ----------------------------------------


@q.handler()
def wf_add(a: int, b: int) -> int:
    return a + b


@q.handler()
def wf_double(n: int) -> int:
    return 2 * n


@q.handler(max_attempts=5)
def wf_member(key: str, fail_first: bool = False) -> str:
    """A group member; records its run; fails its first attempt if asked."""
    record(f"member:{key}")
    if fail_first and current_task.attempts == 1:
        raise RuntimeError("first attempt fails")
    return key


@q.handler()
def wf_collect(results: Any, tag: str) -> Any:
    """A callback: records its run (to count them), returns what it got."""
    record(tag)
    return results


@q.handler(max_attempts=1)
def wf_fail(tag: str) -> None:
    record(tag)
    raise ValueError(f"{tag} fails")


@q.handler()
def wf_parents(tag: str) -> Any:
    """Returns what current_task.parent_results() reads."""
    record(tag)
    return current_task.parent_results()


@q.handler(concurrency=1)
def wf_exclusive(key: str) -> str:
    record("exclusive", "started")
    time.sleep(0.05)
    record("exclusive", "finished")
    return key


@q.handler(key_concurrency=1)
def one_per_key(seconds: float, tag: str) -> None:
    """At most one task per key at once: record start and end, sleep between."""
    record(tag, "started")
    time.sleep(seconds)
    record(tag, "finished")


@q.handler(key_concurrency=100)
def fair(tag: str) -> None:
    record(tag)


@q.handler(key_rate_limit="2/s")
def key_rated(tag: str) -> None:
    record(tag)


# -- middleware (tests/test_middleware.py) ---------------------------------------
# The extension's layers below wrap every handler of this app: they act only on
# tasks named mw_*, whose arguments are (how, tag), and pass the others through.


@q.middleware
def outer_layer(task: Task, call_next: Callable[[], Any]) -> Any:
    if not task.name.startswith("mw_"):
        return call_next()
    how, tag = task.args
    record(tag, "outer-before")
    g.mw_seen = tag  # the handler sees it: one app context for both
    if how == "skip":
        return "skipped"
    if how == "mw-retry" and task.attempts == 1:
        raise Retry(delay=0.1, reason="the middleware says later")
    if how == "mw-raise":
        raise ValueError(f"the middleware refused {tag}")
    value = call_next()
    record(tag, "outer-after")
    return value


@q.middleware
def inner_layer(task: Task, call_next: Callable[[], Any]) -> Any:
    if not task.name.startswith("mw_"):
        return call_next()
    tag = task.args[1]
    record(tag, "inner-before")
    try:
        return call_next()
    finally:
        record(tag, "inner-after")


def handler_layer(task: Task, call_next: Callable[[], Any]) -> Any:
    record(task.args[1], "handler-layer")
    return {"wrapped": call_next()}


@q.handler(max_attempts=2, middleware=[handler_layer])
def mw_task(how: str, tag: str) -> Any:
    record(tag)
    return {"how": how, "seen": g.get("mw_seen"), "pid": os.getpid()}


@q.handler(isolated=True, max_attempts=2, middleware=[handler_layer])
def mw_isolated(how: str, tag: str) -> Any:
    record(tag)
    return {"how": how, "seen": g.get("mw_seen"), "pid": os.getpid()}


def export_spans_to(path: str) -> None:
    """Trace with the OpenTelemetry SDK, each finished span written at once
    to *path* as one JSON line (tests/test_tracing.py reads them)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open while the process lives
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    )
    trace.set_tracer_provider(provider)


def create_app() -> Flask:
    if os.environ.get("PGTQ_TEST_SPANS"):
        export_spans_to(os.environ["PGTQ_TEST_SPANS"])
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = os.environ["PGTQ_TEST_APP_DSN"]
    app.config.update(json.loads(os.environ.get("PGTQ_TEST_APP_SETTINGS", "{}")))
    q.init_app(app)

    @app.teardown_appcontext
    def note_teardown(exc: BaseException | None) -> None:
        tag = g.pop("tag", None)
        if tag is not None:
            record(tag, "teardown")

    return app


# -- async handlers (tests/test_async.py) -------------------------------------


async def arecord(tag: str, event: str = "ran") -> None:
    """:func:`record` off the event loop (it blocks); the thread sees this
    task's app context and current_task (asyncio.to_thread copies them)."""
    await asyncio.to_thread(record, tag, event)


@q.handler()
async def async_sleep(seconds: float, tag: str) -> str:
    """Record a start, sleep on the loop, record the end; checks that its
    app context (g) is its own while others run."""
    g.async_tag = tag
    await arecord(tag, "started")
    current_task.set_progress({"tag": tag})
    await asyncio.sleep(seconds)
    assert g.async_tag == tag, "another task's app context"
    await arecord(tag, "finished")
    return tag


@q.handler(timeout=0.5, max_attempts=2, retry_backoff=0)
async def async_too_slow(tag: str) -> None:
    await arecord(tag, "started")
    await asyncio.sleep(30)


@q.handler()
async def async_stubborn(tag: str) -> None:
    """Ignores cancel requests: stopped after PGTQ_CANCEL_GRACE."""
    await arecord(tag, "started")
    while True:
        await asyncio.sleep(0.02)


@q.handler()
async def async_polite(tag: str) -> None:
    """Stops by itself once asked to."""
    await arecord(tag, "started")
    while not current_task.cancel_requested:
        await asyncio.sleep(0.02)
    await arecord(tag, "saw cancel")
    raise Cancel("stopped when asked")


@q.handler(max_attempts=3)
async def async_retry(tag: str) -> int:
    await arecord(tag)
    if current_task.attempts < 3:
        raise Retry(delay=0, reason=f"attempt {current_task.attempts}")
    return current_task.attempts
