"""Showing tasks to people: one-line error summaries, times, ages, durations,
JSON, and text made safe for a terminal.  Shared by the command line and the
dashboard; no Flask here."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from .exceptions import InvalidRequest
from .task import COLUMNS, State, Task

_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(: .*)?")


def error_summary(text: str | None) -> str | None:
    """One line that says what went wrong: for a traceback, the exception
    line (``ValueError: nope``, even when more lines follow it); otherwise
    the last non-blank line."""
    if not text:
        return None
    lines = text.rstrip().splitlines()
    frames = [
        i for i, line in enumerate(lines) if line.startswith(("Traceback (most recent", '  File "'))
    ]
    if frames:
        for line in lines[frames[-1] + 1 :]:
            if line and not line[0].isspace() and _EXCEPTION_LINE.fullmatch(line):
                return line.strip()
    stripped = [line.strip() for line in lines if line.strip()]
    return stripped[-1] if stripped else None


def jsonable(value: Any) -> Any:
    """*value* with datetimes as ISO 8601 strings, for ``json.dumps``."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def task_as_json(task: Task) -> dict[str, Any]:
    """Every column of *task*, JSON-ready."""

    row: dict[str, Any] = jsonable({name: _plain(getattr(task, name)) for name in COLUMNS})
    return row


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, State) else value


#: How history entries' ``state`` reads for people: an attempt recorded as
#: ``queued`` failed and was retried; ``lost`` was rescued after its worker
#: died; ``manual_retry`` marks :meth:`Admin.retry`.
HISTORY_LABELS = {"queued": "retried", "manual_retry": "manual retry", "lost": "lost"}


def history_label(state: str | None) -> str:
    """What a history entry's *state* means, in a word or two."""
    return HISTORY_LABELS.get(state or "", state or "-")


def format_time(value: datetime | str | None) -> str:
    """``2024-05-01 12:03:04Z`` (UTC), or ``-``.  Takes a datetime or an ISO
    8601 string (as the timestamps in ``history`` are)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_age(seconds: float | None) -> str:
    """A short human age: ``"45s"``, ``"3m 12s"``, ``"2h 5m"``, ``"3d 4h"``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def format_duration(seconds: float | None) -> str:
    """A run time: ``"12ms"``, ``"4.25s"``, then as :func:`format_age`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{max(0.0, seconds) * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    return format_age(seconds)


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"``
    or a sum such as ``"1h30m"``.

    :raises ValueError: anything else.
    """
    pos, total = 0, 0.0
    text = text.strip()
    if not text:
        raise InvalidRequest("empty duration")
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None or match.end() == pos:
            raise InvalidRequest(
                f"not a duration: {text!r} (use seconds or e.g. 90s, 15m, 12h, 7d, 2w)"
            )
        total += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    return total


def dumps(value: Any) -> str:
    """Pretty JSON for people (arguments, results, progress).

    A :class:`Unshown` placeholder is shown as it is, not as a JSON string;
    a value nested too deeply to encode is shown as one.
    """
    if isinstance(value, Unshown):
        return str(value)
    try:
        return json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=False)
    except RecursionError:
        return str(Unshown.too_deep(None))


class Unshown(str):
    """What people see instead of a stored JSON value that cannot be shown,
    e.g. ``<JSON nested too deeply to show, 10000 bytes>``."""

    @classmethod
    def too_deep(cls, size: int | None) -> Unshown:
        """The placeholder for a value nested deeper than Python decodes;
        *size* is its JSON text's length in bytes, when known."""
        if size is None:
            return cls("<JSON nested too deeply to show>")
        return cls(f"<JSON nested too deeply to show, {size} bytes>")


def loads_for_display(text: str) -> Any:
    """Decode stored JSON to show it: like :func:`json.loads`, but JSON
    nested deeper than Python's recursion limit (PostgreSQL's ``jsonb``
    accepts it) gives an :class:`Unshown` placeholder instead of a
    :class:`RecursionError`."""
    try:
        return json.loads(text)
    except RecursionError:
        return Unshown.too_deep(len(text.encode()))


# Characters that move the cursor, change colours, set the window title,
# ring the bell or reorder text when printed to a terminal: C0 controls, DEL,
# C1 controls (0x9b is a one-byte CSI), Unicode line/paragraph separators and
# bidirectional overrides.  Newline and tab are allowed in multi-line text.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_LINE = re.compile(f"[{_UNSAFE}\t\n]")
_UNSAFE_MULTILINE = re.compile(f"[{_UNSAFE}]")


def printable(text: str, *, multiline: bool = False) -> str:
    """*text* (from a task: its name, error, arguments...) safe to print to a
    terminal: every control character written as an escape (``\\x1b``,
    ``\\x9b``, ``\\u202e``), so no stored text can drive the terminal.

    :param multiline: keep newlines and tabs (a traceback); otherwise they
        are escaped too, so the text stays on one line (a table cell).
    """
    pattern = _UNSAFE_MULTILINE if multiline else _UNSAFE_LINE
    return pattern.sub(_escape, text)


def printable_json(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) safe to print
    to a terminal: the control characters :func:`json.dumps` leaves as they
    are (DEL, C1, separators, bidirectional overrides) as ``\\u`` escapes,
    so the text still decodes to the same value."""
    # Newlines and tabs in strings are escaped already; the others are layout.
    return _UNSAFE_MULTILINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
