"""The Flask extension: :class:`PgTq`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload
from weakref import WeakKeyDictionary

from . import codec, signals
from .admin import Admin
from .codec import encode_arguments
from .config import Config, redact_dsn, validate_name
from .connection import Database, dbapi_connection
from .exceptions import ConfigurationError, DuplicateHandler, UnknownTask
from .handler import Handler, PushOptions, split_item
from .queue import TaskStore, new_owner_id
from .runner import Runner
from .task import State, Task

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Bound:
    """What one app (or one standalone queue) uses: settings, pool, core, runner."""

    config: Config
    db: Database
    store: TaskStore
    runner: Runner
    extension: PgTq
    #: Lease owner for tasks this process claims with pop().
    pop_owner: str | None = None

    @classmethod
    def build(cls, extension: PgTq, config: Config, app: Any) -> Bound:
        db = Database(config.dsn, max_connections=config.pool_size)
        store = TaskStore(config, db)
        runner = Runner(config, store, extension._handlers, app, app or extension)
        store.backend = runner
        return cls(config, db, store, runner, extension)


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

    def __init__(self, app: Any = None, dsn: str | None = None, **settings: Any) -> None:
        self._handlers: dict[str, Handler[Any, Any]] = {}
        self._schedules: dict[str, Any] = {}
        self._standalone: Bound | None = None
        #: Per-app state, keyed by app (as Flask-SQLAlchemy keeps its engines):
        #: the extension object itself holds no app.
        self._apps: WeakKeyDictionary[Any, Bound] = WeakKeyDictionary()
        if isinstance(app, str):
            settings = _queue_first(app, dsn, settings)
            app = None
        elif app is not None and not _is_app(app):
            raise TypeError(
                f"PgTq() takes a Flask app or, without Flask, a queue name and a DSN "
                f"(PgTq('test_queue', 'dbname=q')), not {type(app).__name__} {app!r}"
            )
        if dsn is not None:
            if app is not None:
                raise ConfigurationError("pass either an app or dsn=..., not both")
            config = Config.from_mapping(
                {"PGTQ_DSN": dsn, **{f"PGTQ_{k.upper()}": v for k, v in settings.items()}}
            )
            self._standalone = Bound.build(self, config, None)
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

    def init_app(self, app: Any) -> None:
        """Set up *app*: read and validate its ``PGTQ_*`` config, register the
        ``flask pgtq`` commands.  No connection is made here."""
        if self._standalone is not None:
            raise ConfigurationError("a standalone PgTq(dsn=...) cannot be added to an app")
        if "pgtq" in app.extensions:
            raise RuntimeError(
                "a PgTq extension is already registered on this app; create only one "
                "PgTq per app"
            )
        if app.config.get("PGTQ_DEV_DATABASE") is True and not app.config.get("PGTQ_DSN"):
            from .devdb import start_dev_database

            app.config["PGTQ_DSN"] = start_dev_database(app.instance_path).dsn
        config = Config.from_mapping(app.config)
        self._apps[app] = Bound.build(self, config, app)
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

    def _bound(self) -> Bound:
        if self._standalone is not None:
            return self._standalone
        from flask import current_app, has_app_context

        if not has_app_context():
            raise RuntimeError(
                "Working outside of application context: flask_pgtq needs the app to "
                "find its database. Call this in a request or CLI command, or inside "
                "'with app.app_context():'."
            )
        bound = self._apps.get(current_app._get_current_object())  # type: ignore[attr-defined]
        if bound is None:
            raise RuntimeError(
                "this PgTq is not registered on the current app: call q.init_app(app)"
            )
        return bound

    @property
    def config(self) -> Config:
        """The settings of the current app (or of the standalone queue)."""
        return self._bound().config

    @property
    def admin(self) -> Admin:
        """Inspection and operator actions (status, task lists, retry,
        cancel, purge...) for the current app: an :class:`~flask_pgtq.admin.Admin`."""
        bound = self._bound()
        return Admin(bound.db, bound.store.backend)

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
    ) -> Callable[[Callable[P, R]], Handler[P, R]]: ...

    def handler(  # type: ignore[misc]  # mypy and ParamSpec in overloads
        self,
        func: Callable[..., Any] | None = None,
        /,
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
            calls, ``PGTQ_EAGER`` and :meth:`Task.run` stay in-process.
        :raises DuplicateHandler: the name is taken.
        """

        def decorate(fn: Callable[P, R]) -> Handler[P, R]:
            task_name = fn.__name__ if name is None else name
            if task_name in self._handlers:
                raise DuplicateHandler(
                    f"a handler named {task_name!r} is already registered "
                    f"({self._handlers[task_name].func!r}); pass name=... to tell them apart"
                )
            h: Handler[P, R] = Handler(
                self,
                fn,
                name=task_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                retry_backoff=retry_backoff,
                timeout=timeout,
                concurrency=concurrency,
                rate_limit=rate_limit,
                isolated=isolated,
            )
            self._handlers[task_name] = h
            return h

        if func is not None:
            return decorate(func)
        return decorate

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
            schedule = Schedule.build(h, cron, tz, args, kwargs or {})
            if schedule.key in self._schedules:
                raise DuplicateHandler(f"schedule {schedule.key!r} is registered twice")
            self._schedules[schedule.key] = schedule
            return h

        return decorate

    @property
    def schedules(self) -> Mapping[str, Any]:
        """Periodic schedules by key (read-only view)."""
        return dict(self._schedules)

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
        return self._push(name, args, kwargs, self._handler_named(name).defaults)

    def push_many(self, name: str, items: Iterable[Any], /) -> list[int]:
        """Batch push by name; see :meth:`Handler.push_many`."""
        return self._handler_named(name).push_many(items)

    def _handler_named(self, name: str) -> Handler[Any, Any]:
        handler = self._handlers.get(name)
        if handler is None:
            raise UnknownTask(
                f"no handler is registered for task name {name!r}; known: "
                f"{', '.join(sorted(self._handlers)) or 'none'}"
            )
        return handler

    def _push(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: PushOptions,
        connection: Any = None,
    ) -> Task:
        bound = self._bound()
        config = bound.config
        args_json, kwargs_json = encode_arguments(name, args, kwargs, config.max_payload_bytes)
        if config.eager:
            return self._run_eagerly(bound, name, args_json, kwargs_json, options)
        task = bound.store.push(
            options.insert(name, config),
            args_json,
            kwargs_json,
            None if connection is None else dbapi_connection(connection),
        )
        if task.is_new is not False:
            signals.send(signals.task_pushed, bound.runner.sender, task=task)
        return task

    def _push_many(
        self,
        name: str,
        items: Iterable[Any],
        options: PushOptions,
        connection: Any = None,
    ) -> list[int]:
        bound = self._bound()
        config = bound.config
        args_json: list[str] = []
        kwargs_json: list[str] = []
        for item in items:
            args, kwargs = split_item(item)
            encoded = encode_arguments(name, args, kwargs, config.max_payload_bytes)
            args_json.append(encoded[0])
            kwargs_json.append(encoded[1])
        if config.eager:
            for a, k in zip(args_json, kwargs_json, strict=True):
                self._run_eagerly(bound, name, a, k, options)
            return [0] * len(args_json)
        spec = options.insert(name, config)
        ids = bound.store.push_many(
            spec,
            args_json,
            kwargs_json,
            None if connection is None else dbapi_connection(connection),
        )
        if signals.tasks_pushed.receivers:
            signals.send(
                signals.tasks_pushed,
                bound.runner.sender,
                name=name,
                queue=spec.queue,
                ids=ids,
                args=[json.loads(a) for a in args_json],
                kwargs=[json.loads(k) for k in kwargs_json],
            )
        return ids

    def _run_eagerly(
        self, bound: Bound, name: str, args_json: str, kwargs_json: str, options: PushOptions
    ) -> Task:
        """``PGTQ_EAGER``: run now, with arguments as a worker would see them."""
        spec = options.insert(name, bound.config)
        task = Task(
            id=0,
            name=name,
            queue=spec.queue,
            args=json.loads(args_json),
            kwargs=json.loads(kwargs_json),
            state=State.RUNNING,
            priority=spec.priority,
            attempts=1,
            max_attempts=spec.max_attempts,
        )
        signals.send(signals.task_pushed, bound.runner.sender, task=task)
        value = self._handlers[name].func(*task.args, **task.kwargs)
        task.result = json.loads(codec.encode(value, bound.config.max_result_bytes))
        task.state = State.SUCCEEDED
        return task

    # -- consuming ----------------------------------------------------------

    def pop(self, queues: str | Iterable[str] | None = None) -> Task | None:
        """Claim the next ready task (highest priority, then oldest) or return ``None``.

        The claim is leased to this process for ``PGTQ_LEASE`` seconds: call
        :meth:`Task.run` on it (which keeps the lease while it runs) before
        then, or a worker rescues it.

        :param queues: a queue name or several; default ``PGTQ_QUEUE``.
        """
        bound = self._bound()
        names = _queue_list(queues, bound.config.queue)
        if bound.pop_owner is None:
            bound.pop_owner = new_owner_id()
        bound.store.register_owner(bound.pop_owner)
        limits = [h.limit for h in self._handlers.values() if h.limit is not None]
        for name in names:
            tasks = bound.store.claim(bound.pop_owner, name, 1, limits)
            if tasks:
                return tasks[0]
        return None

    def drain(
        self, queues: str | Iterable[str] | None = None, max_tasks: int = 10_000
    ) -> list[Task]:
        """Run every ready task now, in this thread, through the real SQL path
        (claim, run, record), until none is ready; return the tasks run.

        Meant for tests: tasks pushed by tasks run too; retries scheduled for
        later do not.

        :param queues: queues to drain; default ``PGTQ_QUEUE``.
        :param max_tasks: stop after this many (a guard against tasks that
            push themselves for ever).
        """
        ran: list[Task] = []
        while len(ran) < max_tasks:
            task = self.pop(queues)
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
        bound = self._bound()
        bound.store.cancel(task_id, reason)
        return bound.store.get(task_id)

    def get_task(self, task_id: int) -> Task:
        """A fresh copy of the task from the database.

        :raises TaskNotFound: no such task.
        """
        return self._bound().store.get(task_id)

    # -- schema -------------------------------------------------------------

    def init_db(self) -> list[int]:
        """Create or upgrade the tables (what ``flask pgtq init-db`` runs).

        :return: the migration versions applied (empty when up to date).
        """
        from . import schema

        bound = self._bound()
        with bound.db.connection() as conn:
            return schema.upgrade(conn)


def _is_app(obj: Any) -> bool:
    """Whether *obj* looks like a Flask app (without importing Flask)."""
    return all(hasattr(obj, name) for name in ("config", "extensions", "cli"))


def _queue_first(queue: str, dsn: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """*settings* with the queue name of ``PgTq("test_queue", dsn)``, PGTQ's
    order; a name without a DSN or a queue named twice is a TypeError."""
    if dsn is None:
        raise TypeError(
            f"PgTq({queue!r}) needs a DSN after the queue name, e.g. "
            f"PgTq({queue!r}, 'dbname=q user=postgres'); with Flask, pass the app instead"
        )
    if _looks_like_dsn(queue) and not _looks_like_dsn(dsn):
        # No values in the message: the DSN may hold a password.
        raise TypeError("PgTq(queue, dsn): the queue name comes first, then the DSN")
    if "queue" in settings:
        raise TypeError(
            f"PgTq() got the queue twice: {queue!r} as the first argument and "
            f"queue={settings['queue']!r}"
        )
    return {**settings, "queue": queue}


def _looks_like_dsn(text: Any) -> bool:
    return isinstance(text, str) and ("=" in text or "://" in text)


def _queue_list(queues: str | Iterable[str] | None, default: str) -> list[str]:
    if queues is None:
        return [default]
    if isinstance(queues, str):
        queues = [queues]
    names = [validate_name(q, "queue") for q in queues]
    if not names:
        raise ConfigurationError("give at least one queue")
    return list(dict.fromkeys(names))
