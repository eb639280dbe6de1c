"""Connections: a fork-safe pool, and the one place driver errors are translated.

A connection is lent to one thread for one block (:meth:`Database.connection`)
and never shared.  (psycopg2's own pools close every connection given back
beyond ``minconn`` and open ``minconn`` eagerly, so a push would pay for a
new connection each time; this pool keeps idle connections, opens them
lazily and waits instead of failing when all are lent.)

A pool notices when it is used in a forked child and starts afresh there,
leaving the parent's sockets untouched: closing them in the child would end
the parent's sessions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .config import parse_dsn
from .exceptions import DatabaseError, DatabaseUnavailable, SchemaNotReady, UsageError

try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "flask_pgtq needs the psycopg2 driver. Install it with "
        "'pip install \"flask_pgtq[binary]\"' (a wheel, no compiler needed) or "
        "'pip install \"flask_pgtq[c]\"' (builds against the system libpq)."
    ) from exc

log = logging.getLogger("flask_pgtq")

#: Connections of pools abandoned in a forked child.  They are kept
#: referenced, never closed: closing would end the parent's sessions.
_orphans: list[Any] = []

_UNAVAILABLE = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: Every pool of this process, for :func:`_after_fork_in_child`.
_pools: weakref.WeakSet[Database] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread lives on in a child: a pool lock another
    # thread held at the fork would stay locked for ever.  The pool starts
    # afresh on first use anyway, so a new lock is all it needs.
    for pool in list(_pools):
        pool._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message.strip()


#: SQLSTATE classes whose messages may quote the statement's values:
#: data exceptions, integrity violations, program limits.
_ABOUT_DATA = ("22", "23", "54")
_QUOTED_VALUE = re.compile(r':\s*".*$', re.DOTALL)


def _message(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """The error's text, without the password, and without the values a
    statement was given when the error is about data (PostgreSQL quotes
    them in the message, DETAIL and CONTEXT: task arguments and results
    must not reach logs)."""
    code = getattr(exc, "pgcode", None)
    if code and code[:2] in _ABOUT_DATA:
        primary = getattr(getattr(exc, "diag", None), "message_primary", None) or ""
        primary = _QUOTED_VALUE.sub("", primary)
        return _scrub(f"{primary} (SQLSTATE {code}; values not shown)", secrets)
    return _scrub(str(exc), secrets) or type(exc).__name__


def translate(exc: BaseException, secrets: tuple[str, ...] = ()) -> DatabaseError:
    """The :class:`~flask_pgtq.DatabaseError` to raise for a psycopg2 error."""
    error = _translate(exc, secrets)
    error.sqlstate = getattr(exc, "pgcode", None)
    return error


def _translate(exc: BaseException, secrets: tuple[str, ...]) -> DatabaseError:
    message = _message(exc, secrets)
    if isinstance(exc, psycopg2.errors.UndefinedTable | psycopg2.errors.UndefinedFunction):
        # One line: the primary message, without the statement excerpt
        # (LINE 1: ... and a caret) that follows it.
        primary = message.splitlines()[0] if message else type(exc).__name__
        return SchemaNotReady(
            "the flask_pgtq tables are missing or out of date "
            f"(the database said: {primary}): run 'flask pgtq init-db' (or PgTq.init_db())"
        )
    if isinstance(
        exc, psycopg2.errors.InvalidSqlStatementName | psycopg2.errors.DuplicatePreparedStatement
    ):
        return DatabaseError(
            f"{message} (a prepared statement went missing or was duplicated: behind "
            "PgBouncer in transaction mode, set PGTQ_PREPARED_STATEMENTS = False)"
        )
    if isinstance(exc, psycopg2.errors.AdminShutdown | psycopg2.errors.CannotConnectNow):
        return DatabaseUnavailable(message)
    code = getattr(exc, "pgcode", None)
    if isinstance(exc, _UNAVAILABLE) and (code is None or code.startswith("08")):
        # The connection broke or could not be made.  (psycopg2 makes other
        # server errors OperationalError too, such as a cancelled statement:
        # the connection is fine then, and the error is not "unavailable".)
        return DatabaseUnavailable(message)
    return DatabaseError(message)


def is_driver_error(exc: BaseException) -> bool:
    return isinstance(exc, psycopg2.Error)


@contextlib.contextmanager
def translated_errors(db: Database | None = None) -> Iterator[None]:
    """Turn driver errors raised in the block into :class:`~flask_pgtq.DatabaseError`."""
    try:
        yield
    except psycopg2.Error as exc:
        raise translate(exc, db.secrets if db is not None else ()) from exc
    except Exception as exc:
        # psycopg (3) or another driver behind a caller's connection.
        if type(exc).__module__.split(".")[0] in ("psycopg", "sqlalchemy"):
            raise translate(exc, db.secrets if db is not None else ()) from exc
        raise


def dbapi_connection(obj: Any) -> Any:
    """The DB-API connection behind *obj*: a psycopg2 (or psycopg) connection,
    a SQLAlchemy ``Connection``, ``Session`` or ``scoped_session`` (such as
    Flask-SQLAlchemy's ``db.session``).  SQLAlchemy is not imported here."""
    if isinstance(obj, psycopg2.extensions.connection):
        return obj
    if callable(getattr(obj, "connection", None)) and hasattr(obj, "execute"):
        obj = obj.connection()  # a Session: its Connection, in its transaction
    fairy = getattr(obj, "connection", None)
    if callable(getattr(obj, "in_transaction", None)) and not obj.in_transaction():
        # A SQLAlchemy Connection between transactions: begin one, so that
        # its commit() commits what we write on the DB-API connection.
        obj.begin()
    if fairy is not None and not callable(fairy):
        raw = getattr(fairy, "dbapi_connection", None) or getattr(fairy, "driver_connection", None)
        if raw is None:
            raw = getattr(fairy, "connection", None)
        if raw is not None:
            return raw
    if hasattr(obj, "cursor") and hasattr(obj, "commit"):
        return obj
    raise UsageError(
        f"cannot push on {type(obj).__name__!r}: pass a psycopg2 connection, or a "
        "SQLAlchemy Connection or Session"
    )


class Connection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers the statements it prepared."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


class Database:
    """A pool of connections to one database, safe across ``fork()`` and threads.

    :param dsn: libpq connection string.
    :param max_connections: most connections open at once in this process;
        a caller waits when all are lent.
    :param application_name: shown in ``pg_stat_activity``, followed by
        ``:<pid>`` of the connecting process (unless the DSN sets one).
    """

    def __init__(
        self, dsn: str, *, max_connections: int = 10, application_name: str = "flask_pgtq"
    ) -> None:
        params = parse_dsn(dsn)
        self._secrets = (params.get("password", ""),)
        self._dsn = dsn
        self._application_name = params.get("application_name")
        self._role = application_name
        self._max = max_connections
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[Any] = []
        self._slots = threading.BoundedSemaphore(max_connections)
        _pools.add(self)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What error messages about this database must never show (the
        password)."""
        return self._secrets

    def __repr__(self) -> str:
        return f"<Database pid={self._pid} max_connections={self._max}>"

    def connect(self, **options: Any) -> Any:
        """Open a new connection that the caller owns and closes.

        Autocommit is on: one statement is one round trip.  Errors are
        translated to :class:`~flask_pgtq.DatabaseError`.
        """
        try:
            name = self._application_name or f"{self._role}:{os.getpid()}"
            conn = psycopg2.connect(
                self._dsn, application_name=name, connection_factory=Connection, **options
            )
        except psycopg2.Error as exc:
            raise translate(exc, self._secrets) from None
        conn.autocommit = True
        return conn

    def _idle_list(self) -> list[Any]:
        """This process's idle connections; starts afresh after a fork."""
        with self._lock:
            if self._pid != os.getpid():
                # Forked: keep the parent's connections alive and unused.
                _orphans.extend(self._idle)
                self._idle = []
                self._slots = threading.BoundedSemaphore(self._max)
                self._pid = os.getpid()
            return self._idle

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """Lend a pooled autocommit connection to this thread for the block.

        At most ``max_connections`` are lent at once; further callers wait.
        A connection is either healthy or discarded: one that broke, was
        left inside a transaction, or was lent to a block that raised
        (whatever the error: a cancelled statement, a refused value, a
        caller's own exception) is closed rather than returned, so no
        half-known state (an aborted transaction, prepared statements the
        server kept) reaches the next borrower.  Driver errors raised in the
        block come out as :class:`~flask_pgtq.DatabaseError`.
        """
        idle = self._idle_list()
        slots = self._slots
        slots.acquire()
        conn = None
        healthy = False
        try:
            conn = self._take_idle(idle)
            if conn is None:
                conn = self.connect()
            try:
                yield conn
            except psycopg2.Error as exc:
                raise translate(exc, self._secrets) from exc
            healthy = True
        finally:
            if conn is not None:
                self._give_back(conn, idle, healthy)
            slots.release()

    def _take_idle(self, idle: list[Any]) -> Any:
        """An idle connection that is still alive, or ``None``.

        ``poll()`` reads without blocking: a connection the server closed
        (restart, ``pg_terminate_backend``) fails here and is dropped, so
        callers don't pay one error per stale pooled connection.
        """
        while True:
            with self._lock:
                if not idle:
                    return None
                conn = idle.pop()
            try:
                # The server's goodbye (a FATAL message) and the end of the
                # stream may need a read each.
                for _ in range(3):
                    conn.poll()
                    if not select.select([conn], [], [], 0)[0]:
                        break
                conn.notifies.clear()
                return conn
            except psycopg2.Error:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()

    def _give_back(self, conn: Any, idle: list[Any], healthy: bool) -> None:
        reusable = (
            healthy
            and not conn.closed
            and conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )
        if reusable and idle is self._idle:
            with self._lock:
                idle.append(conn)
        elif idle is self._idle or self._pid == os.getpid():
            # Broken, or lent before close(): closed.  (A connection of the
            # parent, given back in a forked child, is left alone.)
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def close(self) -> None:
        """Close every pooled connection of this process: idle ones now,
        lent ones when they are given back.  Idempotent; the pool opens new
        connections if it is used again."""
        with self._lock:
            if self._pid == os.getpid():
                for conn in self._idle:
                    with contextlib.suppress(psycopg2.Error):
                        conn.close()
            self._idle = []
