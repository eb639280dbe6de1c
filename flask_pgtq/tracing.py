"""OpenTelemetry tracing (``pip install "flask_pgtq[otel]"``).

Active only when ``opentelemetry-api`` is importable **and** the app has set
a tracer provider (the SDK's, or a distro's); otherwise every hook here
returns at once and nothing is recorded or stored.

* A push records a ``pgtq.push`` span (kind ``PRODUCER``; a child of the
  active span, e.g. the request's) and stores its W3C trace context
  (``traceparent``, ``tracestate``) with the task, in the task's
  :attr:`~flask_pgtq.Task.meta` under ``"trace"``.  Arguments are never
  touched.
* Each run of a handler is wrapped in a ``pgtq.run`` span (kind
  ``CONSUMER``): a child of the push's span (every attempt of a task is),
  with the task's id, name, queue, attempt and outcome as attributes, and
  the exception recorded when the attempt raised.  It is the outermost
  :mod:`middleware <flask_pgtq.middleware>` layer, so spans of the
  middleware and of the handler (database calls, HTTP requests, tasks it
  pushes) are its children.

Like the rest of the core this module does not import Flask.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import Cancel, Retry, TaskCancelled

if TYPE_CHECKING:
    from .task import Task

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]

T = TypeVar("T")

#: The span names.
PUSH_SPAN = "pgtq.push"
RUN_SPAN = "pgtq.run"
#: The key of :attr:`Task.meta <flask_pgtq.Task.meta>` that holds the
#: context of the task's last ``pgtq.run`` span (retries link to it).
LAST_RUN_KEY = "last_run"
#: The key of :attr:`Task.meta <flask_pgtq.Task.meta>` that holds the trace context.
META_KEY = "trace"

_propagator = None if trace is None else TraceContextTextMapPropagator()
#: (provider, tracer, run layer) of the provider last seen.
_cache: tuple[Any, Any, Any] | None = None
_UNKNOWN = object()
#: Whether the API would load a provider named by the environment itself.
_PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _tracer() -> Any:
    """The tracer of the global tracer provider, or ``None`` when there is
    no provider to trace to (the extra is missing, or no provider is set)."""
    global _cache
    if trace is None:
        return None
    # Called for every push and every run.  trace.get_tracer_provider()
    # looks the environment up on each call while no provider is set (over
    # a microsecond): the API's own global says it first, when it has it.
    provider: Any = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _PROVIDER_FROM_ENVIRONMENT:
        return None
    if provider is None or provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    cache = _cache
    if cache is not None and cache[0] is provider:
        return cache[1]
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    from . import __version__

    tracer = provider.get_tracer("flask_pgtq", __version__)
    _cache = (provider, tracer, _RunLayer(tracer))
    return tracer


def active() -> bool:
    """Whether spans are recorded now."""
    return _tracer() is not None


# -- the producer side -----------------------------------------------------------


def push(do: Callable[[str | None], T], name: str, queue: str, count: int = 1) -> T:
    """Call ``do(meta)`` (the insert of *count* tasks of handler *name* into
    *queue*, given the JSON text of their :attr:`~flask_pgtq.Task.meta` or
    ``None``) in a ``pgtq.push`` span; return what it returns."""
    tracer = _tracer()
    if tracer is None:
        return do(None)
    attributes: dict[str, Any] = {
        "messaging.system": "flask_pgtq",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "pgtq.task.name": name,
        "pgtq.queue": queue,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    with tracer.start_as_current_span(
        PUSH_SPAN, kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        assert _propagator is not None
        _propagator.inject(carrier)
        result = do(json.dumps({META_KEY: carrier}))
        task_id = getattr(result, "id", None)
        if task_id:
            span.set_attribute("pgtq.task.id", task_id)
        return result


# -- the consumer side -----------------------------------------------------------


def run_layer() -> Callable[[Task, Callable[[], Any]], Any] | None:
    """The middleware that traces a run, or ``None`` when not tracing."""
    if _tracer() is None:
        return None
    assert _cache is not None
    layer: Callable[[Task, Callable[[], Any]], Any] = _cache[2]
    return layer


class _RunLayer:
    """The ``pgtq.run`` span around a handler's run."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    def __call__(self, task: Task, call_next: Callable[[], Any]) -> Any:
        assert _propagator is not None
        meta = task.meta or {}
        parent = None
        carrier = meta.get(META_KEY)
        if isinstance(carrier, dict):
            parent = _propagator.extract(carrier)
        # A retry links to the attempt before it (its span is stored with
        # the task when an attempt ends: see below).
        links = []
        previous = meta.get(LAST_RUN_KEY)
        if isinstance(previous, dict):
            context = trace.get_current_span(_propagator.extract(previous)).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context, {"pgtq.link": "previous attempt"}))
        with self.tracer.start_as_current_span(
            RUN_SPAN,
            context=parent,
            links=links,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "flask_pgtq",
                "messaging.operation.type": "process",
                "messaging.destination.name": task.queue,
                "messaging.message.id": str(task.id),
                "pgtq.task.id": task.id,
                "pgtq.task.name": task.name,
                "pgtq.queue": task.queue,
                "pgtq.task.attempt": task.attempts,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            # Stored with the outcome (Outcome.meta), for the next attempt's link.
            last: dict[str, str] = {}
            _propagator.inject(last, context=trace.set_span_in_context(span))
            task.meta = {**meta, LAST_RUN_KEY: last}
            task.meta_changed = True
            try:
                value = call_next()
            except BaseException as exc:
                outcome = _outcome_of(task, exc)
                span.set_attribute("pgtq.task.outcome", outcome)
                span.record_exception(exc)
                if not isinstance(exc, (Retry, Cancel, TaskCancelled)):
                    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{exc!r}"[:500]))
                raise
            span.set_attribute("pgtq.task.outcome", "succeeded")
            return value


def _outcome_of(task: Task, exc: BaseException) -> str:
    """What an attempt that raised *exc* comes to (as the runner decides)."""
    if isinstance(exc, (Cancel, TaskCancelled)):
        return "cancelled"
    return "failed" if task.attempts >= task.max_attempts else "retrying"


def flush_child_spans() -> None:
    """Export finished spans at once: called in the child process of an
    isolated handler before it ends with ``os._exit``, which would lose
    spans a batch processor still holds.  Does nothing when not tracing."""
    if _tracer() is None:
        return
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush()
