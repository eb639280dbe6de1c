"""The docs can't drift from the code: every setting is documented, the
README parts the Sphinx pages include exist, the first command is the
same everywhere it is written, and the README's test command is what CI
runs, with every system package it installs named."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flask_pgtq.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")
DOCS = ROOT / "docs"


def _commented_fields() -> set[str]:
    """Fields of Config preceded by a ``#:`` comment in config.py."""
    source = (ROOT / "flask_pgtq" / "config.py").read_text(encoding="utf-8")
    lines = source.splitlines()
    (config,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "Config"
    ]
    return {
        node.target.id
        for node in config.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and lines[node.lineno - 2].strip().startswith("#:")
    }


def test_every_setting_has_a_doc_comment_for_the_reference() -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    assert names - _commented_fields() == set()


def test_the_readme_names_every_setting() -> None:
    keys = {f"PGTQ_{f.name.upper()}" for f in dataclasses.fields(Config)}
    assert {key for key in keys if f"``{key}``" not in README} == set()


def test_the_readme_parts_the_docs_include_exist() -> None:
    markers = set()
    for page in DOCS.glob("*.rst"):
        found = re.findall(r":(?:start-after|end-before): (\.\. docs: \w+)", page.read_text())
        markers |= set(found)
    assert markers, "the pages include no README part?"
    assert {marker for marker in markers if f"\n{marker}\n" not in README} == set()


def test_the_first_command_is_the_same_in_the_readme_and_the_quickstart() -> None:
    def first_command(text: str) -> str:
        (line,) = [
            line.strip()
            for line in text.splitlines()
            if "pip install" in line and "flask --app example_app run" in line
        ]
        return line

    quickstart = (DOCS / "quickstart.rst").read_text()
    assert first_command(README) == first_command(quickstart)
    assert '".[dev,binary,cron]"' in first_command(README)


def _development_commands() -> list[str]:
    """The literal blocks (``::``) of the README's Development section."""
    section = README.split("\n.. docs: development\n", 1)[1]
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", section)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readmes_test_command() -> None:
    test_command = _development_commands()[0]
    assert test_command == "./run-tests"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f'\n{test_command} "$@"\n' in ci
    assert os.access(ROOT / "run-tests", os.X_OK)
    syntax = subprocess.run(["bash", "-n", str(ROOT / "run-tests")], capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_the_readme_names_every_package_the_tests_need() -> None:
    script = (ROOT / "run-tests").read_text(encoding="utf-8")
    packages = re.findall(r"missing\+=\(([\w.-]+)\)", script)
    assert set(packages) >= {"postgresql", "pgbouncer", "chromium", "python3-venv"}
    (install,) = [line for line in _development_commands() if "apt-get install" in line]
    assert install.split("--no-install-recommends ", 1)[1].split() == packages
    assert [p for p in packages if f"``{p}``" not in README] == []


def test_pre_commit_runs_the_ruff_that_ci_runs() -> None:
    (pinned,) = re.findall(r'"ruff==([\d.]+)"', (ROOT / "setup.py").read_text())
    hooks = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    assert re.findall(r"rev: v([\d.]+)", hooks) == [pinned]
    tox = (ROOT / "tox.ini").read_text(encoding="utf-8")
    assert {"[testenv:style]", "[testenv:typing]", "[testenv:docs]"} <= set(tox.splitlines())


@pytest.mark.slow
def test_the_docs_build_without_warnings(tmp_path: Path) -> None:
    import furo  # noqa: F401  (the test extra installs Sphinx and the theme)
    import sphinx  # noqa: F401

    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
