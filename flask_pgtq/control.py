"""Run-time control stored in PostgreSQL: pauses of queues and handlers.

A pause is a row every worker obeys: the claim statements read
``pgtq_pauses`` themselves, so a paused queue or handler is not claimed by
any worker from the moment the pause commits (running tasks finish; pushes
are still accepted).  A timed pause ends by itself: the claim ignores a
pause past its end, and workers remove such rows and wake up.

Stored cron schedules live in :mod:`flask_pgtq.schedules`.  Like the rest
of the core this module does not import Flask.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import queries
from .config import seconds, validate_name
from .connection import Database, translated_errors
from .exceptions import ConfigurationError

#: What can be paused.
KINDS = ("queue", "handler")


@dataclass(frozen=True)
class Pause:
    """A pause in force.

    :ivar kind: ``"queue"`` or ``"handler"``.
    :ivar target: the queue's or the handler's (task) name.
    :ivar reason: why, as given; or ``None``.
    :ivar paused_by: who paused it (``user@host`` for the CLI, or as given).
    :ivar paused_at: when (database time).
    :ivar until: when it ends by itself, or ``None``: until resumed.
    """

    kind: str
    target: str
    reason: str | None
    paused_by: str | None
    paused_at: datetime
    until: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "reason": self.reason,
            "paused_by": self.paused_by,
            "paused_at": self.paused_at.isoformat(),
            "until": self.until.isoformat() if self.until else None,
        }


def target_of(queue: str | None, handler: str | None) -> tuple[str, str]:
    """``(kind, target)`` from the ``queue=`` / ``handler=`` arguments of a
    pause or resume: exactly one of them, a valid name."""
    if (queue is None) == (handler is None):
        raise ConfigurationError("give a queue or a handler to pause or resume (one of them)")
    if queue is not None:
        return "queue", validate_name(queue, "queue")
    assert handler is not None
    return "handler", validate_name(handler, "task name")


def duration_of(until: datetime | timedelta | float | None, now: datetime) -> float | None:
    """Seconds from *now* to *until* (an aware datetime, a timedelta or
    seconds), or ``None`` for no end."""
    if until is None:
        return None
    if isinstance(until, datetime):
        if until.tzinfo is None or until.utcoffset() is None:
            raise ConfigurationError("until must be an aware datetime (with tzinfo)")
        return seconds(max((until - now).total_seconds(), 0.0), "until")
    return seconds(until, "until")


def default_actor() -> str:
    """``user@host`` of this process, recorded as who paused."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not an error
        user = "?"
    return f"{user}@{socket.gethostname()}"


class Control:
    """Pauses of one database.

    :param db: the connection pool.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def _rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute(queries.get(name), params)
            if cur.description is None:
                return []
            columns = [d.name for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def pause(
        self,
        kind: str,
        target: str,
        *,
        duration: float | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> Pause:
        """Pause *target* (a queue or a handler) now, for *duration*
        seconds or until resumed; pausing again replaces the pause."""
        (row,) = self._rows(
            "pause",
            {
                "kind": kind,
                "target": target,
                "seconds": duration,
                "reason": reason,
                "paused_by": by,
            },
        )
        return _pause(row)

    def resume(self, kind: str, target: str) -> bool:
        """End a pause; ``False`` if there was none."""
        return bool(self._rows("resume", {"kind": kind, "target": target}))

    def pauses(self) -> list[Pause]:
        """The pauses in force."""
        return [_pause(row) for row in self._rows("list_pauses", {})]

    def stored_schedules(self) -> list[dict[str, Any]]:
        """The rows of the enabled stored schedules."""
        return [row for row in self._rows("list_schedules", {}) if row["enabled"]]

    def end_pauses(self) -> list[tuple[str, str]]:
        """Remove timed pauses that are over and wake the workers; return
        the ``(kind, target)`` of each."""
        with translated_errors(self.db):
            return [(row["kind"], row["target"]) for row in self._rows("end_pauses", {})]


def _pause(row: dict[str, Any]) -> Pause:
    return Pause(
        row["kind"], row["target"], row["reason"], row["paused_by"], row["paused_at"], row["until"]
    )
