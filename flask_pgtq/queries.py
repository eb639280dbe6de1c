"""Named SQL, loaded from ``sql/queries.sql``.

A block starts with ``-- name: some_name`` and runs to the next one.
Parameters are written ``%(name)s``; identifiers never come from users.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a file of named blocks into ``{name: sql}``."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@cache
def _all() -> dict[str, str]:
    text = resources.files("flask_pgtq").joinpath("sql/queries.sql").read_text("utf-8")
    return parse(text)


def get(name: str) -> str:
    """The SQL of the block called *name*."""
    return _all()[name]
