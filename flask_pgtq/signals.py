"""Signals, sent with `blinker <https://blinker.readthedocs.io>`_.

The sender is the Flask app (the :class:`~flask_pgtq.PgTq` object when used
without Flask).  Payloads are keyword arguments.  Task signals fire after
the state they announce is committed.  A receiver that raises is logged and
changes nothing: the task's outcome is already recorded.

Connect a receiver like any blinker signal::

    from flask_pgtq import signals

    @signals.task_failed.connect_via(app)
    def alert(app, task, **extra):
        ...
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace

log = logging.getLogger("flask_pgtq")

_signals = Namespace()

#: A task was stored.  Payload: ``task``.  Fires after the insert commits.
#: For a push inside a caller's SQLAlchemy transaction
#: (``options(connection=db.session)``): when that transaction commits, and
#: never if it rolls back; inside a psycopg2 connection's transaction, which
#: has no commit hook: at the push, before the caller's commit
#: (:mod:`flask_pgtq.transactions`).  With ``PGTQ_EAGER``: just before the
#: task runs.
task_pushed = _signals.signal("task-pushed")

#: A batch of tasks of one handler was stored (:meth:`~flask_pgtq.Handler.push_many`).
#: Payload: ``name``, ``queue``, ``ids``, ``args`` and ``kwargs`` (one entry
#: per task, as the worker will see them).  Sent only when it has receivers,
#: at the same time as :data:`task_pushed` would be.
tasks_pushed = _signals.signal("tasks-pushed")

#: A worker (or :meth:`~flask_pgtq.Task.run`) is about to run a claimed task.
#: Payload: ``task``.  Sent in the thread that runs the handler, inside the
#: task's app context.
task_started = _signals.signal("task-started")

#: A task's handler returned and the result is stored.
#: Payload: ``task``, ``result`` (the return value), ``duration`` (seconds).
task_succeeded = _signals.signal("task-succeeded")

#: An attempt failed and another one is scheduled.  Payload: ``task``,
#: ``error`` (traceback text), ``delay`` (seconds until the next attempt),
#: ``duration`` (seconds the attempt ran).
task_retrying = _signals.signal("task-retrying")

#: A handler snoozed its task (:class:`~flask_pgtq.Snooze`): it runs again
#: after ``delay`` seconds without spending an attempt.  Payload: ``task``,
#: ``delay``, ``reason``, ``duration`` (seconds it ran).
task_snoozed = _signals.signal("task-snoozed")

#: A task failed for good (attempts exhausted or not retryable).
#: Payload: ``task``, ``error`` (traceback text), ``duration`` (seconds the
#: last attempt ran).
task_failed = _signals.signal("task-failed")

#: A task was cancelled (by its handler raising :class:`~flask_pgtq.Cancel`).
#: Payload: ``task``, ``reason``, ``duration`` (seconds it ran).
task_cancelled = _signals.signal("task-cancelled")

#: Every task of a workflow (:func:`~flask_pgtq.chain`, :func:`~flask_pgtq.group`,
#: :func:`~flask_pgtq.chord`) has ended.  Payload: ``workflow`` (a
#: :class:`~flask_pgtq.Workflow`, read after the end was committed; its
#: ``state`` says how it ended).  Sent once per workflow, by the process whose
#: statement ended its last task (a worker, or the caller of a cancel), and
#: only when it has receivers.
workflow_finished = _signals.signal("workflow-finished")

#: A worker registered itself and is about to claim tasks.
#: Payload: ``worker_id``, ``queues``, ``concurrency``.
worker_started = _signals.signal("worker-started")

#: A worker got a stop request (signal, ``--burst`` done, ``--max-tasks``
#: reached) and stops claiming.  Payload: ``worker_id``, ``reason``.
worker_stopping = _signals.signal("worker-stopping")


#: A queue or a handler was paused (the pause is committed; every worker
#: obeys it from then on).  Payload: ``kind`` (``"queue"`` or ``"handler"``),
#: ``target`` (its name), ``until`` (an aware datetime, or ``None``),
#: ``reason``, ``paused_by``.  Sent by the process that paused.
paused = _signals.signal("paused")

#: A pause ended: resumed by someone (payload ``ended`` is ``"resumed"``,
#: sent by that process), or a timed pause ran out (``ended`` is
#: ``"expired"``, sent by the worker that removed it).  Payload: ``kind``,
#: ``target``, ``ended``.
resumed = _signals.signal("resumed")


def send(signal: Any, sender: Any, **payload: Any) -> None:
    """Send *signal* to each receiver, logging (never raising) their errors."""
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **payload)
        except Exception:
            log.exception("receiver %r of signal %r raised; ignored", receiver, signal.name)
