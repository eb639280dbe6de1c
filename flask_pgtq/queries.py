"""Named SQL, loaded from the ``sql/*.sql`` files (migrations aside).

A block starts with ``-- name: some_name`` and runs to the next one.  Names
are unique across all files.
Parameters are written ``%(name)s``; identifiers never come from users.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import resources

from psycopg2 import sql

from .exceptions import PgTqError

#: NOTIFY channels, the names the ``pg_notify`` calls in ``sql/`` use:
#: new tasks (payload: the queue; sent by each statement that queues tasks,
#: once per queue), cancel requests (payload: the task id) and tasks that
#: reached a final state (payload: ids, comma-separated).
NEW_TASKS = "pgtq"
CANCEL_REQUESTS = "pgtq_cancel"
FINISHED = "pgtq_done"
#: Pauses and stored schedules changed (payload: ``pause``, ``resume``,
#: ``schedules``).
CONTROL = "pgtq_control"
CHANNELS = (NEW_TASKS, CANCEL_REQUESTS, FINISHED, CONTROL)

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a file of named blocks into ``{name: sql}``."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise PgTqError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def _all() -> dict[str, str]:
    queries: dict[str, str] = {}
    folder = resources.files("flask_pgtq").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, body in parse(entry.read_text("utf-8")).items():
            if name in queries:
                raise PgTqError(f"query {name!r} is defined in two files")
            queries[name] = body
    return queries


def get(name: str) -> str:
    """The SQL of the block called *name*."""
    return _all()[name]


_PARAM = re.compile(r"%\((\w+)\)s")


@cache
def prepared(name: str) -> tuple[str, str]:
    """``(PREPARE statement, EXECUTE statement)`` for the block *name*.

    The PREPARE text has ``$1, $2...`` for the named parameters, in order of
    first use; the EXECUTE text passes them as ``%(name)s`` again.
    """
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in order:
            order.append(match[1])
        return f"${order.index(match[1]) + 1}"

    body = _PARAM.sub(number, get(name)).replace("%%", "%")
    statement = f"pgtq_{name}"
    arguments = ", ".join(f"%({p})s" for p in order)
    return f"PREPARE {statement} AS {body}", f"EXECUTE {statement}({arguments})"


def listen(channels: Iterable[str]) -> sql.Composed:
    """``LISTEN`` on each of *channels*, identifiers quoted."""
    return sql.Composed(
        [sql.SQL("LISTEN {};").format(sql.Identifier(channel)) for channel in channels]
    )
