"""OpenTelemetry: a push records ``pgtq.push`` and stores its trace context
with the task; each run is a ``pgtq.run`` span, child of the push's.

This process traces with the SDK's in-memory exporter; a real worker
process traces with the SDK too, writing its spans as JSON lines to a file
(``PGTQ_TEST_SPANS``, read by ``tests/worker_app.py``'s ``create_app``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from flask_pgtq import PgTq, State, tracing
from tests import worker_app
from tests.helpers import poll_until, sql_one


def set_global_provider(provider: TracerProvider | None) -> None:
    """Set (or unset) OpenTelemetry's global tracer provider, which the API
    lets a process set only once: tests take it back afterwards."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """This process traces, into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_global_provider(provider)
    yield exporter
    set_global_provider(None)
    provider.shutdown()


@pytest.fixture
def app(served_app: Flask) -> Flask:
    """The app the workers serve (conftest's ``served_app``)."""
    return served_app


def hex_id(value: int, digits: int = 16) -> str:
    """An id as the SDK writes it in JSON."""
    return f"0x{value:0{digits}x}"


def named(spans: Any, name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def meta_of(dsn: str, task_id: int) -> Any:
    row = sql_one(dsn, "SELECT meta FROM pgtq_tasks WHERE id = %s", (task_id,))
    assert row is not None
    return row[0]


# -- not tracing ----------------------------------------------------------------------


def test_without_the_package_tracing_is_off() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # the otel extra is not installed\n"
        "from flask_pgtq import tracing\n"
        "assert not tracing.active() and tracing.run_layer() is None\n"
        "assert tracing.push(lambda meta: meta, 'add', 'default') is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_a_tracer_provider_nothing_is_traced_or_stored(app: Flask, dsn: str) -> None:
    assert not tracing.active()
    task = worker_app.add.push(1, 2)
    assert task.meta is None
    assert meta_of(dsn, task.id) is None
    (ran,) = worker_app.q.drain()
    assert ran.result == 3


# -- in this process ------------------------------------------------------------------


def test_a_push_stores_the_context_of_its_span_and_the_run_is_its_child(
    app: Flask, dsn: str, exporter: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        task = worker_app.add.push(1, 2)
    (push,) = named(exporter.get_finished_spans(), "pgtq.push")
    assert push.parent is not None and push.parent.span_id == request.get_span_context().span_id
    assert push.kind is SpanKind.PRODUCER
    assert push.attributes is not None
    assert push.attributes["pgtq.task.id"] == task.id
    assert push.attributes["pgtq.queue"] == "default"
    # W3C traceparent: version-trace id-span id-flags.
    context = push.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert meta_of(dsn, task.id) == {"trace": {"traceparent": traceparent}}
    assert task.args == [1, 2] and task.kwargs == {}  # arguments untouched

    worker_app.q.drain()
    (run,) = named(exporter.get_finished_spans(), "pgtq.run")
    assert run.parent is not None and run.parent.span_id == context.span_id
    assert run.context is not None and run.context.trace_id == context.trace_id
    assert run.kind is SpanKind.CONSUMER
    assert (
        dict(run.attributes or {}).items()
        >= {
            "pgtq.task.id": task.id,
            "pgtq.task.name": "add",
            "pgtq.queue": "default",
            "pgtq.task.attempt": 1,
            "pgtq.task.outcome": "succeeded",
        }.items()
    )


def test_a_failed_attempt_records_its_exception(
    app: Flask, dsn: str, runs_table: str, exporter: InMemorySpanExporter
) -> None:
    worker_app.flaky.push(5, "failing")  # max_attempts=4: fails for good at the 4th
    for _ in range(4):
        sql_one(dsn, "UPDATE pgtq_tasks SET run_at = now() WHERE state = 'queued'")
        worker_app.q.drain()
    runs = named(exporter.get_finished_spans(), "pgtq.run")
    assert [span.attributes["pgtq.task.outcome"] for span in runs] == [  # type: ignore[index]
        "retrying",
        "retrying",
        "retrying",
        "failed",
    ]
    (push,) = named(exporter.get_finished_spans(), "pgtq.push")
    # Every attempt is a child of the push, and links to the attempt before.
    assert {span.parent.span_id for span in runs} == {push.context.span_id}  # type: ignore[union-attr]
    assert not runs[0].links
    for before, after in zip(runs, runs[1:], strict=False):
        (link,) = after.links
        assert link.context.span_id == before.context.span_id  # type: ignore[union-attr]
    for span in runs:
        assert span.status.status_code is StatusCode.ERROR
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.message"].startswith("failing attempt")


def test_eager_runs_are_children_of_their_push(dsn: str, exporter: InMemorySpanExporter) -> None:
    app = Flask(__name__)
    app.config.update(PGTQ_DSN=dsn, PGTQ_EAGER=True)
    q = PgTq(app)

    @q.handler()
    def echo(x: int) -> int:
        return x

    with app.app_context():
        assert echo.push(5).result == 5
    (push,) = named(exporter.get_finished_spans(), "pgtq.push")
    (run,) = named(exporter.get_finished_spans(), "pgtq.run")
    assert run.parent is not None and run.parent.span_id == push.context.span_id  # type: ignore[union-attr]


def test_a_batch_push_is_one_span_whose_context_every_task_stores(
    app: Flask, dsn: str, exporter: InMemorySpanExporter
) -> None:
    ids = worker_app.add.push_many([(1, 2), (3, 4)])
    (push,) = named(exporter.get_finished_spans(), "pgtq.push")
    assert push.attributes is not None
    assert push.attributes["messaging.batch.message_count"] == 2
    assert meta_of(dsn, ids[0]) == meta_of(dsn, ids[1])
    assert meta_of(dsn, ids[0])["trace"]["traceparent"].split("-")[2] == (
        f"{push.context.span_id:016x}"  # type: ignore[union-attr]
    )


# -- across a real worker process -----------------------------------------------------


def test_a_worker_traces_each_attempt_as_a_child_of_the_push(
    app: Flask,
    dsn: str,
    exporter: InMemorySpanExporter,
    start_worker: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("PGTQ_TEST_SPANS", str(spans_file))
    start_worker()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"):
        flaky = worker_app.flaky.push(1, "traced")  # fails once, then succeeds
        isolated = worker_app.isolated.push("result", "traced-child")
    pushes = {
        span.attributes["pgtq.task.id"]: span  # type: ignore[index]
        for span in named(exporter.get_finished_spans(), "pgtq.push")
    }

    def worker_spans() -> list[dict[str, Any]]:
        if not spans_file.exists():
            return []
        lines = spans_file.read_text().splitlines()
        spans = [json.loads(line) for line in lines]
        return [span for span in spans if span["name"] == "pgtq.run"]

    spans = poll_until(lambda: len(worker_spans()) >= 3 and worker_spans(), 20, 0.05)
    by_task: dict[int, list[dict[str, Any]]] = {}
    for span in spans:
        by_task.setdefault(span["attributes"]["pgtq.task.id"], []).append(span)

    first, second = sorted(by_task[flaky.id], key=lambda s: s["attributes"]["pgtq.task.attempt"])
    push = pushes[flaky.id].get_span_context()
    for span in (first, second):
        assert span["context"]["trace_id"] == hex_id(push.trace_id, 32)
        assert span["parent_id"] == hex_id(push.span_id)
        assert span["kind"] == "SpanKind.CONSUMER"
        assert span["attributes"]["pgtq.task.name"] == "flaky"
        assert span["attributes"]["pgtq.queue"] == "default"
    assert first["attributes"]["pgtq.task.outcome"] == "retrying"
    assert first["status"]["status_code"] == "ERROR"
    assert [e["attributes"]["exception.type"] for e in first["events"]] == ["RuntimeError"]
    assert second["attributes"]["pgtq.task.outcome"] == "succeeded"
    assert second["events"] == []
    # The retry links to the attempt before it.
    assert not first["links"]
    (link,) = second["links"]
    assert link["context"]["span_id"] == first["context"]["span_id"]
    assert link["context"]["trace_id"] == first["context"]["trace_id"]

    # The isolated handler's child process exported its span before it ended.
    (child,) = by_task[isolated.id]
    assert child["parent_id"] == hex_id(pushes[isolated.id].get_span_context().span_id)
    assert child["attributes"]["pgtq.task.outcome"] == "succeeded"
    assert worker_app.q.get_task(isolated.id).state is State.SUCCEEDED
