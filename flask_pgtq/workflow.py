"""Workflows: tasks that wait for other tasks.

A :class:`Signature` is a handler call to make later (``add.s(2, 3)``);
:func:`~flask_pgtq.chain`, :func:`~flask_pgtq.group` and
:func:`~flask_pgtq.chord` combine signatures, and nest.
Pushing one stores all its tasks and their dependencies in one statement
(``push_workflow`` in ``sql/workflow.sql``) and returns a :class:`Workflow`.
A task whose parents have not all ended is ``waiting``; the statement that
records its last parent's final outcome queues it (``pgtq_tasks_ended`` in
migration 0006), so release is exactly once without a leader or a poller.

How results flow, by construction:

- in a chain, a step gets the previous step's result as its first
  positional argument, or the list of results when the previous step is a
  group (an immutable signature, ``handler.si(...)``, gets nothing);
- a chord's callback gets the list of its header's results, in order;
- a group's ``on_finish`` runs once every member ended, whatever the
  outcome, and gets ``{"succeeded": n, "failed": n, "cancelled": n,
  "results": [...]}``.

A failed or cancelled task cancels its waiting dependents, transitively
(``error``: ``dependency <id> failed``), except those that run on failure
(``on_finish``, ``options(run_on_failure=True)``), which are released.

Like the rest of the core this module does not import Flask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .codec import encode_arguments
from .exceptions import TaskFailed, TaskNotFound, UsageError
from .task import State, Task
from .values import PushOptions

if TYPE_CHECKING:
    from .app_queue import AppQueue
    from .handler import Handler

#: How a task gets its parents' results (the ``pass_result`` column).
PREVIOUS, RESULTS, SUMMARY = "previous", "results", "summary"


class WorkflowError(UsageError):
    """A workflow or an ``after=`` push cannot be stored as given (an unknown
    or failed parent, an empty group, arguments that do not fit a handler).
    Nothing was stored."""


class Signature:
    """One handler call to make later: ``handler.s(*args, **kwargs)``.

    :ivar immutable: made with ``handler.si(...)``: it gets no result from
        the steps before it.
    """

    __slots__ = ("args", "handler", "immutable", "kwargs", "push_options")

    def __init__(
        self,
        handler: Handler[Any, Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        immutable: bool = False,
        push_options: PushOptions | None = None,
    ) -> None:
        self.handler = handler
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.immutable = immutable
        self.push_options = push_options if push_options is not None else handler.defaults

    def __repr__(self) -> str:
        mark = "si" if self.immutable else "s"
        return f"<Signature {self.handler.name}.{mark}(...)>"

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        run_on_failure: bool = False,
        tags: Sequence[str] | None = None,
    ) -> Signature:
        """This call with push options (see :meth:`Handler.options
        <flask_pgtq.Handler.options>`); *run_on_failure*: run it even when a
        parent failed or was cancelled."""
        given = PushOptions.build(
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            delay=delay,
            eta=eta,
            run_on_failure=run_on_failure,
            tags=tags,
        )
        return Signature(
            self.handler,
            self.args,
            self.kwargs,
            immutable=self.immutable,
            push_options=given.over(self.push_options),
        )

    def push(self, *, connection: Any = None) -> Workflow:
        """Push this one call as a workflow of one task."""
        return chain(self).push(connection=connection)


class Canvas:
    """What :func:`~flask_pgtq.chain`, :func:`~flask_pgtq.group` and
    :func:`~flask_pgtq.chord` return."""

    kind = ""

    def push(self, *, connection: Any = None) -> Workflow:
        """Store every task of this workflow and its dependencies in one
        statement; return at once.

        :param connection: push inside this open transaction (a psycopg2
            connection, or a SQLAlchemy ``Connection`` or ``Session``): the
            workflow exists only if it commits.
        :raises WorkflowError: bad input; nothing is stored.
        """
        return push(self, connection=connection)


class Chain(Canvas):
    """Steps run one after the other; see :func:`~flask_pgtq.chain`."""

    kind = "chain"

    def __init__(self, steps: Sequence[Step]) -> None:
        if not steps:
            raise WorkflowError("a chain needs at least one step")
        self.steps = [_step(s) for s in steps]


class Group(Canvas):
    """Members run in parallel; see :func:`~flask_pgtq.group`."""

    kind = "group"

    def __init__(self, members: Sequence[Step]) -> None:
        if not members:
            raise WorkflowError("a group needs at least one member")
        self.members = [_step(m) for m in members]

    def push(self, *, connection: Any = None, on_finish: Signature | None = None) -> Workflow:
        """Like :meth:`Canvas.push`; *on_finish* (a signature) runs once every
        member ended, whatever the outcome, with a summary dict as its first
        argument: ``{"succeeded": n, "failed": n, "cancelled": n,
        "results": [...]}`` (results in member order, ``None`` for a member
        that did not succeed)."""
        if on_finish is not None and not isinstance(on_finish, Signature):
            raise WorkflowError(f"on_finish must be a signature, not {on_finish!r}")
        return push(self, connection=connection, on_finish=on_finish)


class Chord(Canvas):
    """A group and a callback; see :func:`~flask_pgtq.chord`."""

    kind = "chord"

    def __init__(self, header: Sequence[Step] | Group, body: Step) -> None:
        self.header = header if isinstance(header, Group) else Group(list(header))
        self.body = _step(body)


Step = Signature | Canvas


def _step(item: Any) -> Step:
    if not isinstance(item, (Signature, Canvas)):
        raise WorkflowError(
            f"a workflow step must be a signature (handler.s(...)) or a chain, group or "
            f"chord, not {item!r}"
        )
    return item


def _items(items: tuple[Any, ...]) -> list[Any]:
    """``group(a, b)`` or ``group([a, b])``."""
    if len(items) == 1 and not isinstance(items[0], (Signature, Canvas)):
        try:
            return list(items[0])
        except TypeError:
            pass
    return list(items)


def chain(*steps: Step) -> Chain:
    """Steps that run one after the other; each gets the previous step's
    result as its first positional argument (a list, after a group)."""
    return Chain(_items(steps))


def group(*members: Step | Iterable[Step]) -> Group:
    """Members that run in parallel: ``group(a.s(1), a.s(2))`` or
    ``group(sigs)``.  Its result is the list of the members' results."""
    return Group(_items(members))


def chord(header: Iterable[Step] | Group, body: Step) -> Chord:
    """Run the *header* members in parallel, then *body* once with the list
    of their results, in order.  If a member fails, *body* is cancelled."""
    if not isinstance(header, Group):
        header = list(header)
    return Chord(header, body)


# -- building ---------------------------------------------------------------------


@dataclass
class PlannedTask:
    """One task of a workflow being pushed: its signature, the positions of
    its parents in the plan, how it gets their results, and whether it runs
    when one of them failed."""

    signature: Signature
    parents: list[int]
    pass_result: str | None
    run_on_failure: bool


@dataclass
class _Plan:
    nodes: list[PlannedTask] = field(default_factory=list)

    def add(self, step: Step, parents: list[int], mode: str | None) -> tuple[list[int], str]:
        """Add *step* after *parents* (whose output is shaped as *mode*);
        return its exits and how their output is shaped."""
        if isinstance(step, Signature):
            gets = None if not parents or step.immutable else mode
            self.nodes.append(
                PlannedTask(step, list(parents), gets, step.push_options.run_on_failure)
            )
            return [len(self.nodes) - 1], PREVIOUS
        if isinstance(step, Chain):
            exits, shape = parents, mode or PREVIOUS
            for item in step.steps:
                exits, shape = self.add(item, exits, shape if exits else None)
            return exits, shape
        if isinstance(step, Group):
            exits = []
            for member in step.members:
                exits += self.add(member, parents, mode)[0]
            return exits, RESULTS
        assert isinstance(step, Chord)
        header = self.add(step.header, parents, mode)[0]
        return self.add(step.body, header, RESULTS)


def push(canvas: Canvas, *, connection: Any = None, on_finish: Signature | None = None) -> Workflow:
    """Store *canvas* (see :meth:`Canvas.push`)."""
    plan = _Plan()
    exits, shape = plan.add(canvas, [], None)
    if on_finish is not None:
        plan.nodes.append(PlannedTask(on_finish, list(exits), SUMMARY, True))
    queue = plan.nodes[0].signature.handler.pgtq.app_queue()
    return queue.push_workflow(
        canvas.kind, plan.nodes, exits, shape == PREVIOUS and len(exits) == 1, connection
    )


def task_specs(
    nodes: Sequence[PlannedTask], queue: AppQueue, after: dict[int, tuple[int, ...]] | None = None
) -> dict[str, Any]:
    """The ``push_workflow`` parameters of *nodes* (``kind``, ``outputs`` and
    ``single`` aside), every task checked first.

    :param after: for a node index, the ids of existing tasks it waits for.
    :raises WorkflowError: a handler that is not registered, arguments that
        do not fit its signature (counting the result it gets first).
    """
    config = queue.config
    tasks: list[str] = []
    edges: list[list[int]] = []
    external: list[list[int]] = []
    for n, node in enumerate(nodes):
        sig = node.signature
        name = sig.handler.name
        if queue.handlers.get(name) is not sig.handler:
            raise WorkflowError(f"handler {name!r} is not registered with this queue")
        options = sig.push_options
        if options.unique_key is not None:
            raise WorkflowError(f"step {n} ({name}): unique_key cannot be used in a workflow")
        placeholder: tuple[Any, ...] = (None,) if node.pass_result else ()
        try:
            sig.handler.check_arguments((*placeholder, *sig.args), sig.kwargs)
        except TypeError as exc:
            given = " (after the result it gets first)" if placeholder else ""
            raise WorkflowError(
                f"step {n} ({name}): the arguments{given} do not fit the handler's "
                f"signature {sig.handler.signature}: {exc}"
            ) from None
        args_json, kwargs_json = encode_arguments(
            name, sig.args, sig.kwargs, config.max_payload_bytes
        )
        spec = options.insert(name, config, sig.handler.limit)
        meta = {
            "queue": spec.queue,
            "name": spec.name,
            "priority": spec.priority,
            "max_attempts": spec.max_attempts,
            "delay": spec.delay,
            "run_at": None if spec.run_at is None else spec.run_at.isoformat(),
            "pass_result": node.pass_result,
            "run_on_failure": node.run_on_failure,
            "limited": spec.limited,
            "tags": list(spec.tags),
        }
        text = json.dumps(meta)
        tasks.append(f'{text[:-1]}, "args": {args_json}, "kwargs": {kwargs_json}}}')
        for position, parent in enumerate(node.parents):
            edges.append([n, position, parent])
        for position, parent_id in enumerate((after or {}).get(n, ()), len(node.parents)):
            external.append([n, position, parent_id])
    return {
        "tasks": f"[{','.join(tasks)}]",
        "edges": json.dumps(edges),
        "after": json.dumps(external),
    }


def problem_text(problems: list[dict[str, Any]]) -> str:
    """Why a push with ``after=`` was refused, from its ``problems``."""
    parts = []
    for problem in problems:
        if problem["state"] == "missing":
            parts.append(f"task {problem['id']} does not exist")
        else:
            parts.append(f"task {problem['id']} already {problem['state']}")
    return (
        "cannot wait for " + "; ".join(parts) + " (a dependent of a failed or cancelled "
        "task would be cancelled at once: nothing was stored; use "
        "options(run_on_failure=True) to run it anyway)"
    )


# -- a stored workflow ---------------------------------------------------------------


def workflow_state(finished_at: datetime | None, failed: int, cancelled: int) -> str:
    """A workflow's state from its row: ``running`` until every task ended;
    then ``failed`` if a task failed, else ``cancelled`` if one was
    cancelled, else ``succeeded``."""
    if finished_at is None:
        return "running"
    if failed:
        return State.FAILED.value
    if cancelled:
        return State.CANCELLED.value
    return State.SUCCEEDED.value


@dataclass(eq=False)
class Workflow:
    """A pushed chain, group or chord, as read from the database.

    :ivar tasks: every task, in the order they were pushed.
    :ivar outputs: the ids of the tasks whose results :meth:`wait` returns.
    """

    id: int
    kind: str
    tasks: list[Task]
    outputs: list[int]
    single: bool
    total: int = 0
    pending: int = 0
    failed: int = 0
    cancelled: int = 0
    created_at: datetime | None = None
    finished_at: datetime | None = None
    _queue: AppQueue | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"<Workflow {self.id} {self.kind} state={self.state} "
            f"{self.total - self.pending}/{self.total} ended>"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workflow) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def state(self) -> str:
        """``running`` until every task ended; then ``failed`` if a task
        failed, else ``cancelled`` if one was cancelled, else ``succeeded``."""
        return workflow_state(self.finished_at, self.failed, self.cancelled)

    def _require_queue(self) -> AppQueue:
        if self._queue is None:
            raise UsageError("this Workflow is not bound to a queue")
        return self._queue

    def refresh(self) -> Workflow:
        """Reload the workflow and its tasks; return ``self``."""
        fresh = self._require_queue().get_workflow(self.id)
        for name in ("tasks", "total", "pending", "failed", "cancelled", "finished_at"):
            setattr(self, name, getattr(fresh, name))
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until every task of the workflow ended; return its result:
        a chain's last step's, a chord's callback's, a group's list of
        results (in member order).

        :raises TaskFailed: a task failed or was cancelled (the first one
            that failed, if any, else the first output cancelled).
        :raises WaitTimeout: it had not ended after *timeout* seconds.
        """
        queue = self._require_queue()
        store = queue.store

        def finished() -> Workflow | None:
            row = store.workflow_row(self.id)
            if row is None:
                raise TaskNotFound(f"no workflow with id {self.id}")
            return self if row["finished_at"] is not None else None

        store.wait_until(finished, None, timeout, f"workflow {self.id} has not ended")
        self.refresh()
        by_id = {task.id: task for task in self.tasks}
        outputs = [by_id[i] for i in self.outputs if i in by_id]
        if any(t.state is not State.SUCCEEDED for t in outputs):
            culprit = next((t for t in self.tasks if t.state is State.FAILED), None)
            if culprit is None:
                culprit = next(t for t in outputs if t.state is not State.SUCCEEDED)
            raise TaskFailed(culprit, culprit.error)
        results = [t.result for t in outputs]
        return results[0] if self.single else results

    def cancel(self, reason: str = "workflow cancelled") -> int:
        """Cancel every task of the workflow that has not started (waiting
        or queued) and ask running ones to stop.

        :return: how many tasks were cancelled or asked to stop.
        """
        rows = self._require_queue().store.cancel_rows(None, self.id, reason)
        return len(rows)
