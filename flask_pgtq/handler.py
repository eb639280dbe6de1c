"""Handlers: functions decorated with ``@q.handler()``.

A plain call runs the function now.  :meth:`~flask_pgtq.Handler.push` stores a task for
a worker.  Push options go through :meth:`~flask_pgtq.Handler.options`, so they never mix
with the function's own keyword arguments.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .config import validate_name
from .exceptions import ArgumentsMismatch, ArgumentsNotSerializable, ConfigurationError
from .values import HandlerOptions, PushOptions

if TYPE_CHECKING:
    from .extension import PgTq
    from .task import Task
    from .workflow import Signature

P = ParamSpec("P")
R = TypeVar("R")


class Handler(Generic[P, R]):
    """A function registered as a task handler.

    Do not build one directly: use :meth:`PgTq.handler`.

    :ivar name: the task name stored with each task.
    :ivar func: the decorated function.
    """

    def __init__(
        self, pgtq: PgTq, func: Callable[P, R], *, name: str, options: HandlerOptions
    ) -> None:
        self.pgtq = pgtq
        self.func = func
        self.name = validate_name(name, "task name")
        #: The handler's options, validated.
        self.handler_options = options
        #: Seconds an attempt may run before it is stopped, or ``None``.
        self.timeout = options.timeout
        #: Whether a worker runs each attempt in a child process of its own
        #: (see :mod:`flask_pgtq.isolation`).
        self.isolated = options.isolated
        #: Middleware of this handler only, inside the extension's
        #: (see :mod:`flask_pgtq.middleware`).
        self.middleware = options.middleware
        #: Whether the function is a coroutine function (``async def``): a
        #: worker runs it on its event loop (see :mod:`flask_pgtq.aio`).
        self.is_async = inspect.iscoroutinefunction(func)
        if self.is_async and self.isolated:
            raise ConfigurationError(
                f"handler {self.name!r} is async: isolated=True is for handlers that "
                "hold the GIL in C code, which an async handler must not do (it would "
                "block its worker's event loop); drop isolated=True, or make it a "
                "plain def handler"
            )
        #: Limits across all workers, or ``None``.
        self.limit = options.limit(self.name)
        #: Push options of its tasks unless a push says otherwise.
        self.defaults = options.push_defaults()
        #: Seconds before the first retry (doubled each time), or ``None``
        #: for ``PGTQ_RETRY_BACKOFF``.
        self.retry_backoff = options.retry_backoff
        functools.update_wrapper(self, func)
        #: Argument shapes (positional count, keyword names) known to fit.
        self._accepted: set[tuple[int, frozenset[str]]] = set()

    def __repr__(self) -> str:
        return f"<Handler {self.name!r}>"

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The function's signature, to check a task's arguments before a run."""
        return inspect.signature(self.func)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`~flask_pgtq.ArgumentsMismatch` (a :class:`TypeError`)
        if the function cannot take these arguments.  Whether it can depends
        only on how many positional arguments there are and which keywords,
        so the shapes that passed are remembered (a few dozen at most) and
        checked once."""
        shape = (len(args), frozenset(kwargs))
        if shape in self._accepted:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            plain = self.signature.replace(
                parameters=[
                    p.replace(annotation=inspect.Parameter.empty)
                    for p in self.signature.parameters.values()
                ],
                return_annotation=inspect.Signature.empty,
            )
            raise ArgumentsMismatch(
                f"arguments do not match the signature of handler {self.name!r} {plain}: {exc}"
            ) from None
        if len(self._accepted) < 64:
            self._accepted.add(shape)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function now, in this thread.  No task is stored.  For
        an ``async def`` handler this returns the coroutine, as calling the
        function would: await it."""
        return self.func(*args, **kwargs)

    def push(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Store a task that runs this handler with these arguments; return at once.

        :raises ArgumentsMismatch: the function cannot take these arguments
            (a :class:`TypeError`); nothing is stored.
        :raises ArgumentsNotSerializable: an argument is not JSON (a
            :class:`TypeError`); nothing is stored.
        :raises PayloadTooLarge: the arguments exceed ``PGTQ_MAX_PAYLOAD_BYTES``.
        """
        return self.pgtq.app_queue().push(self.name, args, kwargs, self.defaults)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this call, to make later in a workflow
        (:func:`~flask_pgtq.chain`, :func:`~flask_pgtq.group`,
        :func:`~flask_pgtq.chord`).  In a chain it gets the previous step's
        result as its first positional argument, before *args*."""
        from .workflow import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: like :meth:`s`, but it gets no result from
        the steps before it."""
        from .workflow import Signature

        return Signature(self, args, kwargs, immutable=True)

    def push_many(self, items: Iterable[Any]) -> list[int]:
        """Store many tasks of this handler in one statement; return their ids
        in input order.

        Each item gives one task's arguments: a tuple or list of positional
        arguments, a dict of keyword arguments, or :class:`~flask_pgtq.Args` for both.
        Every item is validated first (JSON, size, and the function's
        signature): one bad item rejects the whole batch and nothing is stored.
        """
        return self.pgtq.app_queue().push_many(self.name, items, self.defaults)

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        unique_key: str | None = None,
        unique_for: float | timedelta | None = None,
        on_conflict: str = "keep",
        debounce: float | timedelta | None = None,
        key: str | None = None,
        connection: Any = None,
        after: Iterable[Task | int] | None = None,
        run_on_failure: bool = False,
        tags: Sequence[str] | None = None,
    ) -> BoundOptions[P]:
        """Push options for one push: ``handler.options(delay=30).push(...)``.

        :param queue: queue to push to, instead of the handler's.
        :param priority: higher runs first; default the handler's (0).
        :param max_attempts: attempts, counting the first.
        :param delay: seconds (or a :class:`~datetime.timedelta`) before it may run.
        :param eta: an aware :class:`~datetime.datetime` before which it does not run.
        :param unique_key: at most one task with this key is queued or
            running at a time: pushing it again returns that task, with
            :attr:`Task.is_new` ``False``.
        :param unique_for: seconds (or a timedelta) the key stays taken after
            the push, even once the task has finished.
        :param on_conflict: with a unique key held by a *queued* task:
            ``"keep"`` (default) returns that task as it is; ``"replace"``
            gives it this push's arguments, run time and priority (and
            returns it, with :attr:`Task.is_new` ``False``).  A *running*
            holder is returned as it is either way.
        :param key: the task's key for its handler's per-key limits
            (``key_concurrency``, ``key_rate_limit``), e.g. ``"account:42"``:
            tasks of one key are limited together, and claims go round-robin
            over keys.
        :param debounce: seconds (or a timedelta): with a ``unique_key``, run
            the task this long after the *last* push of the key (each push
            replaces the queued task and moves its run time).
        :param connection: push inside this open transaction: a psycopg2
            connection, or a SQLAlchemy ``Connection`` or ``Session`` (e.g.
            Flask-SQLAlchemy's ``db.session``).  The task exists only if that
            transaction commits, and workers are woken at the commit.
        :param after: tasks (or task ids) that must end first: the task is
            ``waiting`` until they all have, then queued.  If one fails or is
            cancelled, the task is cancelled (``dependency <id> failed``).
            A parent that does not exist, or that already failed or was
            cancelled, is refused at push (:class:`~flask_pgtq.WorkflowError`,
            nothing stored).  Inside a transaction, the parents are locked
            (shared) until it commits: a parent cannot be recorded as ended
            meanwhile, so keep that transaction short.
        :param run_on_failure: with *after*: run even when a parent failed
            or was cancelled.
        :param tags: labels stored with the task, after the handler's own
            (each once): e.g. ``["tenant:42", "import"]``.  Each a non-empty
            printable string of at most 100 characters, at most 20 per task
            (:class:`~flask_pgtq.ConfigurationError` otherwise).  Shown on
            :attr:`Task.tags`, filtered by ``q.admin.tasks(tag=...)`` and
            ``flask pgtq tasks --tag``.
        """
        given = PushOptions.build(
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            delay=delay,
            eta=eta,
            unique_key=unique_key,
            unique_for=unique_for,
            on_conflict=on_conflict,
            debounce=debounce,
            key=key,
            after=after,
            run_on_failure=run_on_failure,
            tags=tags,
        )
        return BoundOptions(self, given.over(self.defaults), connection)


class BoundOptions(Generic[P]):
    """A handler with push options applied; see :meth:`~flask_pgtq.Handler.options`."""

    def __init__(
        self, handler: Handler[P, Any], options: PushOptions, connection: Any = None
    ) -> None:
        self.handler = handler
        self.push_options = options
        self.connection = connection

    def push(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Like :meth:`~flask_pgtq.Handler.push`, with these options."""
        return self.handler.pgtq.app_queue().push(
            self.handler.name, args, kwargs, self.push_options, self.connection
        )

    def push_many(self, items: Iterable[Any]) -> list[int]:
        """Like :meth:`~flask_pgtq.Handler.push_many`, with these options."""
        return self.handler.pgtq.app_queue().push_many(
            self.handler.name, items, self.push_options, self.connection
        )


class Args:
    """Positional and keyword arguments of one task in a batch push.

    Example: ``send.push_many([Args("a@example.com", lang="fr"), Args("b@x")])``.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"<Args {len(self.args)} positional, {len(self.kwargs)} keyword>"


def split_item(item: Any) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """The (args, kwargs) of one :meth:`~flask_pgtq.Handler.push_many` item."""
    if isinstance(item, Args):
        return item.args, item.kwargs
    if isinstance(item, dict):
        return (), item
    if isinstance(item, (tuple, list)):
        return item, {}
    raise ArgumentsNotSerializable(
        f"a push_many item must be a tuple or list (positional arguments), a dict "
        f"(keyword arguments) or Args(...), not {type(item).__name__}"
    )
