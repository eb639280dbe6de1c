"""Middleware: functions that wrap every run of a handler.

A middleware takes the task and a function that runs the rest of the chain
(the next middleware, and in the end the handler)::

    @q.middleware
    def timing(task, call_next):
        started = time.perf_counter()
        try:
            return call_next()
        finally:
            statsd.timing(f"task.{task.name}", time.perf_counter() - started)

What it returns is the attempt's result; what it raises ends the attempt as
if the handler had raised it (:class:`~flask_pgtq.Retry`,
:class:`~flask_pgtq.Cancel`, or any other exception: a failed attempt).  So
a middleware may time the run, retry it, skip it (return a value without
calling ``call_next``) or wrap it (in a database transaction, say).

Middleware runs wherever a handler runs for a task: in a worker's handler
thread, in the child process of an ``isolated=True`` handler, in
:meth:`~flask_pgtq.Task.run` and :meth:`~flask_pgtq.PgTq.drain`, and at the
push with ``PGTQ_EAGER``; not on a plain call of the handler.  It runs
inside the task's app context, after the ``task_started`` signal, around
the handler's call only: the outcome is recorded (and announced by the
signals) after the chain returns.

Layers, outermost first: flask_pgtq's tracing (only when OpenTelemetry is
set up: see :mod:`flask_pgtq.tracing`), then the extension's
(``@q.middleware``, in registration order), then the handler's
(``@q.handler(middleware=[...])``, in list order).

Like the rest of the core this module does not import Flask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import tracing
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .task import Task

#: A middleware: ``middleware(task, call_next) -> result``.
Middleware = Callable[["Task", Callable[[], Any]], Any]


def checked(functions: Any, what: str) -> tuple[Middleware, ...]:
    """*functions* (a list or tuple of middleware) as a tuple, each checked
    to be callable.

    :raises ConfigurationError: not a list or tuple, or an item that cannot
        be called.
    """
    if not isinstance(functions, (list, tuple)):
        raise ConfigurationError(
            f"{what} must be a list of functions (task, call_next), not {functions!r}"
        )
    for function in functions:
        check(function, what)
    return tuple(functions)


def check(function: Any, what: str) -> Middleware:
    """*function*, if it can be a middleware.

    :raises ConfigurationError: it cannot be called.
    """
    if not callable(function):
        raise ConfigurationError(
            f"{what}: a middleware is a function (task, call_next), not {function!r}"
        )
    return function  # type: ignore[no-any-return]


def run_through(
    task: Task,
    call: Callable[[], Any],
    app_layers: Sequence[Middleware],
    handler_layers: Sequence[Middleware],
) -> Any:
    """Call *call* (the handler with the task's arguments) through every
    layer: tracing, *app_layers*, then *handler_layers*.  With none, *call*
    is called directly."""
    traced = tracing.run_layer()
    if traced is None:
        if not app_layers and not handler_layers:
            return call()
        layers = [*app_layers, *handler_layers]
    else:
        layers = [traced, *app_layers, *handler_layers]
    return _call_from(layers, 0, task, call)


def _call_from(
    layers: Sequence[Middleware], index: int, task: Task, call: Callable[[], Any]
) -> Any:
    if index == len(layers):
        return call()
    return layers[index](task, lambda: _call_from(layers, index + 1, task, call))
