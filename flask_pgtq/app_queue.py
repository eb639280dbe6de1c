"""The queue of one app (or of one standalone :class:`~flask_pgtq.PgTq`):
its settings, connection pool, queue core and runner, and the operations on
them that the extension, handlers, the worker and tools share.

:meth:`PgTq.app_queue() <flask_pgtq.PgTq.app_queue>` gives the current app's.
Like the rest of the core this module does not import Flask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import codec, signals, tracing
from .codec import encode_arguments, encode_batch
from .config import Config, queue_list
from .connection import Database, dbapi_connection
from .middleware import Middleware
from .queue import TaskStore, new_owner_id
from .runner import Runner
from .task import State, Task
from .values import Insert, PushOptions

if TYPE_CHECKING:
    from flask import Flask

    from .handler import Handler


class AppQueue:
    """Settings, pool, queue core and runner of one app.

    :param config: the app's validated settings.
    :param handlers: the registered handlers by task name (shared with the
        extension, so handlers registered later are seen).
    :param app: the Flask app whose context tasks run in, or ``None``.
    :param sender: the sender of signals (the app, or the extension).
    :param middleware: the extension's middleware (shared with it, so
        middleware registered later is seen).
    """

    def __init__(
        self,
        config: Config,
        handlers: Mapping[str, Handler[Any, Any]],
        app: Flask | None,
        sender: Any,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        #: The validated settings.
        self.config = config
        #: The connection pool.
        self.db = Database(config.dsn, max_connections=config.pool_size)
        #: Runs, records and announces tasks.
        self.runner = Runner(config, self.db, handlers, app, sender, middleware)
        #: The queue core (state transitions as named SQL).
        self.store: TaskStore = self.runner.store
        self.handlers = handlers
        #: Lease owner for tasks this process claims with :meth:`pop`.
        self.pop_owner: str | None = None

    def close(self) -> None:
        """Close the pool's connections (idle ones now, lent ones when given
        back).  Idempotent; the queue opens new connections if used again."""
        self.db.close()

    # -- producing ----------------------------------------------------------

    def push(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: PushOptions,
        connection: Any = None,
    ) -> Task:
        """Store one task of handler *name* (or run it now with ``PGTQ_EAGER``).

        :param connection: push inside this open transaction (a psycopg2
            connection, or a SQLAlchemy ``Connection`` or ``Session``).
        :raises ArgumentsNotSerializable: an argument cannot be stored as JSON.
        :raises PayloadTooLarge: over ``PGTQ_MAX_PAYLOAD_BYTES``.
        """
        config = self.config
        args_json, kwargs_json = encode_arguments(name, args, kwargs, config.max_payload_bytes)
        spec = options.insert(name, config)
        if config.eager:
            return self._push_eagerly(spec, args_json, kwargs_json)
        conn = None if connection is None else dbapi_connection(connection)
        task = tracing.push(
            lambda meta: self.store.push(spec, args_json, kwargs_json, conn, meta),
            name,
            spec.queue,
        )
        if task.is_new is not False:
            signals.send(signals.task_pushed, self.runner.sender, task=task)
        return task

    def push_many(
        self,
        name: str,
        items: Iterable[Any],
        options: PushOptions,
        connection: Any = None,
    ) -> list[int]:
        """Store many tasks of handler *name* in one statement; return their
        ids in input order.  Every item is checked before anything is stored."""
        from .handler import split_item

        config = self.config
        batch = [split_item(item) for item in items]
        args_text, kwargs_text = encode_batch(name, batch, config.max_payload_bytes)
        spec = options.insert(name, config)
        if config.eager:
            kwargs_list = json.loads(kwargs_text) or [{}] * len(batch)
            for args, kwargs in zip(json.loads(args_text), kwargs_list, strict=True):
                self._push_eagerly(spec, json.dumps(args), json.dumps(kwargs))
            return [0] * len(batch)
        conn = None if connection is None else dbapi_connection(connection)
        ids = tracing.push(
            lambda meta: self.store.push_many(spec, args_text, kwargs_text, conn, meta),
            name,
            spec.queue,
            len(batch),
        )
        if signals.tasks_pushed.receivers:
            signals.send(
                signals.tasks_pushed,
                self.runner.sender,
                name=name,
                queue=spec.queue,
                ids=ids,
                args=json.loads(args_text),
                kwargs=json.loads(kwargs_text) or [{} for _ in ids],
            )
        return ids

    def _push_eagerly(self, spec: Insert, args_json: str, kwargs_json: str) -> Task:
        """``PGTQ_EAGER``: a push (traced as any push) that runs the task now."""
        return tracing.push(
            lambda meta: self._run_eagerly(spec, args_json, kwargs_json, meta),
            spec.name,
            spec.queue,
        )

    def _run_eagerly(
        self, spec: Insert, args_json: str, kwargs_json: str, meta_json: str | None = None
    ) -> Task:
        """``PGTQ_EAGER``: run now, with arguments as a worker would see them."""
        name = spec.name
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
            meta=None if meta_json is None else json.loads(meta_json),
        )
        signals.send(signals.task_pushed, self.runner.sender, task=task)
        value = self.runner.call(self.handlers[name], task)
        task.result = json.loads(codec.encode(value, self.config.max_result_bytes))
        task.state = State.SUCCEEDED
        return task

    # -- consuming ----------------------------------------------------------

    def pop(self, queues: str | Iterable[str] | None = None) -> Task | None:
        """Claim the next ready task of *queues* for this process; see
        :meth:`PgTq.pop <flask_pgtq.PgTq.pop>`."""
        names = queue_list(queues, self.config.queue)
        if self.pop_owner is None:
            self.pop_owner = new_owner_id()
        self.store.register_owner(self.pop_owner)
        limits = [h.limit for h in self.handlers.values() if h.limit is not None]
        for name in names:
            tasks = self.store.claim(self.pop_owner, name, 1, limits)
            if tasks:
                return tasks[0]
        return None
