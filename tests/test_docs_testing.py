"""The testing page's full setup runs as written: the Flask-SQLAlchemy app,
its ``conftest.py`` and its tests, read from ``docs/testing.rst`` into a
temporary folder and run by pytest in a subprocess, against this session's
PostgreSQL: once with a database per test (``q.drain()`` and a real
worker), once with a transaction per test (``PGTQ_EAGER``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg2.extensions import parse_dsn
from sqlalchemy.engine import URL

from tests.conftest import PgServer
from tests.helpers import python_blocks

ROOT = Path(__file__).resolve().parent.parent
TRANSACTION_VARIANT = "tests/conftest.py, a transaction per test"


def page_files() -> dict[str, str]:
    """The Python blocks of the full setup, by the path on their first line."""
    page = (ROOT / "docs" / "testing.rst").read_text(encoding="utf-8")
    section = page.split("\nA full setup: an app factory with Flask-SQLAlchemy\n", 1)[1]
    files = {}
    for code in python_blocks(section):
        first = code.splitlines()[0]
        assert first.startswith("# "), f"a block without its path: {first!r}"
        files[first[2:]] = code
    return files


def server_url(pg_server: PgServer) -> str:
    params = parse_dsn(pg_server.dsn)
    url = URL.create(
        "postgresql",
        username=params.get("user"),
        password=params.get("password"),
        host=params.get("host"),
        port=int(params["port"]) if params.get("port") else None,
        database=params.get("dbname", "postgres"),
    )
    return url.render_as_string(hide_password=False)


def run_suite(folder: Path, files: dict[str, str], pg_server: PgServer) -> str:
    for name, code in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code, encoding="utf-8")
    env = {
        **os.environ,
        "TEST_DATABASE_URL": server_url(pg_server),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_the_page_has_the_app_both_conftests_and_their_tests() -> None:
    assert sorted(page_files()) == sorted(
        [
            "myapp/extensions.py",
            "myapp/models.py",
            "myapp/tasks.py",
            "myapp/__init__.py",
            "tests/conftest.py",
            "tests/test_signup.py",
            TRANSACTION_VARIANT,
            "tests/test_signup_eager.py",
        ]
    )


@pytest.mark.slow
def test_a_database_per_test(tmp_path: Path, pg_server: PgServer) -> None:
    files = page_files()
    del files[TRANSACTION_VARIANT], files["tests/test_signup_eager.py"]
    output = run_suite(tmp_path, files, pg_server)
    assert re.search(r"\b3 passed\b", output), output


@pytest.mark.slow
def test_a_transaction_per_test(tmp_path: Path, pg_server: PgServer) -> None:
    files = page_files()
    # "Replace the database and app fixtures above with": the later app
    # fixture replaces the first one.
    files["tests/conftest.py"] += "\n\n" + files.pop(TRANSACTION_VARIANT)
    del files["tests/test_signup.py"]
    output = run_suite(tmp_path, files, pg_server)
    assert re.search(r"\b1 passed\b", output), output
