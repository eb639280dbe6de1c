"""Sphinx helpers for the flask_pgtq docs.

``.. pgtq-config::``
    A table of every ``PGTQ_*`` setting, built from the fields of
    :class:`flask_pgtq.config.Config` and their ``#:`` comments, so that the
    reference cannot drift from the code.  A field without a comment is a
    build error.

README includes
    The pages include parts of ``README.rst`` (between its ``.. docs: NAME``
    comments).  Image paths in the README are relative to the repository's
    root; they are rewritten to be relative to ``docs/``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is dataclasses.MISSING:
        return "(required)"
    value = field.default
    if isinstance(value, float) and value >= 86400 and value % 86400 == 0:
        return f"``{value:g}`` ({timedelta(seconds=value).days} days)"
    return f"``{value!r}``"


def config_rows() -> list[tuple[str, str, list[str]]]:
    """(key, default, meaning lines) for every setting, in source order."""
    from flask_pgtq.config import Config

    docs = ModuleAnalyzer.for_module("flask_pgtq.config").find_attr_docs()
    rows = []
    for field in dataclasses.fields(Config):
        doc = [line for line in docs.get(("Config", field.name), []) if line.strip()]
        if not doc:
            raise ValueError(f"flask_pgtq.config.Config.{field.name} has no #: comment")
        rows.append((f"PGTQ_{field.name.upper()}", _default(field), doc))
    return rows


class ConfigTable(SphinxDirective):
    """``.. pgtq-config::``: the table of settings."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        try:
            rows = config_rows()
        except ValueError as exc:
            raise self.error(str(exc)) from None
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 28 14 58",
            "",
            "   * - Key",
            "     - Default",
            "     - Meaning",
        ]
        for key, default, doc in rows:
            lines += [f"   * - ``{key}``", f"     - {default}", f"     - {doc[0]}"]
            lines += [f"       {line}" for line in doc[1:]]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="pgtq-config"), 0, container)
        return container.children


def _readme_paths(
    app: Sphinx, relative_path: Path, parent_docname: str, content: list[str]
) -> None:
    if Path(relative_path).name == "README.rst":
        content[0] = content[0].replace("docs/dashboard.png", "dashboard.png")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("pgtq-config", ConfigTable)
    app.connect("include-read", _readme_paths)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
