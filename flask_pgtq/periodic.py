"""Periodic tasks: cron schedules that workers turn into tasks.

Every worker that serves a schedule's queue checks it about once a second.
When the schedule's latest fire time changes, the worker inserts a row for
(schedule, fire time) into ``pgtq_periodic`` and, only if that row is new,
the task, in one statement: each fire time makes exactly one task however
many workers run, and whether or not finished tasks are kept.

Missed fire times (no worker running, or all busy): when a worker comes
back it fires the *latest* missed time once, if it is at most
``misfire_grace`` seconds old, and skips the older ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import codec
from .exceptions import ConfigurationError
from .values import held_back

if TYPE_CHECKING:
    from .handler import Handler
    from .queue import TaskStore

log = logging.getLogger("flask_pgtq.worker")

#: Seconds a missed fire time may be late and still run.
DEFAULT_MISFIRE_GRACE = 3600.0
#: Seconds between reloads of the stored schedules (sooner on NOTIFY).
RELOAD_EVERY = 1.0


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('periodic tasks need croniter: pip install "flask_pgtq[cron]"') from exc
    return croniter


@dataclass(frozen=True)
class Schedule:
    """One cron schedule of one handler.

    :ivar key: identifies the schedule in ``pgtq_periodic``: the task name,
        the cron expression, the time zone and the arguments.  Changing any
        of them makes a new schedule.
    """

    key: str
    handler: Handler[Any, Any] = field(repr=False)
    cron: str
    tz: ZoneInfo
    args_json: str
    kwargs_json: str
    misfire_grace: float = DEFAULT_MISFIRE_GRACE

    @classmethod
    def build(
        cls,
        handler: Handler[Any, Any],
        cron: str,
        tz: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> Schedule:
        croniter = _croniter()
        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise ConfigurationError(f"not a valid cron expression: {cron!r}")
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(f"unknown time zone {tz!r}") from None
        try:
            args_json, kwargs_json = codec.encode_arguments(
                handler.name, args, kwargs, max_bytes=2**31
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"periodic task {handler.name!r}: {exc}") from None
        digest = hashlib.sha1(
            json.dumps([handler.name, cron, tz, args_json, kwargs_json]).encode()
        ).hexdigest()[:12]
        return cls(
            f"{handler.name}@{cron}@{tz}#{digest}", handler, cron, zone, args_json, kwargs_json
        )

    def latest_fire(self, now: datetime) -> datetime:
        """The latest fire time at or before *now* (aware, UTC)."""
        local = now.astimezone(self.tz)
        itr = _croniter()(self.cron, local + timedelta(microseconds=1))
        fire: datetime = itr.get_prev(datetime)
        return fire.astimezone(UTC)

    def next_fire(self, now: datetime) -> datetime:
        """The first fire time after *now* (aware, UTC)."""
        itr = _croniter()(self.cron, now.astimezone(self.tz))
        fire: datetime = itr.get_next(datetime)
        return fire.astimezone(UTC)

    def task_params(self, default_queue: str, default_attempts: int) -> dict[str, Any]:
        """The columns of each task this schedule makes."""
        options = self.handler.defaults
        return {
            "queue": options.queue or default_queue,
            "name": self.handler.name,
            "args": self.args_json,
            "kwargs": self.kwargs_json,
            "priority": options.priority or 0,
            "max_attempts": options.max_attempts or default_attempts,
            "tags": list(options.tags),
            # Periodic tasks have no key.
            "limited": held_back(self.handler.limit, None),
        }


class Scheduler:
    """Turns due fire times into tasks, for one worker.

    Fire times are computed on the database's clock (the local clock plus an
    offset measured every minute), so workers agree on them.
    """

    def __init__(
        self,
        store: TaskStore,
        schedules: Sequence[Schedule],
        stored: Callable[[], list[Schedule]] | None = None,
    ) -> None:
        self.store = store
        #: Code schedules.
        self.code = list(schedules)
        #: Every schedule fired: code ones and the stored ones last loaded.
        self.schedules = list(self.code)
        self._load_stored = stored
        self._loaded_at = -1e9
        self._last: dict[str, datetime] = {}
        self._offset = timedelta(0)
        self._measured = -1e9

    def changed(self) -> None:
        """Stored schedules changed (a NOTIFY said so): reload before the
        next tick."""
        self._loaded_at = -1e9

    def _reload(self) -> None:
        if self._load_stored is None or time.monotonic() - self._loaded_at < RELOAD_EVERY:
            return
        self._loaded_at = time.monotonic()
        self.schedules = self.code + self._load_stored()

    def now(self) -> datetime:
        if time.monotonic() - self._measured > 60:
            local = datetime.now(UTC)
            self._offset = self.store.database_now() - local
            self._measured = time.monotonic()
        return datetime.now(UTC) + self._offset

    def tick(self) -> None:
        """Fire every schedule whose latest fire time is new to us."""
        self._reload()
        if not self.schedules:
            return
        now = self.now()
        config = self.store.config
        for schedule in self.schedules:
            fire = schedule.latest_fire(now)
            if self._last.get(schedule.key) == fire:
                continue
            if (now - fire).total_seconds() <= schedule.misfire_grace:
                params = schedule.task_params(config.queue, config.max_attempts)
                task_id = self.store.fire_periodic(schedule.key, fire, params)
                if task_id is not None:
                    log.info(
                        "periodic %s fired for %s: task %s",
                        schedule.handler.name,
                        fire.isoformat(),
                        task_id,
                    )
            self._last[schedule.key] = fire

    def seconds_to_next(self) -> float | None:
        """Seconds until the next fire time of any schedule."""
        waits = [RELOAD_EVERY] if self._load_stored is not None else []
        if self.schedules:
            now = self.now()
            waits += [(s.next_fire(now) - now).total_seconds() for s in self.schedules]
        return min(waits) if waits else None
