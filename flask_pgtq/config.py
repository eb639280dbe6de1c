"""Settings: every ``PGTQ_*`` key, its default and its validation.

Read once, when the extension is set up; nothing reads the Flask config later.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from .exceptions import ConfigurationError, InvalidName

log = logging.getLogger("flask_pgtq")

#: Queue and task names: printable, no spaces or quotes, at most this long.
MAX_NAME_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9_.:\-/@]+")

_DSN_EXAMPLE = (
    'a libpq connection string, e.g. "postgresql://user@localhost/mydb" '
    'or "dbname=mydb user=postgres host=localhost"'
)
_DEV_HINT = (
    " To try things out without a PostgreSQL server, set PGTQ_DEV_DATABASE = True"
    ' (pip install "flask_pgtq[dev]")'
)


def validate_name(value: Any, what: str) -> str:
    """Return *value* if it is a valid queue or task name, else raise
    :class:`~flask_pgtq.InvalidName`.

    Allowed: 1 to :data:`~flask_pgtq.config.MAX_NAME_LENGTH` characters from
    ``A-Z a-z 0-9 _ . : - / @``.
    Names are always passed to SQL as parameters; this check keeps logs,
    CLI output and the dashboard readable and unambiguous.
    """
    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidName(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(value):
        raise InvalidName(f"{what} {value[:60]!r} may only hold letters, digits and _ . : - / @")
    return value


#: Most characters of one tag, and most tags on one task.
MAX_TAG_LENGTH = 100
MAX_TAGS = 20


def validate_tags(value: Any, what: str = "tags") -> tuple[str, ...]:
    """Return *value* (a list or tuple of tags) as a tuple, each tag once,
    in the order given; else raise :class:`~flask_pgtq.ConfigurationError`.

    A tag is a non-empty string of at most :data:`MAX_TAG_LENGTH` printable
    characters (spaces allowed; no control characters, NUL or lone
    surrogates, so it can be stored as PostgreSQL text); a task has at most
    :data:`MAX_TAGS`.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigurationError(
            f'{what} must be a list of strings, e.g. ["tenant:42", "import"], '
            f"not {type(value).__name__}"
        )
    tags: list[str] = []
    for tag in value:
        if not isinstance(tag, str):
            raise ConfigurationError(f"{what}: a tag must be a string, not {tag!r}")
        if not tag:
            raise ConfigurationError(f"{what}: a tag must not be empty")
        if len(tag) > MAX_TAG_LENGTH:
            raise ConfigurationError(
                f"{what}: tag {tag[:40]!r}... is longer than {MAX_TAG_LENGTH} characters"
            )
        if not tag.isprintable():
            raise ConfigurationError(
                f"{what}: tag {tag!r} holds characters that are not printable "
                "(control characters, NUL, lone surrogates)"
            )
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise ConfigurationError(f"{what}: at most {MAX_TAGS} tags per task, not {len(tags)}")
    return tuple(tags)


def parse_dsn(dsn: Any, key: str = "PGTQ_DSN") -> dict[str, str]:
    """Parse a libpq DSN (URI or ``key=value``), raising an error that names *key*.

    The DSN itself is never quoted in the error: it may hold a password.
    """
    if dsn is None or dsn == "":
        hint = _DEV_HINT if key == "PGTQ_DSN" else ""
        raise ConfigurationError(f"{key} is not set. Set it to {_DSN_EXAMPLE}.{hint}")
    if not isinstance(dsn, str):
        raise ConfigurationError(f"{key} must be a string: {_DSN_EXAMPLE}.")
    from psycopg2.extensions import parse_dsn as libpq_parse

    try:
        return libpq_parse(dsn)
    except Exception:
        raise ConfigurationError(
            f"{key} is not a valid connection string. Set it to {_DSN_EXAMPLE}."
        ) from None


_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")


def libpq_dsn(dsn: Any, key: str = "PGTQ_DSN") -> Any:
    """*dsn* as libpq reads it: a SQLAlchemy URL of PostgreSQL
    (``postgresql+psycopg2://...``, ``postgresql+psycopg://...``) loses its
    driver; any other value is returned as it is, for :func:`parse_dsn` to check.

    :raises ConfigurationError: a URL of another database (``sqlite://``,
        ``mysql://``...), naming *key* and the scheme, never the rest.
    """
    if not isinstance(dsn, str):
        return dsn
    match = _URL_SCHEME.match(dsn)
    if match is None:
        return dsn
    dialect = match[1].partition("+")[0].lower()
    if dialect not in ("postgresql", "postgres"):
        setting = key if key.startswith("PGTQ_") else "PGTQ_DSN"
        raise ConfigurationError(
            f"{key} is a {dialect} URL ({match[1]}://...), and flask_pgtq needs PostgreSQL: "
            f"its queue is a PostgreSQL table. Set {setting} to {_DSN_EXAMPLE}."
        )
    return "postgresql://" + dsn[match.end() :]


def sqlalchemy_dsn(uri: Any) -> str:
    """The libpq DSN of a ``SQLALCHEMY_DATABASE_URI`` (a string or a
    SQLAlchemy ``URL``), for when ``PGTQ_DSN`` is not set.

    :raises ConfigurationError: it is not a PostgreSQL URL.
    """
    render = getattr(uri, "render_as_string", None)
    if render is not None:
        uri = render(hide_password=False)
    if not isinstance(uri, str) or _URL_SCHEME.match(uri) is None:
        raise ConfigurationError(
            f"PGTQ_DSN is not set, and SQLALCHEMY_DATABASE_URI is not a database URL. "
            f"Set PGTQ_DSN to {_DSN_EXAMPLE}."
        )
    try:
        dsn: str = libpq_dsn(uri, "SQLALCHEMY_DATABASE_URI")
    except ConfigurationError as exc:
        raise ConfigurationError(f"PGTQ_DSN is not set, and {exc}") from None
    return dsn


def redact_dsn(dsn: str) -> str:
    """*dsn* with its password replaced by ``***``, for display."""
    try:
        params = parse_dsn(dsn)
    except ConfigurationError:
        return "<invalid DSN>"
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{k}={v}" for k, v in params.items())


#: Longest delay accepted anywhere (a push's ``delay``, ``Retry(delay=...)``,
#: a retry backoff): 100 years, far inside what PostgreSQL's timestamps hold.
MAX_SECONDS = 100 * 365.25 * 24 * 3600


def seconds(value: Any, what: str) -> float:
    """Seconds from a number or a :class:`~datetime.timedelta`: finite,
    ``>= 0`` and at most :data:`MAX_SECONDS`.

    :raises ConfigurationError: naming *what* and the value.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{what} must be seconds or a timedelta, not {value!r}")
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise ConfigurationError(
            f"{what} must be a finite number of seconds from 0 to {MAX_SECONDS:.0f} "
            f"(100 years), not {value!r}"
        )
    return float(value)


def whole_number(value: Any, what: str, *, minimum: int | None = None) -> int:
    """An ``int`` (not a ``bool``) that fits PostgreSQL's ``integer``, at
    least *minimum* when given.

    :raises ConfigurationError: naming *what* and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{what} must be an integer, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{what} must be an integer >= {minimum}, not {value!r}")
    if not -(2**31) <= value < 2**31:
        raise ConfigurationError(f"{what} must fit in 32 bits, not {value!r}")
    return value


def queue_list(queues: str | Iterable[str] | None, default: str) -> list[str]:
    """Queue names from one name, several or ``None`` (*default*), each
    validated, duplicates dropped, order kept."""
    if queues is None:
        return [default]
    if isinstance(queues, str):
        queues = [queues]
    names = [validate_name(q, "queue") for q in queues]
    if not names:
        raise ConfigurationError("give at least one queue")
    return list(dict.fromkeys(names))


def _suggestion(name: str, known: Iterable[str], prefix: str) -> str:
    """``: did you mean PGTQ_MAX_ATTEMPTS?`` for the known setting closest to *name*."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f": did you mean {prefix}{close[0].upper()}?" if close else ""


def _positive(value: Any, key: str, *, number: type = float, zero: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{key} must be a number, not {value!r}")
    if number is int and not float(value).is_integer():
        raise ConfigurationError(f"{key} must be a whole number, not {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{key} must be a finite number, not {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{key} must be {'>= 0' if zero else '> 0'}, not {value!r}")
    return number(value)


@dataclass(frozen=True)
class Config:
    """Validated settings for one app (or one standalone queue).

    Attribute names are the config keys without the ``PGTQ_`` prefix, in
    lower case.  Build one with :meth:`from_mapping`.
    """

    #: libpq connection string of the queue's database, or a SQLAlchemy URL
    #: of PostgreSQL (``postgresql+psycopg2://...``).  Unset in a Flask app:
    #: a PostgreSQL ``SQLALCHEMY_DATABASE_URI``, if there is one.
    dsn: str = field(repr=False)
    #: Connection string for LISTEN, when ``dsn`` goes through a pooler such
    #: as PgBouncer in transaction mode.  Defaults to ``dsn``.
    listen_dsn: str | None = field(default=None, repr=False)
    #: Use LISTEN/NOTIFY to wake workers.  Polling always runs as well.
    listen: bool = True
    #: Queue used by handlers that name none.
    queue: str = "default"
    #: Testing aid: run each task at push time (a push inside a SQLAlchemy
    #: transaction: at its commit), in the pushing thread, in a fresh app
    #: context as a worker would, after a JSON round trip of its arguments;
    #: nothing is stored.  Exceptions propagate to the caller.
    eager: bool = False
    #: Development only: without ``PGTQ_DSN``, start an embedded PostgreSQL
    #: server (the ``dev`` extra, pgserver) in the app's instance folder,
    #: create the tables and set ``PGTQ_DSN`` to it.  Ignored when
    #: ``PGTQ_DSN`` is set.
    dev_database: bool = False
    #: Development only: the process serving requests (``flask run``) also
    #: runs a worker in a thread, started by its first request.
    dev_worker: bool = False
    #: Attempts a task gets, counting the first, unless the handler says otherwise.
    max_attempts: int = 3
    #: Seconds before the first retry; doubled for each further attempt.
    retry_backoff: float = 2.0
    #: Upper bound, in seconds, of the delay between attempts.
    retry_backoff_max: float = 600.0
    #: Seconds a worker waits for news before it polls the table anyway.
    poll_interval: float = 1.0
    #: Seconds a worker's claim on its tasks lasts without a heartbeat.
    #: A killed worker's tasks run again about this long after it died.
    lease: float = 30.0
    #: Seconds between heartbeats; must be well below ``lease``.
    heartbeat_interval: float = 5.0
    #: Seconds a stopping worker lets running tasks finish before it
    #: releases them back to the queue.
    shutdown_grace: float = 30.0
    #: Handler threads per worker process.
    concurrency: int = 1
    #: Most tasks a worker claims ahead of its free threads, so short tasks
    #: need fewer round trips.  Adaptive: a worker prefetches only as many as
    #: its threads get through in about 50 ms (by their mean run time), and
    #: only tasks with an attempt to spare; this caps it for very short
    #: tasks (below 0.05 ms, 1,000 are 50 ms).  0 turns it off.
    prefetch: int = 1000
    #: Seconds a running task that was cancelled gets to stop by itself
    #: (it can check ``current_task.cancel_requested``) before the worker
    #: stops it.
    cancel_grace: float = 5.0
    #: Prepare the push and the worker's claim statements once per
    #: connection (saves parsing and planning each time).  Set it to False
    #: behind PgBouncer in transaction mode, which cannot keep them.
    prepared_statements: bool = True
    #: Largest accepted size, in bytes, of a task's JSON arguments.
    max_payload_bytes: int = 1_000_000
    #: Largest stored size, in bytes, of a handler's JSON return value (and
    #: of its progress); a larger one fails the task with a clear error.
    max_result_bytes: int = 10_000_000
    #: Most pooled connections per process (per app).
    pool_size: int = 10
    #: Where to mount the dashboard, e.g. ``"/pgtq"``; ``None`` (the
    #: default) leaves it out.
    dashboard_url_prefix: str | None = None
    #: Who may use the dashboard: a function ``(request) -> bool`` (or a
    #: response to send instead, such as a redirect to a login page), or
    #: ``"local-only"`` to allow requests from the loopback address only.
    #: Without it the dashboard refuses every request.
    dashboard_auth: Any = field(default=None, repr=False)
    #: Hide the dashboard's actions (retry, cancel, delete) and refuse them.
    dashboard_read_only: bool = False
    #: Serve Prometheus metrics at this path of the app, e.g. ``"/metrics"``
    #: (needs the ``prometheus`` extra); ``None`` serves none.
    metrics_url: str | None = None
    #: Tags that get Prometheus series of their own
    #: (``pgtq_tagged_task_outcomes_total{tag,...}`` and
    #: ``pgtq_tagged_tasks{tag,state}``), e.g. ``["import", "tenant:42"]``.
    #: Only these: a label per tag ever pushed would grow without bound.
    #: Default none.
    metrics_tags: tuple[str, ...] = ()
    #: Format of the worker's log lines: ``"text"`` or ``"json"`` (one JSON
    #: object per line).
    log_format: str = "text"
    #: Seconds succeeded tasks are kept after they finish, then deleted by
    #: the workers; ``None`` keeps them forever.  A number or a timedelta.
    keep_succeeded: float | None = 7 * 24 * 3600.0
    #: Seconds failed and cancelled tasks are kept; ``None``: forever.
    keep_failed: float | None = None
    #: Seconds between a worker's retention passes.
    prune_interval: float = 60.0
    #: Most rows one retention statement deletes.
    prune_batch: int = 500

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], prefix: str = "PGTQ_") -> Config:
        """Read ``PGTQ_*`` keys from *values* (a Flask config or any mapping).

        Unknown ``PGTQ_*`` keys are an error, so a typo does not go unnoticed.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name not in known:
                raise ConfigurationError(f"unknown setting {key}{_suggestion(name, known, prefix)}")
            kwargs[name] = value
        uri = values.get("SQLALCHEMY_DATABASE_URI")
        if "dsn" not in kwargs and prefix == "PGTQ_" and uri:
            kwargs["dsn"] = sqlalchemy_dsn(uri)
            log.info(
                "PGTQ_DSN is not set: the queue uses SQLALCHEMY_DATABASE_URI's database (%s)",
                redact_dsn(kwargs["dsn"]),
            )
        if "dsn" not in kwargs:
            raise ConfigurationError(
                f"{prefix}DSN is not set. Set it to {_DSN_EXAMPLE}.{_DEV_HINT}"
            )
        return cls(**kwargs)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "dsn", libpq_dsn(self.dsn, "PGTQ_DSN"))
        parse_dsn(self.dsn, "PGTQ_DSN")
        if self.listen_dsn is not None:
            set_(self, "listen_dsn", libpq_dsn(self.listen_dsn, "PGTQ_LISTEN_DSN"))
            parse_dsn(self.listen_dsn, "PGTQ_LISTEN_DSN")
        validate_name(self.queue, "PGTQ_QUEUE")
        if not isinstance(self.listen, bool):
            raise ConfigurationError("PGTQ_LISTEN must be True or False")
        if not isinstance(self.prepared_statements, bool):
            raise ConfigurationError("PGTQ_PREPARED_STATEMENTS must be True or False")
        set_(self, "max_attempts", _positive(self.max_attempts, "PGTQ_MAX_ATTEMPTS", number=int))
        for name in ("retry_backoff", "retry_backoff_max"):
            set_(self, name, _positive(getattr(self, name), f"PGTQ_{name.upper()}", zero=True))
        for name in ("poll_interval", "lease", "heartbeat_interval"):
            set_(self, name, _positive(getattr(self, name), f"PGTQ_{name.upper()}"))
        grace = _positive(self.shutdown_grace, "PGTQ_SHUTDOWN_GRACE", zero=True)
        set_(self, "shutdown_grace", grace)
        set_(self, "cancel_grace", _positive(self.cancel_grace, "PGTQ_CANCEL_GRACE", zero=True))
        for name in ("keep_succeeded", "keep_failed"):
            value = getattr(self, name)
            if isinstance(value, timedelta):
                value = value.total_seconds()
            if value is not None:
                value = _positive(value, f"PGTQ_{name.upper()}", zero=True)
            set_(self, name, value)
        set_(self, "prune_interval", _positive(self.prune_interval, "PGTQ_PRUNE_INTERVAL"))
        if not isinstance(self.eager, bool):
            raise ConfigurationError("PGTQ_EAGER must be True or False")
        for name in ("dev_database", "dev_worker"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"PGTQ_{name.upper()} must be True or False")
        set_(self, "prefetch", _positive(self.prefetch, "PGTQ_PREFETCH", number=int, zero=True))
        for name in (
            "concurrency",
            "max_payload_bytes",
            "max_result_bytes",
            "pool_size",
            "prune_batch",
        ):
            set_(self, name, _positive(getattr(self, name), f"PGTQ_{name.upper()}", number=int))
        self._check_operations()
        if self.heartbeat_interval * 2 > self.lease:
            raise ConfigurationError(
                "PGTQ_HEARTBEAT_INTERVAL must be at most half of PGTQ_LEASE "
                f"(got {self.heartbeat_interval} and {self.lease})"
            )

    def _check_operations(self) -> None:
        """The dashboard, metrics and logging settings."""
        for key, path in (
            ("PGTQ_DASHBOARD_URL_PREFIX", self.dashboard_url_prefix),
            ("PGTQ_METRICS_URL", self.metrics_url),
        ):
            if path is not None and (not isinstance(path, str) or not path.startswith("/")):
                raise ConfigurationError(f"{key} must be a path starting with '/', e.g. '/pgtq'")
        auth = self.dashboard_auth
        if auth is not None and auth != "local-only" and not callable(auth):
            raise ConfigurationError(
                "PGTQ_DASHBOARD_AUTH must be a function (request) -> bool, or 'local-only'"
            )
        if not isinstance(self.dashboard_read_only, bool):
            raise ConfigurationError("PGTQ_DASHBOARD_READ_ONLY must be True or False")
        tags = validate_tags(self.metrics_tags, "PGTQ_METRICS_TAGS")
        object.__setattr__(self, "metrics_tags", tags)
        if self.log_format not in ("text", "json"):
            raise ConfigurationError("PGTQ_LOG_FORMAT must be 'text' or 'json'")

    @property
    def effective_listen_dsn(self) -> str:
        """The DSN LISTEN connects to."""
        return self.listen_dsn or self.dsn
