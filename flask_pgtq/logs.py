"""Log formatting for workers: ``flask pgtq worker --log-format json``.

The worker logs one line per task outcome on the ``flask_pgtq`` logger, at
INFO for a success and WARNING otherwise, with these ``extra`` fields:
``task_id``, ``task_name``, ``queue``, ``attempt``, ``outcome``
(``succeeded``, ``retrying``, ``failed``, ``cancelled``) and ``duration``
(seconds).  Argument values are never logged: they may hold personal data.

:class:`JsonFormatter` writes each record as one JSON object per line, with
those fields as keys, ready for a log pipeline::

    {"time": "2024-05-01T12:03:04.512Z", "level": "INFO", "logger": "flask_pgtq",
     "message": "task 7 send_email queue=default attempt=1/3 succeeded in 0.012s",
     "task_id": 7, "task_name": "send_email", "queue": "default", "attempt": 1,
     "outcome": "succeeded", "duration": 0.0123}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .exceptions import ConfigurationError

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)

#: The format of text lines.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, every ``extra`` field, and ``exception`` (the
    traceback) when there is one.  Values JSON cannot hold are written with
    ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def make_handler(log_format: str, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) writing *log_format* lines:
    ``"text"`` or ``"json"``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ConfigurationError(f"log format must be 'text' or 'json', not {log_format!r}")
    return handler
