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

from . import codec, signals
from .codec import encode_arguments
from .config import Config, queue_list
from .connection import Database, dbapi_connection
from .exceptions import TaskNotFound
from .queue import TaskStore, new_owner_id
from .runner import Runner
from .task import State, Task
from .values import PushOptions
from .workflow import Signature, Workflow, WorkflowError, _Node, problem_text, task_specs

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
    """

    def __init__(
        self,
        config: Config,
        handlers: Mapping[str, Handler[Any, Any]],
        app: Flask | None,
        sender: Any,
    ) -> None:
        #: The validated settings.
        self.config = config
        #: The connection pool.
        self.db = Database(config.dsn, max_connections=config.pool_size)
        #: Runs, records and announces tasks.
        self.runner = Runner(config, self.db, handlers, app, sender)
        #: The queue core (state transitions as named SQL).
        self.store: TaskStore = self.runner.store
        self.runner.workflow_reader = self.get_workflow
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
        if options.after or options.run_on_failure:
            return self._push_after(name, args, kwargs, options, connection)
        args_json, kwargs_json = encode_arguments(name, args, kwargs, config.max_payload_bytes)
        if config.eager:
            return self._run_eagerly(name, args_json, kwargs_json, options)
        task = self.store.push(
            options.insert(name, config),
            args_json,
            kwargs_json,
            None if connection is None else dbapi_connection(connection),
        )
        if task.is_new is not False:
            signals.send(signals.task_pushed, self.runner.sender, task=task)
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
        node = _Node(
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
        nodes: Sequence[_Node],
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

    def _new_tasks(self, nodes: Sequence[_Node], row: dict[str, Any]) -> list[Task]:
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
        args_json: list[str] = []
        kwargs_json: list[str] = []
        for item in items:
            args, kwargs = split_item(item)
            encoded = encode_arguments(name, args, kwargs, config.max_payload_bytes)
            args_json.append(encoded[0])
            kwargs_json.append(encoded[1])
        if config.eager:
            for a, k in zip(args_json, kwargs_json, strict=True):
                self._run_eagerly(name, a, k, options)
            return [0] * len(args_json)
        spec = options.insert(name, config)
        ids = self.store.push_many(
            spec,
            args_json,
            kwargs_json,
            None if connection is None else dbapi_connection(connection),
        )
        if signals.tasks_pushed.receivers:
            signals.send(
                signals.tasks_pushed,
                self.runner.sender,
                name=name,
                queue=spec.queue,
                ids=ids,
                args=[json.loads(a) for a in args_json],
                kwargs=[json.loads(k) for k in kwargs_json],
            )
        return ids

    def _run_eagerly(
        self, name: str, args_json: str, kwargs_json: str, options: PushOptions
    ) -> Task:
        """``PGTQ_EAGER``: run now, with arguments as a worker would see them."""
        spec = options.insert(name, self.config)
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
        signals.send(signals.task_pushed, self.runner.sender, task=task)
        value = self.handlers[name].func(*task.args, **task.kwargs)
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
