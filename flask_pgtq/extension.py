"""The Flask extension: :class:`~flask_pgtq.PgTq`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload
from weakref import WeakKeyDictionary

from . import signals
from .admin import Admin
from .app_queue import AppQueue
from .config import Config, queue_list, redact_dsn
from .control import Pause, default_actor, duration_of, target_of
from .exceptions import (
    ConfigurationError,
    DuplicateHandler,
    SetupError,
    UnknownTask,
    UsageError,
)
from .handler import Handler
from .middleware import Middleware, check
from .schedules import ScheduleBook
from .task import Task
from .values import HandlerOptions
from .workflow import Workflow

if TYPE_CHECKING:
    from flask import Flask

P = ParamSpec("P")
R = TypeVar("R")


class PgTq:
    """A PostgreSQL task queue for Flask.

    With an app (or later :meth:`init_app`), settings come from the app's
    ``PGTQ_*`` config keys and every operation works on the current app.
    Without Flask, pass a DSN (and any setting by its lower-case name)::

        q = PgTq(dsn="dbname=q user=postgres", queue="test_queue")
        q = PgTq("test_queue", "dbname=q user=postgres")  # the same, as PGTQ wrote it

    :param app: a Flask app to set up now; or, without Flask, the name of
        the default queue (then *dsn* is required).
    :param dsn: a libpq connection string, for standalone use without Flask.
    :param settings: other settings for standalone use, e.g. ``queue="emails"``.
    :raises TypeError: *app* is neither an app, a queue name nor ``None``, or
        a queue name comes without a DSN or twice.
    """

    def __init__(
        self, app: Flask | str | None = None, dsn: str | None = None, **settings: Any
    ) -> None:
        self._handlers: dict[str, Handler[Any, Any]] = {}
        self._schedules = ScheduleBook(self)
        #: Registered with :meth:`middleware`; shared with every app's runner.
        self._middleware: list[Middleware] = []
        self._standalone: AppQueue | None = None
        #: Per-app state, keyed by app (as Flask-SQLAlchemy keeps its engines):
        #: the extension object itself holds no app.
        self._apps: WeakKeyDictionary[Any, AppQueue] = WeakKeyDictionary()
        if isinstance(app, str):
            settings = _queue_first(app, dsn, settings)
            app = None
        elif app is not None and not _is_app(app):
            raise UsageError(
                f"PgTq() takes a Flask app or, without Flask, a queue name and a DSN "
                f"(PgTq('test_queue', 'dbname=q')), not {type(app).__name__} {app!r}"
            )
        if dsn is not None:
            if app is not None:
                raise ConfigurationError("pass either an app or dsn=..., not both")
            config = Config.from_mapping(
                {"PGTQ_DSN": dsn, **{f"PGTQ_{k.upper()}": v for k, v in settings.items()}}
            )
            self._standalone = AppQueue(config, self._handlers, None, self, self._middleware)
        elif settings:
            raise ConfigurationError(
                "settings as keyword arguments are for standalone use with dsn=...; "
                "with Flask, set PGTQ_* keys in app.config"
            )
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        if self._standalone is not None:
            return f"<PgTq standalone {redact_dsn(self._standalone.config.dsn)!r}>"
        return f"<PgTq handlers={len(self._handlers)}>"

    def init_app(self, app: Flask) -> None:
        """Set up *app*: read and validate its ``PGTQ_*`` config, register the
        ``flask pgtq`` commands.  No connection is made here."""
        if self._standalone is not None:
            raise ConfigurationError("a standalone PgTq(dsn=...) cannot be added to an app")
        if "pgtq" in app.extensions:
            raise SetupError(
                "a PgTq extension is already registered on this app; create only one PgTq per app"
            )
        if app.config.get("PGTQ_DEV_DATABASE") is True and not app.config.get("PGTQ_DSN"):
            from .devdb import start_dev_database

            app.config["PGTQ_DSN"] = start_dev_database(app.instance_path).dsn
        config = Config.from_mapping(app.config)
        self._apps[app] = AppQueue(config, self._handlers, app, app, self._middleware)
        if config.dev_worker:
            from .devdb import add_dev_worker

            add_dev_worker(app, self, self._apps[app])
        app.extensions["pgtq"] = self
        from .cli import pgtq_cli

        app.cli.add_command(pgtq_cli)
        if config.dashboard_url_prefix is not None:
            from .dashboard import register_dashboard

            register_dashboard(app, config.dashboard_url_prefix)
        if config.metrics_url is not None:
            from .metrics import register_metrics

            register_metrics(app, self, config.metrics_url)

    # -- the state for the current app ---------------------------------------

    def app_queue(self) -> AppQueue:
        """The current app's queue (or the standalone one): settings, pool,
        queue core and runner, with push, pop and close.  For tools and
        integrations; applications use the methods of this class.

        :raises PgTqError: outside an app context, or on an app this
            extension is not registered on.
        """
        if self._standalone is not None:
            return self._standalone
        from flask import current_app, has_app_context

        if not has_app_context():
            raise SetupError(
                "Working outside of application context: flask_pgtq needs the app to "
                "find its database. Call this in a request or CLI command, or inside "
                "'with app.app_context():'."
            )
        queue = self._apps.get(current_app._get_current_object())  # type: ignore[attr-defined]
        if queue is None:
            raise SetupError("this PgTq is not registered on the current app: call q.init_app(app)")
        return queue

    @property
    def config(self) -> Config:
        """The settings of the current app (or of the standalone queue)."""
        return self.app_queue().config

    @property
    def admin(self) -> Admin:
        """Inspection and operator actions (status, task lists, retry,
        cancel, purge...) for the current app: an :class:`~flask_pgtq.admin.Admin`."""
        queue = self.app_queue()
        return Admin(queue.db, queue.runner)

    # -- handlers -----------------------------------------------------------

    @overload
    def handler(self, func: Callable[P, R], /) -> Handler[P, R]: ...

    @overload
    def handler(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        retry_backoff: float | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
        isolated: bool = False,
        middleware: Sequence[Middleware] = (),
        max_snoozes: int = 100,
        tags: Sequence[str] = (),
    ) -> Callable[[Callable[P, R]], Handler[P, R]]: ...

    def handler(  # type: ignore[misc]  # mypy and ParamSpec in overloads
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task handler.

        :param name: task name stored with each task; default the function's
            ``__name__``.  Must be unique in this extension.
        :param queue: queue its tasks go to; default ``PGTQ_QUEUE``.
        :param max_attempts: attempts, counting the first; default
            ``PGTQ_MAX_ATTEMPTS``.
        :param priority: default priority of its tasks; higher runs first.
        :param retry_backoff: seconds before the first retry (doubled each
            time); default ``PGTQ_RETRY_BACKOFF``.
        :param timeout: seconds an attempt may run; then it is stopped and
            counts as a failed attempt (see "Timeouts" in the README).
        :param concurrency: most tasks of this handler running at once,
            across all workers.
        :param rate_limit: most starts per period across all workers, e.g.
            ``"10/m"`` (``s``, ``m``, ``h``, ``d``; also ``"5/10s"``).
        :param isolated: a worker runs each attempt in a child process forked
            for it, killed (``SIGKILL``) at the timeout or on a cancel
            request: for handlers that hold the GIL in C code, which would
            stall the worker's heartbeat and timeout (see "Isolated
            handlers" in the README).  Costs a fork per attempt.  Plain
            calls, ``PGTQ_EAGER`` and :meth:`~flask_pgtq.Task.run` stay in-process.
        :param middleware: functions ``(task, call_next)`` that wrap each run
            of this handler, inside those of :meth:`middleware` (see
            :mod:`flask_pgtq.middleware`).
        :raises DuplicateHandler: the name is taken.
        :raises TypeError: an option this method does not take.
        """
        validated = HandlerOptions(**options)

        def decorate(fn: Callable[P, R]) -> Handler[P, R]:
            task_name = fn.__name__ if name is None else name
            if task_name in self._handlers:
                raise DuplicateHandler(
                    f"a handler named {task_name!r} is already registered "
                    f"({self._handlers[task_name].func!r}); pass name=... to tell them apart"
                )
            h: Handler[P, R] = Handler(self, fn, name=task_name, options=validated)
            self._handlers[task_name] = h
            return h

        if func is not None:
            return decorate(func)
        return decorate

    def middleware(self, func: Middleware, /) -> Middleware:
        """Register *func* to wrap every run of every handler of this
        extension: in workers, isolated children, :meth:`~flask_pgtq.Task.run`,
        :meth:`drain` and ``PGTQ_EAGER``::

            @q.middleware
            def timing(task, call_next):
                started = time.perf_counter()
                try:
                    return call_next()
                finally:
                    log.info("%s took %.3fs", task.name, time.perf_counter() - started)

        Runs in the task's app context, around the handler's call only.
        What it returns is the attempt's result (return without calling
        ``call_next`` to skip the handler); what it raises ends the attempt
        as if the handler raised it (:class:`~flask_pgtq.Retry`,
        :class:`~flask_pgtq.Cancel`, or a failure).  Middleware registered
        first is outermost; a handler's own (``middleware=[...]``) is inside
        them all.  See :mod:`flask_pgtq.middleware`.

        :return: *func*, unchanged.
        :raises ConfigurationError: *func* cannot be called.
        """
        self._middleware.append(check(func, "@q.middleware"))
        return func

    def periodic(
        self,
        cron: str,
        *,
        tz: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **handler_options: Any,
    ) -> Callable[[Callable[P, R]], Handler[P, R]]:
        """Register a handler and run it on a cron schedule::

            @q.periodic("*/5 * * * *", tz="Europe/Paris")
            def tidy_up():
                ...

        Every worker serving the handler's queue schedules it; each fire time
        produces exactly one task.  Needs the ``cron`` extra (croniter).

        :param cron: five fields (minute hour day month weekday), or six
            with seconds last, as croniter reads them.
        :param tz: IANA time zone the schedule is read in (DST included).
        :param args: positional arguments of each task (JSON).
        :param kwargs: keyword arguments of each task (JSON).
        :param handler_options: anything :meth:`handler` takes.
        """
        from .periodic import Schedule

        def decorate(fn: Callable[P, R]) -> Handler[P, R]:
            h: Handler[P, R] = self.handler(name=name, **handler_options)(fn)
            self._schedules.register(Schedule.build(h, cron, tz, args, kwargs or {}))
            return h

        return decorate

    @property
    def schedules(self) -> ScheduleBook:
        """The schedules: code ones (``@q.periodic``) by key, as a read-only
        mapping, and stored ones, edited at run time with
        ``q.schedules.add(name, cron, handler_name, args, kwargs, tz)``,
        ``update``, ``disable``, ``enable``, ``remove``, ``run_now`` and
        ``list`` (see :class:`~flask_pgtq.schedules.ScheduleBook`)."""
        return self._schedules

    @property
    def handlers(self) -> Mapping[str, Handler[Any, Any]]:
        """Registered handlers by task name (read-only view)."""
        return dict(self._handlers)

    # -- producing ----------------------------------------------------------

    def push(self, name: str, /, *args: Any, **kwargs: Any) -> Task:
        """Push a task by name: the producer need not import the handler.

        A name with no handler registered here is an :class:`UnknownTask`
        error; register it (or use a producer that imports it).
        """
        return self.app_queue().push(name, args, kwargs, self._handler_named(name).defaults)

    def push_many(self, name: str, items: Iterable[Any], /) -> list[int]:
        """Batch push by name; see :meth:`~flask_pgtq.Handler.push_many`."""
        return self._handler_named(name).push_many(items)

    def _handler_named(self, name: str) -> Handler[Any, Any]:
        handler = self._handlers.get(name)
        if handler is None:
            raise UnknownTask(
                f"no handler is registered for task name {name!r}; known: "
                f"{', '.join(sorted(self._handlers)) or 'none'}"
            )
        return handler

    # -- consuming ----------------------------------------------------------

    def pop(self, queues: str | Iterable[str] | None = None) -> Task | None:
        """Claim the next ready task (highest priority, then oldest) or return ``None``.

        The claim is leased to this process for ``PGTQ_LEASE`` seconds: call
        :meth:`~flask_pgtq.Task.run` on it (which keeps the lease while it runs) before
        then, or a worker rescues it.

        :param queues: a queue name or several; default ``PGTQ_QUEUE``.
        """
        return self.app_queue().pop(queues)

    def drain(
        self,
        queues: str | Iterable[str] | None = None,
        max_tasks: int = 10_000,
        *,
        now: bool = False,
    ) -> list[Task]:
        """Run every ready task now, in this thread, through the real SQL path
        (claim, run, record), until none is ready; return the tasks run.

        Meant for tests: tasks pushed by tasks run too; tasks scheduled for
        later (retries, delayed pushes) do not, unless *now*.

        :param queues: queues to drain; default ``PGTQ_QUEUE``.
        :param max_tasks: stop after this many (a guard against tasks that
            push themselves for ever).
        :param now: before each claim, make every queued task of *queues*
            due now, whatever it waits for: a retry's backoff,
            ``Retry(delay=...)``, a push's ``delay`` or ``eta``.  A retrying
            handler is then run until it succeeds or its attempts are
            spent, with no sleep, whatever its ``retry_backoff``.
        """
        app_queue = self.app_queue()
        names = queue_list(queues, app_queue.config.queue)
        ran: list[Task] = []
        while len(ran) < max_tasks:
            if now:
                app_queue.store.make_scheduled_due(names)
            task = self.pop(names)
            if task is None:
                break
            ran.append(task.run())
        return ran

    def cancel(self, task_id: int, reason: str = "cancelled") -> Task:
        """Cancel a task.

        A queued task is ``cancelled`` at once.  A running task is asked to
        stop: its handler can see ``current_task.cancel_requested``; the
        worker stops it after ``PGTQ_CANCEL_GRACE`` seconds if it has not
        stopped by itself, and the task ends ``cancelled``.  A finished task
        is left as it is.

        :return: the task as it is now.
        :raises TaskNotFound: no such task.
        """
        return self.app_queue().store.cancel(task_id, reason)

    def get_task(self, task_id: int) -> Task:
        """A fresh copy of the task from the database.

        :raises TaskNotFound: no such task.
        """
        return self.app_queue().store.get(task_id)

    # -- run-time control ------------------------------------------------------

    def pause(
        self,
        queue: str | None = None,
        *,
        handler: str | None = None,
        until: datetime | timedelta | float | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> Pause:
        """Pause a queue (``q.pause("emails")``) or a handler
        (``q.pause(handler="send_email")``): no worker claims its tasks from
        the moment the pause commits.  Running tasks finish; pushes are still
        accepted and wait.  Pausing again replaces the pause.

        :param until: when the pause ends by itself: an aware datetime, a
            timedelta or seconds from now; ``None``: until :meth:`resume`.
        :param reason: shown by ``flask pgtq status`` and the dashboard.
        :param by: who paused (default ``user@host`` of this process).
        :raises ConfigurationError: neither or both of queue and handler,
            or a bad name or time.
        """
        kind, target = target_of(queue, handler)
        app_queue = self.app_queue()
        duration = duration_of(until, app_queue.store.database_now())
        pause = app_queue.control.pause(
            kind, target, duration=duration, reason=reason, by=by or default_actor()
        )
        signals.send(
            signals.paused,
            app_queue.runner.sender,
            kind=kind,
            target=target,
            until=pause.until,
            reason=reason,
            paused_by=pause.paused_by,
        )
        return pause

    def resume(self, queue: str | None = None, *, handler: str | None = None) -> bool:
        """End the pause of a queue or a handler; listening workers claim at
        once.  Returns ``False`` if it was not paused."""
        kind, target = target_of(queue, handler)
        app_queue = self.app_queue()
        done = app_queue.control.resume(kind, target)
        if done:
            signals.send(
                signals.resumed, app_queue.runner.sender, kind=kind, target=target, ended="resumed"
            )
        return done

    def pauses(self) -> list[Pause]:
        """The pauses in force, queues first."""
        return self.app_queue().control.pauses()

    def get_workflow(self, workflow_id: int) -> Workflow:
        """A pushed chain, group or chord with its tasks, fresh from the database.

        :raises TaskNotFound: no such workflow.
        """
        return self.app_queue().get_workflow(workflow_id)

    def close(self) -> None:
        """Close the connection pools of every app this extension serves
        (and of the standalone queue).  Idempotent: connections in use are
        closed when given back, and a later call opens new ones.  Call it
        before dropping or cloning a database the queue used (tests), or
        when shutting down."""
        queues = list(self._apps.values())
        if self._standalone is not None:
            queues.append(self._standalone)
        for queue in queues:
            queue.close()

    # -- schema -------------------------------------------------------------

    def init_db(self) -> list[int]:
        """Create or upgrade the tables (what ``flask pgtq init-db`` runs).

        :return: the migration versions applied (empty when up to date).
        """
        from . import schema

        with self.app_queue().db.connection() as conn:
            return schema.upgrade(conn)


def _is_app(obj: Any) -> bool:
    """Whether *obj* looks like a Flask app (without importing Flask)."""
    return all(hasattr(obj, name) for name in ("config", "extensions", "cli"))


def _queue_first(queue: str, dsn: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """*settings* with the queue name of ``PgTq("test_queue", dsn)``, PGTQ's
    order; a name without a DSN or a queue named twice is a TypeError."""
    if dsn is None:
        raise UsageError(
            f"PgTq({queue!r}) needs a DSN after the queue name, e.g. "
            f"PgTq({queue!r}, 'dbname=q user=postgres'); with Flask, pass the app instead"
        )
    if _looks_like_dsn(queue) and not _looks_like_dsn(dsn):
        # No values in the message: the DSN may hold a password.
        raise UsageError("PgTq(queue, dsn): the queue name comes first, then the DSN")
    if "queue" in settings:
        raise UsageError(
            f"PgTq() got the queue twice: {queue!r} as the first argument and "
            f"queue={settings['queue']!r}"
        )
    return {**settings, "queue": queue}


def _looks_like_dsn(text: Any) -> bool:
    return isinstance(text, str) and ("=" in text or "://" in text)
