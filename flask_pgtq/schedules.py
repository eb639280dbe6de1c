"""Cron schedules: those in code (``@q.periodic``) and those stored in the
database, edited at run time (``q.schedules.add(...)``).

Stored schedules are rows of ``pgtq_schedules``.  Every worker reloads them
when one changes (NOTIFY on ``pgtq_control``) and at least every second, and
fires them like code schedules: each (schedule, fire time) makes exactly one
task, however many workers run, with no leader.  Like the rest of the core
this module does not import Flask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import codec, queries
from .config import validate_name
from .exceptions import ConfigurationError, DuplicateHandler, PgTqError, UnknownTask
from .periodic import Schedule

if TYPE_CHECKING:
    from .extension import PgTq
    from .handler import Handler
    from .task import Task

log = logging.getLogger("flask_pgtq.worker")

#: Prefix of a stored schedule's key in ``pgtq_periodic``.
STORED_PREFIX = "db:"


class ScheduleNotFound(PgTqError, LookupError):
    """No stored schedule has this name."""


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule, as :meth:`ScheduleBook.list` shows it.

    :ivar name: the stored schedule's name, or a code schedule's key.
    :ivar source: ``"code"`` (``@q.periodic``) or ``"database"``.
    :ivar next_fire: the next fire time (aware, UTC), ``None`` if disabled.
    :ivar last_fire_at: the last fire time that made a task (stored
        schedules), or ``None``.
    :ivar last_task_id: that task's id, or ``None``.
    """

    name: str
    source: str
    handler: str
    cron: str
    tz: str
    args: list[Any]
    kwargs: dict[str, Any]
    enabled: bool
    next_fire: datetime | None
    last_fire_at: datetime | None = None
    last_task_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        for key in ("next_fire", "last_fire_at"):
            row[key] = row[key].isoformat() if row[key] else None
        return row


def stored_schedule(row: Mapping[str, Any], handler: Handler[Any, Any]) -> Schedule:
    """The :class:`~flask_pgtq.periodic.Schedule` of a ``pgtq_schedules`` row."""
    schedule = Schedule.build(handler, row["cron"], row["tz"], row["args"], row["kwargs"])
    return Schedule(
        STORED_PREFIX + row["name"],
        handler,
        schedule.cron,
        schedule.tz,
        schedule.args_json,
        schedule.kwargs_json,
    )


def stored_for(
    rows: Sequence[Mapping[str, Any]],
    handlers: Mapping[str, Handler[Any, Any]],
    queues: Sequence[str],
    default_queue: str,
    unknown: set[str],
) -> list[Schedule]:
    """The schedules a worker fires among the stored *rows*: those whose
    handler it has, of a queue it serves.  A row naming a handler this
    worker lacks is logged once (its name goes into *unknown*)."""
    found = []
    for row in rows:
        handler = handlers.get(row["handler"])
        if handler is None:
            if row["name"] not in unknown:
                unknown.add(row["name"])
                log.warning(
                    "stored schedule %r names handler %r, which this worker does not have",
                    row["name"],
                    row["handler"],
                )
            continue
        if (handler.defaults.queue or default_queue) not in queues:
            continue
        try:
            found.append(stored_schedule(row, handler))
        except (ConfigurationError, TypeError, ValueError) as exc:
            if row["name"] not in unknown:
                unknown.add(row["name"])
                log.warning("stored schedule %r cannot be used: %s", row["name"], exc)
    return found


class ScheduleBook(Mapping[str, Schedule]):
    """``q.schedules``: the code schedules by key (a read-only mapping), and
    the stored ones through :meth:`add`, :meth:`update`, :meth:`disable`,
    :meth:`enable`, :meth:`remove`, :meth:`run_now` and :meth:`list`.

    A stored schedule is checked when it is stored: its handler must be
    registered in this process, its cron expression and time zone valid,
    its arguments JSON that fits the handler's signature.
    """

    def __init__(self, extension: PgTq) -> None:
        self._extension = extension
        self._code: dict[str, Schedule] = {}

    # -- code schedules ------------------------------------------------------

    def register(self, schedule: Schedule) -> None:
        """Add a code schedule (``@q.periodic`` does)."""
        if schedule.key in self._code:
            raise DuplicateHandler(f"schedule {schedule.key!r} is registered twice")
        self._code[schedule.key] = schedule

    def __getitem__(self, key: str) -> Schedule:
        return self._code[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._code)

    def __len__(self) -> int:
        return len(self._code)

    # -- stored schedules ----------------------------------------------------

    def _rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        db = self._extension.app_queue().db
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute(queries.get(name), params)
            if cur.description is None:
                return []
            columns = [d.name for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def _checked(
        self,
        handler_name: str,
        cron: str,
        tz: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> Schedule:
        handler = self._extension.handlers.get(handler_name)
        if handler is None:
            raise UnknownTask(
                f"no handler is registered for task name {handler_name!r} in this process; "
                "a schedule must name a registered handler"
            )
        try:
            handler.check_arguments(list(args), dict(kwargs))
        except TypeError as exc:
            raise ConfigurationError(
                f"the arguments do not fit handler {handler_name!r}: {exc}"
            ) from None
        return Schedule.build(handler, cron, tz, args, kwargs)

    def add(
        self,
        name: str,
        cron: str,
        handler_name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        tz: str = "UTC",
    ) -> ScheduleInfo:
        """Store a schedule; every worker serving the handler's queue fires
        it from within about a second.

        :raises ConfigurationError: a bad cron expression, time zone, name or
            arguments, or a schedule of that name exists already.
        :raises UnknownTask: no such handler in this process.
        """
        validate_name(name, "schedule name")
        schedule = self._checked(handler_name, cron, tz, args, kwargs or {})
        rows = self._rows(
            "add_schedule",
            {
                "name": name,
                "cron": cron,
                "tz": tz,
                "handler": handler_name,
                "args": schedule.args_json,
                "kwargs": schedule.kwargs_json,
            },
        )
        if not rows:
            raise ConfigurationError(
                f"a schedule named {name!r} exists already: update or remove it"
            )
        return self._info(rows[0])

    def update(
        self,
        name: str,
        *,
        cron: str | None = None,
        handler_name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        tz: str | None = None,
    ) -> ScheduleInfo:
        """Change what a stored schedule runs or when; what is not given
        stays.  Checked like :meth:`add`."""
        current = self._get(name)
        self._checked(
            handler_name or current["handler"],
            cron or current["cron"],
            tz or current["tz"],
            current["args"] if args is None else args,
            current["kwargs"] if kwargs is None else kwargs,
        )
        return self._change(
            name,
            cron=cron,
            tz=tz,
            handler=handler_name,
            args=None if args is None else codec.encode(list(args)),
            kwargs=None if kwargs is None else codec.encode(dict(kwargs)),
        )

    def disable(self, name: str) -> ScheduleInfo:
        """Stop firing a stored schedule (kept, and listed as disabled)."""
        return self._change(name, enabled=False)

    def enable(self, name: str) -> ScheduleInfo:
        """Fire a disabled schedule again, from its next fire time."""
        return self._change(name, enabled=True)

    def remove(self, name: str) -> None:
        """Delete a stored schedule."""
        if not self._rows("remove_schedule", {"name": name}):
            raise ScheduleNotFound(f"no stored schedule named {name!r}")

    def run_now(self, name: str) -> Task:
        """Push the task of a stored (or code) schedule now, besides its
        fire times."""
        code = self._code.get(name)
        if code is not None:
            args, kwargs = json.loads(code.args_json), json.loads(code.kwargs_json)
            return self._extension.push(code.handler.name, *args, **kwargs)
        row = self._get(name)
        return self._extension.push(row["handler"], *row["args"], **row["kwargs"])

    def list(self) -> list[ScheduleInfo]:
        """Every schedule, code ones first, with its next fire time."""
        now = self._extension.app_queue().store.database_now()
        infos = [
            ScheduleInfo(
                key,
                "code",
                s.handler.name,
                s.cron,
                s.tz.key,
                json.loads(s.args_json),
                json.loads(s.kwargs_json),
                True,
                s.next_fire(now),
            )
            for key, s in self._code.items()
        ]
        return infos + [self._info(row, now) for row in self._rows("list_schedules", {})]

    def _get(self, name: str) -> dict[str, Any]:
        for row in self._rows("list_schedules", {}):
            if row["name"] == name:
                return row
        raise ScheduleNotFound(f"no stored schedule named {name!r}")

    def _change(self, name: str, **changes: Any) -> ScheduleInfo:
        params: dict[str, Any] = dict.fromkeys(
            ("cron", "tz", "handler", "args", "kwargs", "enabled")
        )
        params.update(changes, name=name)
        rows = self._rows("update_schedule", params)
        if not rows:
            raise ScheduleNotFound(f"no stored schedule named {name!r}")
        return self._info(rows[0])

    def _info(self, row: Mapping[str, Any], now: datetime | None = None) -> ScheduleInfo:
        next_fire = None
        if row["enabled"]:
            handler = self._extension.handlers.get(row["handler"])
            if handler is not None:
                if now is None:
                    now = self._extension.app_queue().store.database_now()
                next_fire = stored_schedule(row, handler).next_fire(now)
        return ScheduleInfo(
            row["name"],
            "database",
            row["handler"],
            row["cron"],
            row["tz"],
            row["args"],
            row["kwargs"],
            row["enabled"],
            next_fire,
            row.get("last_fire_at"),
            row.get("last_task_id"),
        )
