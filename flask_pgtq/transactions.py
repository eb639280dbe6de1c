"""Acting once the caller's transaction commits.

A push with ``options(connection=...)`` joins the caller's transaction: the
task exists only if that transaction commits.  What announces the push (the
``task_pushed`` and ``tasks_pushed`` signals, hence
:func:`~flask_pgtq.testing.record_pushes`) and, with ``PGTQ_EAGER``, the run
itself wait for that commit, and are dropped if the transaction (or the
savepoint of a session that holds the push) rolls back.

SQLAlchemy sessions and connections say when they commit (events);
SQLAlchemy is imported only when the connection object is one of its own,
so it never becomes a dependency.  A psycopg2 connection has no commit hook:
:func:`after_commit` returns ``False`` and the caller acts at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Key in ``Session.info`` / ``Connection.info`` of the actions waiting
#: for the commit: ``(transaction, action)`` pairs.
_PENDING = "flask_pgtq_after_commit"


def is_sqlalchemy(obj: Any) -> bool:
    """Whether *obj* is a SQLAlchemy object (a subclass counts, such as
    Flask-SQLAlchemy's ``Session``), without importing SQLAlchemy."""
    return any(cls.__module__.split(".")[0] == "sqlalchemy" for cls in type(obj).__mro__)


def after_commit(connection: Any, action: Callable[[], None]) -> bool:
    """Call *action* once the transaction *connection* is in commits; never
    if it rolls back.

    :param connection: what was given as ``options(connection=...)``, its
        transaction begun already: a SQLAlchemy ``Session`` (or
        ``scoped_session``, such as Flask-SQLAlchemy's ``db.session``) or
        ``Connection``.
    :return: ``True`` if *action* will be called at the commit; ``False``
        when *connection* offers no commit hook (a psycopg2 connection):
        then the caller should act at once.
    """
    if not is_sqlalchemy(connection):
        return False
    from sqlalchemy import event
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session, scoped_session

    if isinstance(connection, scoped_session):
        connection = connection()
    if isinstance(connection, Session):
        pending = connection.info.get(_PENDING)
        if pending is None:
            pending = connection.info[_PENDING] = []
            event.listen(connection, "after_commit", _session_committed)
            event.listen(connection, "after_soft_rollback", _session_rolled_back)
            event.listen(connection, "after_transaction_end", _session_ended)
        transaction = connection.get_nested_transaction() or connection.get_transaction()
        pending.append((transaction, action))
        return True
    if isinstance(connection, Connection):
        pending = connection.info.get(_PENDING)
        if pending is None:
            pending = connection.info[_PENDING] = []
            event.listen(connection, "commit", _connection_committed)
            event.listen(connection, "rollback", _connection_rolled_back)
        pending.append((None, action))
        return True
    return False


def _run(pending: list[tuple[Any, Callable[[], None]]]) -> None:
    actions = [action for _, action in pending]
    pending.clear()
    for action in actions:
        action()


def _within(transaction: Any, ancestor: Any) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def _drop(pending: list[tuple[Any, Callable[[], None]]], ended: Any) -> None:
    pending[:] = [(t, action) for t, action in pending if not _within(t, ended)]


def _session_committed(session: Any) -> None:
    _run(session.info[_PENDING])


def _session_rolled_back(session: Any, previous_transaction: Any) -> None:
    # A savepoint's rollback drops what was pushed inside it; the outer
    # transaction goes on.
    _drop(session.info[_PENDING], previous_transaction)


def _session_ended(session: Any, transaction: Any) -> None:
    # The end of the outer transaction without a commit (a close): what it
    # held never existed.  After a commit nothing is left to drop.
    if transaction.parent is None:
        _drop(session.info[_PENDING], transaction)


def _connection_committed(connection: Any) -> None:
    _run(connection.info[_PENDING])


def _connection_rolled_back(connection: Any) -> None:
    connection.info[_PENDING].clear()
