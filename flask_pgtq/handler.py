"""Handlers: functions decorated with ``@q.handler()``.

A plain call runs the function now.  :meth:`Handler.push` stores a task for
a worker.  Push options go through :meth:`Handler.options`, so they never mix
with the function's own keyword arguments.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .config import validate_name
from .exceptions import ArgumentsNotSerializable, ConfigurationError, PayloadTooLarge

if TYPE_CHECKING:
    from .extension import PgTq
    from .task import Task

P = ParamSpec("P")
R = TypeVar("R")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be an integer >= 1, not {value!r}")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{what} must be an integer, not {value!r}")
    if not -(2**31) <= value < 2**31:
        raise ConfigurationError(f"{what} must fit in 32 bits, not {value!r}")
    return value


@dataclass(frozen=True)
class PushOptions:
    """How a task is pushed.  ``None`` means: the handler's (or app's) default."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    delay: float = 0.0
    eta: datetime | None = None

    @classmethod
    def build(
        cls,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
    ) -> PushOptions:
        """Validate options given by a caller."""
        if queue is not None:
            validate_name(queue, "queue")
        if priority is not None:
            _int(priority, "priority")
        if max_attempts is not None:
            _positive_int(max_attempts, "max_attempts")
        seconds = 0.0
        if delay is not None:
            if isinstance(delay, timedelta):
                seconds = delay.total_seconds()
            elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
                seconds = float(delay)
            else:
                raise ConfigurationError(f"delay must be seconds or a timedelta, not {delay!r}")
            if not math.isfinite(seconds) or seconds < 0:
                raise ConfigurationError(f"delay must be a finite number >= 0, not {delay!r}")
        if eta is not None:
            if not isinstance(eta, datetime):
                raise ConfigurationError(f"eta must be a datetime, not {eta!r}")
            if eta.tzinfo is None or eta.utcoffset() is None:
                raise ConfigurationError(
                    "eta must be an aware datetime (with tzinfo), e.g. "
                    "datetime.now(timezone.utc) + timedelta(minutes=5)"
                )
            if delay is not None:
                raise ConfigurationError("give delay or eta, not both")
        return cls(queue, priority, max_attempts, seconds, eta)


def encode_arguments(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], max_bytes: int
) -> tuple[str, str]:
    """Encode a task's arguments as JSON text, or raise naming the bad one.

    NaN and infinities are refused (they are not JSON).  The combined size is
    checked against *max_bytes* before anything is stored.
    """
    try:
        args_json = json.dumps(list(args), allow_nan=False, separators=(",", ":"))
        kwargs_json = json.dumps(dict(kwargs), allow_nan=False, separators=(",", ":"))
        _check_keys(args)
        _check_keys(kwargs)
    except (TypeError, ValueError) as exc:
        raise ArgumentsNotSerializable(_which_argument(name, args, kwargs, exc)) from exc
    size = len(args_json.encode()) + len(kwargs_json.encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"arguments of task {name!r} are {size} bytes of JSON, more than "
            f"PGTQ_MAX_PAYLOAD_BYTES ({max_bytes}). Store large data elsewhere "
            "and pass a reference."
        )
    return args_json, kwargs_json


def _check_keys(value: Any) -> None:
    """Refuse dict keys that JSON would silently turn into strings
    (``{1: "a"}`` would come back as ``{"1": "a"}``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be strings, not {type(key).__name__} {key!r}")
            _check_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_keys(item)


def _which_argument(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> str:
    labelled = [(f"argument {i}", v) for i, v in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        if not isinstance(label, str):
            continue
        try:
            json.dumps(value, allow_nan=False)
            _check_keys(value)
        except (TypeError, ValueError) as inner:
            return (
                f"{label} of task {name!r} is not JSON-serialisable "
                f"({type(value).__name__}): {inner}. Pass only JSON types "
                "(str, int, float, bool, None, list, dict with str keys)."
            )
    for key in kwargs:
        if not isinstance(key, str):
            return f"keyword argument names of task {name!r} must be strings, not {key!r}"
    return f"arguments of task {name!r} are not JSON-serialisable: {exc}"


class Handler(Generic[P, R]):
    """A function registered as a task handler.

    Do not build one directly: use :meth:`PgTq.handler`.

    :ivar name: the task name stored with each task.
    :ivar func: the decorated function.
    """

    def __init__(
        self,
        pgtq: PgTq,
        func: Callable[P, R],
        *,
        name: str,
        queue: str | None,
        priority: int,
        max_attempts: int | None,
        retry_backoff: float | None,
    ) -> None:
        self.pgtq = pgtq
        self.func = func
        self.name = validate_name(name, "task name")
        self.defaults = PushOptions.build(
            queue=queue, priority=priority, max_attempts=max_attempts
        )
        if retry_backoff is not None and (
            isinstance(retry_backoff, bool)
            or not isinstance(retry_backoff, (int, float))
            or retry_backoff < 0
        ):
            raise ConfigurationError(f"retry_backoff must be seconds >= 0, not {retry_backoff!r}")
        self.retry_backoff = retry_backoff
        functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        return f"<Handler {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function now, in this thread.  No task is stored."""
        return self.func(*args, **kwargs)

    def push(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Store a task that runs this handler with these arguments; return at once.

        :raises ArgumentsNotSerializable: an argument is not JSON (a
            :class:`TypeError`); nothing is stored.
        :raises PayloadTooLarge: the arguments exceed ``PGTQ_MAX_PAYLOAD_BYTES``.
        """
        return self.pgtq._push(self.name, args, kwargs, self.defaults)

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
    ) -> BoundOptions[P]:
        """Push options for one push: ``handler.options(delay=30).push(...)``.

        :param queue: queue to push to, instead of the handler's.
        :param priority: higher runs first; default the handler's (0).
        :param max_attempts: attempts, counting the first.
        :param delay: seconds (or a :class:`~datetime.timedelta`) before it may run.
        :param eta: an aware :class:`~datetime.datetime` before which it does not run.
        """
        given = PushOptions.build(
            queue=queue, priority=priority, max_attempts=max_attempts, delay=delay, eta=eta
        )
        merged = replace(
            given,
            queue=given.queue or self.defaults.queue,
            priority=self.defaults.priority if given.priority is None else given.priority,
            max_attempts=given.max_attempts or self.defaults.max_attempts,
        )
        return BoundOptions(self, merged)


class BoundOptions(Generic[P]):
    """A handler with push options applied; see :meth:`Handler.options`."""

    def __init__(self, handler: Handler[P, Any], options: PushOptions) -> None:
        self.handler = handler
        self.push_options = options

    def push(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Like :meth:`Handler.push`, with these options."""
        return self.handler.pgtq._push(self.handler.name, args, kwargs, self.push_options)
