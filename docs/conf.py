"""Sphinx configuration of the flask_pgtq docs (``tox -e docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # flask_pgtq, when not installed

from flask_pgtq import __version__  # noqa: E402

project = "flask_pgtq"
author = "the flask_pgtq authors"
copyright = "the flask_pgtq authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "pgtq_docs",
]
exclude_patterns = ["_build"]
templates_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

autodoc_default_options = {"undoc-members": False}

# Every cross-reference must resolve (tox -e docs builds with -W).  The
# standard library's and Flask's pages are not linked (no intersphinx: the
# docs build offline), so references to them are let through, as are the
# type variables of generic signatures.
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(collections\.abc|datetime|pathlib|os|typing|threading)\..*"),
    ("py:class", r"(datetime|dict\[str|Flask|P|R|P\.args|P\.kwargs|Backend|ZoneInfo)"),
    ("py:class", r"flask_pgtq\.(extension|handler)\.[PR]"),
    ("py:class", r"(timedelta|flask_pgtq\.queue\.T|flask_pgtq\.workflow\._Node)"),
    ("py:class", r"flask_pgtq\.(extension|handler|tracing)\.[PRT]"),
    ("py:obj", r"typing\.~?[PR]"),
]

html_theme = "furo"
html_title = f"flask_pgtq {release}"
html_static_path: list[str] = []
# Nothing is loaded from the internet when the pages are read.
html_theme_options = {"sidebar_hide_name": False}
