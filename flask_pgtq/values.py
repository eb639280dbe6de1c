"""Value types that several modules share: how tasks are inserted
(:class:`PushOptions`, :class:`Insert`), a handler's limits (:class:`Limit`)
and what an attempt came to (:class:`Outcome`).  No I/O here; imports point
from the modules that use them to this one, never back.
"""

from __future__ import annotations

import json
import json.encoder
import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import codec
from .config import seconds, validate_name, validate_tags, whole_number
from .exceptions import ConfigurationError
from .middleware import Middleware, checked
from .task import State, Task

if TYPE_CHECKING:
    from .config import Config

#: A str as a JSON string literal (the C encoder ``json.dumps`` uses).
_json_string = json.encoder.encode_basestring_ascii


@dataclass(frozen=True)
class HandlerOptions:
    """How a handler's tasks are pushed by default and run: the options of
    :meth:`PgTq.handler <flask_pgtq.PgTq.handler>` (see it for each one),
    validated.  ``None`` means: the app's default."""

    queue: str | None = None
    max_attempts: int | None = None
    priority: int = 0
    retry_backoff: float | None = None
    timeout: float | None = None
    concurrency: int | None = None
    rate_limit: str | None = None
    isolated: bool = False
    max_snoozes: int = 100
    key_concurrency: int | None = None
    key_rate_limit: str | None = None
    middleware: tuple[Middleware, ...] = ()
    #: Tags every task of the handler gets (a push's come after them).
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        whole_number(self.max_snoozes, "max_snoozes", minimum=0)
        set_ = object.__setattr__
        set_(self, "middleware", checked(self.middleware, "middleware"))
        set_(self, "tags", validate_tags(self.tags))
        if self.retry_backoff is not None:
            set_(self, "retry_backoff", seconds(self.retry_backoff, "retry_backoff"))
        if self.timeout is not None:
            set_(self, "timeout", seconds(self.timeout, "timeout"))
            if self.timeout == 0:
                raise ConfigurationError("timeout must be > 0")
        if not isinstance(self.isolated, bool):
            raise ConfigurationError(f"isolated must be True or False, not {self.isolated!r}")
        if self.isolated and not hasattr(os, "fork"):
            raise ConfigurationError("isolated=True needs os.fork(), which this platform lacks")
        # Checked here, built per handler name by limit().
        self.limit("handler")
        self.push_defaults()

    def limit(self, name: str) -> Limit | None:
        """The limits of handler *name* across all workers, or ``None``."""
        return Limit.build(
            name, self.concurrency, self.rate_limit, self.key_concurrency, self.key_rate_limit
        )

    def push_defaults(self) -> PushOptions:
        """The push options a handler's tasks get unless a push says otherwise."""
        return PushOptions.build(
            queue=self.queue,
            priority=self.priority,
            max_attempts=self.max_attempts,
            tags=self.tags,
        )


@dataclass(frozen=True)
class PushOptions:
    """How a task is pushed.  ``None`` means: the handler's (or app's) default."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    delay: float = 0.0
    eta: datetime | None = None
    unique_key: str | None = None
    unique_for: float | None = None
    #: The task's key for per-key limits (``key_concurrency``,
    #: ``key_rate_limit`` of its handler), e.g. ``"account:42"``.
    key: str | None = None
    #: What a push does when a queued task holds its unique key: ``"keep"``
    #: (return that task) or ``"replace"`` (update its arguments and run time).
    on_conflict: str = "keep"
    #: Ids of the tasks that must end first (``after=``).
    after: tuple[int, ...] = ()
    #: Run even when a parent failed or was cancelled (instead of being
    #: cancelled with it).
    run_on_failure: bool = False
    #: The task's tags (see :func:`~flask_pgtq.config.validate_tags`).
    tags: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        unique_key: str | None = None,
        unique_for: float | timedelta | None = None,
        on_conflict: str = "keep",
        debounce: float | timedelta | None = None,
        key: str | None = None,
        after: Any = None,
        run_on_failure: bool = False,
        tags: Any = None,
    ) -> PushOptions:
        """Validate options given by a caller.  ``debounce=N`` is
        ``on_conflict="replace"`` with ``delay=N``: the task runs N seconds
        after the last push of its key."""
        if on_conflict not in ("keep", "replace"):
            raise ConfigurationError(
                f"on_conflict must be 'keep' or 'replace', not {on_conflict!r}"
            )
        if (on_conflict == "replace" or debounce is not None) and unique_key is None:
            raise ConfigurationError("on_conflict='replace' and debounce need a unique_key")
        if debounce is not None:
            if delay is not None or eta is not None:
                raise ConfigurationError("debounce is a delay: give no delay or eta with it")
            delay = seconds(debounce, "debounce")
            on_conflict = "replace"
        if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
            raise ConfigurationError(f"unique_key must be a non-empty string, not {unique_key!r}")
        if unique_key is not None and len(unique_key) > 1000:
            raise ConfigurationError("unique_key must be at most 1000 characters")
        if unique_key is not None and codec.storable_text(unique_key) != unique_key:
            raise ConfigurationError(
                "unique_key must not hold NUL characters or lone surrogates, "
                f"not {codec.storable_text(unique_key)!r}"
            )
        unique_seconds = None
        if unique_for is not None:
            if unique_key is None:
                raise ConfigurationError("unique_for needs a unique_key")
            unique_seconds = seconds(unique_for, "unique_for")
        if queue is not None:
            validate_name(queue, "queue")
        if priority is not None:
            whole_number(priority, "priority")
        if max_attempts is not None:
            whole_number(max_attempts, "max_attempts", minimum=1)
        delay_seconds = 0.0 if delay is None else seconds(delay, "delay")
        if eta is not None:
            if not isinstance(eta, datetime):
                raise ConfigurationError(f"eta must be a datetime, not {eta!r}")
            if eta.tzinfo is None or eta.utcoffset() is None:
                raise ConfigurationError(
                    "eta must be an aware datetime (with tzinfo), e.g. "
                    "datetime.now(timezone.utc) + timedelta(minutes=5)"
                )
            if delay is not None:
                raise ConfigurationError("give delay or eta, not both")
        parents = task_ids(after)
        if parents and unique_key is not None:
            raise ConfigurationError("after cannot be combined with unique_key")
        if not isinstance(run_on_failure, bool):
            raise ConfigurationError(
                f"run_on_failure must be True or False, not {run_on_failure!r}"
            )
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > 200:
                raise ConfigurationError(
                    f"key must be a string of 1 to 200 characters, not {key!r}"
                )
            if codec.storable_text(key) != key:
                raise ConfigurationError("key must not hold NUL characters or lone surrogates")
        return cls(
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            delay=delay_seconds,
            eta=eta,
            unique_key=unique_key,
            unique_for=unique_seconds,
            key=key,
            on_conflict=on_conflict,
            after=parents,
            run_on_failure=run_on_failure,
            tags=() if tags is None else validate_tags(tags),
        )

    def over(self, base: PushOptions) -> PushOptions:
        """These options, with what they leave unset taken from *base* (a
        handler's defaults, a signature's options); the tags are *base*'s,
        then these."""
        return replace(
            self,
            queue=self.queue or base.queue,
            priority=base.priority if self.priority is None else self.priority,
            max_attempts=self.max_attempts or base.max_attempts,
            tags=validate_tags((*base.tags, *self.tags)),
        )

    def insert(self, name: str, config: Config, limit: Limit | None = None) -> Insert:
        """How to insert tasks of handler *name* (whose limits are *limit*),
        app defaults filled in."""
        return Insert(
            name=name,
            queue=self.queue or config.queue,
            max_attempts=self.max_attempts or config.max_attempts,
            priority=self.priority or 0,
            delay=self.delay,
            run_at=self.eta,
            unique_key=self.unique_key,
            unique_for=self.unique_for,
            replace=self.on_conflict == "replace",
            key=self.key,
            tags=self.tags,
            limited=held_back(limit, self.key),
        )


#: Range of a PostgreSQL ``bigint``: task ids.
BIGINT_MAX = 2**63 - 1


def task_ids(tasks: Any) -> tuple[int, ...]:
    """The ids of *tasks* (an iterable of :class:`~flask_pgtq.Task` or ids),
    for ``after=``; each once, in the order given."""
    if tasks is None:
        return ()
    if isinstance(tasks, (Task, int, str, bytes)):
        raise ConfigurationError(
            f"after must be a list of tasks or task ids, not {type(tasks).__name__}"
        )
    try:
        items = list(tasks)
    except TypeError:
        raise ConfigurationError(
            f"after must be a list of tasks or task ids, not {type(tasks).__name__}"
        ) from None
    ids: list[int] = []
    for item in items:
        task_id = item.id if isinstance(item, Task) else item
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise ConfigurationError(f"after must hold tasks or task ids (integers), not {item!r}")
        if not 1 <= task_id <= BIGINT_MAX:
            raise ConfigurationError(f"after: {task_id} is not a task id")
        if task_id not in ids:
            ids.append(task_id)
    return tuple(ids)


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd])\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Limit:
    """A handler's limits, enforced across all workers.

    :ivar concurrency: most tasks of the handler running at once, or ``None``.
    :ivar rate: most starts per ``period`` seconds, or ``None``.
    """

    name: str
    concurrency: int | None = None
    rate: int | None = None
    period: float | None = None
    #: Most tasks of one key running at once, or ``None``.
    key_concurrency: int | None = None
    #: Most starts of one key per ``key_period`` seconds, or ``None``.
    key_rate: int | None = None
    key_period: float | None = None

    @property
    def by_key(self) -> bool:
        """Whether the handler has limits per key."""
        return self.key_concurrency is not None or self.key_rate is not None

    @property
    def key_only(self) -> bool:
        """Whether the handler is limited per key only: its tasks without a
        key are not limited at all (the plain claim takes them)."""
        return self.by_key and self.concurrency is None and self.rate is None

    @classmethod
    def build(
        cls,
        name: str,
        concurrency: Any,
        rate_limit: Any,
        key_concurrency: Any = None,
        key_rate_limit: Any = None,
    ) -> Limit | None:
        if concurrency is not None:
            whole_number(concurrency, "concurrency", minimum=1)
        if key_concurrency is not None:
            whole_number(key_concurrency, "key_concurrency", minimum=1)
        rate, period = _rate(rate_limit, "rate_limit")
        key_rate, key_period = _rate(key_rate_limit, "key_rate_limit")
        if concurrency is None and rate is None and key_concurrency is None and key_rate is None:
            return None
        return cls(name, concurrency, rate, period, key_concurrency, key_rate, key_period)


def _rate(text: Any, what: str) -> tuple[int | None, float | None]:
    """``(starts, period in seconds)`` of a rate such as ``"10/m"``."""
    if text is None:
        return None, None
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match[1]) < 1 or match[2] in (".",):
        raise ConfigurationError(
            f"{what} must look like '10/m' (per s, m, h or d; also '5/10s'), not {text!r}"
        )
    period = float(match[2] or 1) * _UNIT[match[3]]
    if period <= 0:
        raise ConfigurationError(f"{what} period must be > 0: {text!r}")
    return int(match[1]), period


@dataclass
class Outcome:
    """What one attempt came to, ready to be recorded.

    :param state: ``succeeded``, ``failed``, ``cancelled``, or ``queued`` for a retry.
    :param result: the return value, already encoded as JSON text.
    :param delay: seconds before the retry, when ``state`` is ``queued``.
    """

    task: Task
    state: State
    result: str | None = None
    error: str | None = None
    delay: float = 0.0
    duration: float = 0.0
    exception: BaseException | None = None
    #: A snooze (``queued`` without spending the attempt), not a retry.
    snooze: bool = False
    #: :meth:`as_json_text`, once made (not copied by ``dataclasses.replace``).
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.error is not None:
            # An error text is recorded whatever it holds: what PostgreSQL
            # cannot store (NUL, lone surrogates) is shown escaped instead.
            self.error = codec.storable_text(self.error)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.task.id,
            "attempt": self.task.attempts,
            "state": self.state.value,
            "result": self.result,
            "error": self.error,
            "delay": self.delay,
            "snooze": self.snooze,
            "meta": json.dumps(self.task.meta) if self.task.meta_changed else None,
        }

    def as_json_text(self) -> str:
        """:meth:`as_json` as JSON text, made once: a worker's handler thread
        makes it when the attempt ends, so that the thread sending the round
        only joins the texts.  Written out: ``json.dumps`` of the dict cost
        2-3 µs of worker CPU more per outcome.

        A :attr:`~flask_pgtq.Task.meta` changed during the run that is not
        JSON (a middleware's doing) cannot be stored: the stored meta stays,
        and this outcome becomes a failure, without retry, that says why."""
        if self._text is None:
            task = self.task
            meta = "null"
            if task.meta_changed:
                try:
                    meta = _json_string(json.dumps(task.meta))
                except (TypeError, ValueError, RecursionError) as exc:
                    task.meta_changed = False
                    self.error = (
                        f"the task's meta could not be stored as JSON ({exc}); this attempt "
                        f"({self.state.value}) is recorded as failed, without retry"
                    )
                    self.state, self.result, self.delay, self.snooze = State.FAILED, None, 0, False
            delay = float(self.delay)
            if not math.isfinite(delay):
                self._text = json.dumps(self.as_json())
                return self._text
            result, error = self.result, self.error
            self._text = (
                f'{{"id":{int(task.id)},"attempt":{int(task.attempts)},'
                f'"state":"{self.state.value}",'
                f'"result":{"null" if result is None else _json_string(result)},'
                f'"error":{"null" if error is None else _json_string(error)},'
                f'"delay":{delay!r},"snooze":{"true" if self.snooze else "false"},'
                f'"meta":{meta}}}'
            )
        return self._text


@dataclass(frozen=True)
class Insert:
    """Where and how tasks of one handler are inserted (arguments aside)."""

    name: str
    queue: str
    max_attempts: int
    priority: int = 0
    delay: float = 0.0
    run_at: datetime | None = None
    unique_key: str | None = None
    unique_for: float | None = None
    #: A queued task holding the unique key gets these arguments and run
    #: time instead of the push being refused.
    replace: bool = False
    #: The task's key for per-key limits.
    key: str | None = None
    tags: tuple[str, ...] = ()
    #: Only the limited claim may take the tasks (:func:`held_back`).
    limited: bool = False

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "delay": self.delay,
            "run_at": self.run_at,
            "unique_key": self.unique_key,
            "unique_for": self.unique_for,
            "replace": self.replace,
            "key": self.key,
            "tags": list(self.tags),
            "limited": self.limited,
        }


def held_back(limit: Limit | None, key: str | None) -> bool:
    """Whether a task of a handler with *limit* and with *key* is claimed
    only by the limited claim (stored as ``pgtq_tasks.limited``): a task
    without a key of a handler limited per key only is not limited at all."""
    return limit is not None and (key is not None or not limit.key_only)
