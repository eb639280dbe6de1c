"""Helpers for testing apps that use flask_pgtq.

* ``PGTQ_EAGER = True`` runs each task at push time (no worker, no table) as
  a worker would: in a fresh app context, after a JSON round trip of its
  arguments, so what would fail in a worker fails in the test.
* :meth:`~flask_pgtq.PgTq.drain` runs every ready task through the real SQL path.
* :func:`record_pushes` records what a block of code pushed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from blinker import ANY

from . import signals


@dataclass
class Pushed:
    """One pushed task, as :func:`record_pushes` saw it."""

    id: int
    name: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def record_pushes(sender: Any = ANY) -> Iterator[list[Pushed]]:
    """Record the tasks pushed (one by one or in batches) inside the block::

        with record_pushes(app) as pushed:
            client.post("/signup", data={"email": "ada@example.com"})
        assert [(p.name, p.args) for p in pushed] == [("send_welcome", ["ada@example.com"])]

    A push inside a SQLAlchemy transaction (``options(connection=db.session)``)
    is recorded when that transaction commits, and not at all if it rolls
    back: the list holds committed pushes only.  A push on a psycopg2
    connection is recorded at the push (it has no commit hook).

    :param sender: only record pushes for this app (or standalone
        :class:`~flask_pgtq.PgTq`); default: all.
    """
    pushed: list[Pushed] = []

    def one(sender: Any, task: Any, **extra: Any) -> None:
        pushed.append(Pushed(task.id, task.name, task.queue, list(task.args), dict(task.kwargs)))

    def many(sender: Any, name: str, queue: str, ids: list[int], **extra: Any) -> None:
        for task_id, args, kwargs in zip(ids, extra["args"], extra["kwargs"], strict=True):
            pushed.append(Pushed(task_id, name, queue, args, kwargs))

    with (
        signals.task_pushed.connected_to(one, sender),
        signals.tasks_pushed.connected_to(many, sender),
    ):
        yield pushed
