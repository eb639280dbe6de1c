"""The queue of one app (or of one standalone :class:`~flask_pgtq.PgTq`):
its settings, connection pool, queue core and runner, and the operations on
them that the extension, handlers, the worker and tools share.

:meth:`PgTq.app_queue() <flask_pgtq.PgTq.app_queue>` gives the current app's.
Like the rest of the core this module does not import Flask.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import codec, signals, tracing, transactions
from .codec import encode_arguments, encode_batch
from .config import Config, queue_list
from .connection import Database, dbapi_connection
from .control import Control
from .exceptions import ArgumentsMismatch, TaskNotFound
from .middleware import Middleware
from .queue import TaskStore, new_owner_id
from .runner import Runner
from .task import State, Task
from .values import PushOptions
from .workflow import PlannedTask, Signature, Workflow, WorkflowError, problem_text, task_specs

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
        self.runner.workflow_reader = self.get_workflow
        self.handlers = handlers
        #: Pauses of queues and handlers.
        self.control = Control(self.db)
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
            connection, or a SQLAlchemy ``Connection`` or ``Session``).  The
            ``task_pushed`` signal (and, with ``PGTQ_EAGER``, the run) waits
            for a SQLAlchemy transaction's commit, and is dropped if it rolls
            back; with a psycopg2 connection, which has no commit hook, it
            comes at once (see :func:`~flask_pgtq.transactions.after_commit`).
        :raises ArgumentsMismatch: the handler's function cannot take these
            arguments (checked when the handler is registered in this process).
        :raises ArgumentsNotSerializable: an argument cannot be stored as JSON.
        :raises PayloadTooLarge: over ``PGTQ_MAX_PAYLOAD_BYTES``.
        """
        config = self.config
        if options.after or options.run_on_failure:
            return self._push_after(name, args, kwargs, options, connection)
        args_json, kwargs_json = encode_arguments(name, args, kwargs, config.max_payload_bytes)
        handler = self.handlers.get(name)
        if handler is not None:
            handler.check_arguments(args, kwargs)
        if config.eager:
            queue = options.insert(name, config).queue
            return tracing.push(
                lambda meta: self._run_eagerly(
                    name, args_json, kwargs_json, options, connection, meta
                ),
                name,
                queue,
            )
        spec = options.insert(name, config, handler.limit if handler else None)
        conn = None if connection is None else dbapi_connection(connection)
        task = tracing.push(
            lambda meta: self.store.push(spec, args_json, kwargs_json, conn, meta),
            name,
            spec.queue,
        )
        if task.is_new is not False:
            self.after_commit(
                connection,
                lambda: signals.send(signals.task_pushed, self.runner.sender, task=task),
            )
        return task

    def _push_after(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: PushOptions,
        connection: Any,
    ) -> Task:
        """One task that waits for the tasks of ``options.after``."""
        if self.config.eager:
            raise WorkflowError("after= cannot be used with PGTQ_EAGER: nothing runs later")
        node = PlannedTask(
            Signature(self.handlers[name], args, dict(kwargs), push_options=options),
            [],
            None,
            options.run_on_failure,
        )
        params = task_specs([node], self, {0: options.after})
        row = self.store.push_workflow(
            {**params, "kind": None, "outputs": [], "single": True},
            None if connection is None else dbapi_connection(connection),
        )
        if not row["ok"]:
            raise WorkflowError(problem_text(row["problems"]))
        task = self._new_tasks([node], row)[0]
        signals.send(signals.task_pushed, self.runner.sender, task=task)
        return task

    def push_workflow(
        self,
        kind: str,
        nodes: Sequence[PlannedTask],
        outputs: Sequence[int],
        single: bool,
        connection: Any = None,
    ) -> Workflow:
        """Store the tasks of a workflow and their dependencies in one
        statement (see :mod:`flask_pgtq.workflow`)."""
        if self.config.eager:
            raise WorkflowError(
                "workflows cannot run with PGTQ_EAGER yet: test them with a worker or q.drain()"
            )
        params = task_specs(nodes, self)
        row = self.store.push_workflow(
            {**params, "kind": kind, "outputs": list(outputs), "single": single},
            None if connection is None else dbapi_connection(connection),
        )
        tasks = self._new_tasks(nodes, row)
        for task in tasks:
            signals.send(signals.task_pushed, self.runner.sender, task=task)
        return Workflow(
            row["workflow_id"],
            kind,
            tasks,
            [tasks[i].id for i in outputs],
            single,
            total=len(tasks),
            pending=len(tasks),
            created_at=row["created_at"],
            _queue=self,
        )

    def _new_tasks(self, nodes: Sequence[PlannedTask], row: dict[str, Any]) -> list[Task]:
        tasks = []
        for node, task_id, state, run_at in zip(
            nodes, row["ids"], row["states"], row["run_ats"], strict=True
        ):
            sig = node.signature
            spec = sig.push_options.insert(sig.handler.name, self.config)
            tasks.append(
                Task(
                    task_id,
                    spec.name,
                    spec.queue,
                    json.loads(codec.encode(list(sig.args))),
                    json.loads(codec.encode(sig.kwargs)) if sig.kwargs else {},
                    State(state),
                    spec.priority,
                    0,
                    spec.max_attempts,
                    run_at,
                    row["created_at"],
                    workflow_id=row["workflow_id"],
                    tags=list(spec.tags),
                    is_new=True,
                    _backend=self.runner,
                )
            )
        return tasks

    def get_workflow(self, workflow_id: int) -> Workflow:
        """The workflow with this id and its tasks, fresh from the database.

        :raises TaskNotFound: no such workflow.
        """
        row = self.store.workflow_row(workflow_id)
        if row is None:
            raise TaskNotFound(f"no workflow with id {workflow_id}")
        return Workflow(
            row["id"],
            row["kind"],
            self.store.workflow_tasks(workflow_id),
            list(row["outputs"]),
            row["single"],
            total=row["total"],
            pending=row["pending"],
            failed=row["failed"],
            cancelled=row["cancelled"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            _queue=self,
        )

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
        handler = self.handlers.get(name)
        batch = [split_item(item) for item in items]
        args_text, kwargs_text = encode_batch(name, batch, config.max_payload_bytes)
        if handler is not None:
            for index, (args, kwargs) in enumerate(batch):
                try:
                    handler.check_arguments(args, kwargs)
                except ArgumentsMismatch as exc:
                    raise ArgumentsMismatch(f"push_many item {index}: {exc}") from None
        if config.eager:
            kwargs_list = json.loads(kwargs_text) or [{}] * len(batch)
            for args, kwargs in zip(json.loads(args_text), kwargs_list, strict=True):
                self._run_eagerly(name, json.dumps(args), json.dumps(kwargs), options, connection)
            return [0] * len(batch)
        spec = options.insert(name, config, handler.limit if handler else None)
        conn = None if connection is None else dbapi_connection(connection)
        ids = tracing.push(
            lambda meta: self.store.push_many(spec, args_text, kwargs_text, conn, meta),
            name,
            spec.queue,
            len(batch),
        )

        def announce() -> None:
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

        self.after_commit(connection, announce)
        return ids

    @staticmethod
    def after_commit(connection: Any, action: Callable[[], None]) -> None:
        """Call *action* once the push on *connection* is committed: at once
        without a connection (the push committed by itself) or on a psycopg2
        connection (no commit hook); at the commit of a SQLAlchemy
        transaction, and never if it rolls back."""
        if connection is None or not transactions.after_commit(connection, action):
            action()

    def _run_eagerly(
        self,
        name: str,
        args_json: str,
        kwargs_json: str,
        options: PushOptions,
        connection: Any,
        meta_json: str | None = None,
    ) -> Task:
        """``PGTQ_EAGER``: run as a worker would (a fresh app context, the
        arguments after a JSON round trip, the same signals), now or, for a
        push inside a SQLAlchemy transaction, once it commits."""
        spec = options.insert(name, self.config)
        task = Task(
            id=0,
            name=name,
            queue=spec.queue,
            args=json.loads(args_json),
            kwargs=json.loads(kwargs_json),
            state=State.QUEUED,
            priority=spec.priority,
            attempts=0,
            max_attempts=spec.max_attempts,
            meta=None if meta_json is None else json.loads(meta_json),
            tags=list(spec.tags),
        )
        if connection is not None:
            dbapi_connection(connection)  # a connection it is, in a transaction
        self.after_commit(connection, lambda: self.runner.run_eagerly(task))
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
