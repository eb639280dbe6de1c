"""The README's Quickstart runs as written: the app factory (a ``myapp``
package of three modules) and the one-file ``hello.py``, read from the
README (so the two cannot drift) into a temporary folder, served by Flask's
test client and worked by ``flask --app ... pgtq worker --burst``."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import python_blocks

ROOT = Path(__file__).resolve().parent.parent
#: The DSN as the README writes it; the test's database replaces it.
README_DSN = '"dbname=postgres user=postgres host=localhost"'


def quickstart_files() -> dict[str, str]:
    """The Python blocks of the README section "Quickstart", by file name:
    the comment on a block's first line (``# myapp/tasks.py``), or
    ``hello.py`` for the block the text asks to save as such."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    section = readme.split("\nQuickstart\n----------\n", 1)[1].split("\n.. docs: ", 1)[0]
    section = section.split("\nWithout a PostgreSQL server\n", 1)[0]
    files = {}
    for code in python_blocks(section):
        first = code.splitlines()[0]
        name = first[2:] if first.startswith("# ") and first.endswith(".py") else "hello.py"
        files[name] = code
    return files


@pytest.fixture
def folder(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The Quickstart's files, with the test's DSN, importable from here."""
    for name, code in quickstart_files().items():
        assert README_DSN in code or name in ("myapp/extensions.py", "myapp/tasks.py"), name
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code.replace(README_DSN, repr(dsn)), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in [m for m in sys.modules if m in ("hello", "myapp") or m.startswith("myapp.")]:
        del sys.modules[module]


def burst(folder: Path, app: str) -> str:
    """``flask --app APP pgtq worker --burst`` in *folder*; its output."""
    worker = subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, "pgtq", "worker", "--burst"],
        cwd=folder,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    return worker.stdout + worker.stderr


def test_the_quickstart_has_a_factory_in_three_modules_and_a_one_file_app() -> None:
    files = quickstart_files()
    assert sorted(files) == [
        "hello.py",
        "myapp/__init__.py",
        "myapp/extensions.py",
        "myapp/tasks.py",
    ]
    assert "\nq = PgTq()\n" in files["myapp/extensions.py"]
    assert "from .extensions import q\n" in files["myapp/tasks.py"]
    assert "    q.init_app(app)\n" in files["myapp/__init__.py"]
    assert re.search(r"\nq = PgTq\(app\)", files["hello.py"])


@pytest.mark.slow
def test_the_factory_app_runs_as_written(folder: Path) -> None:
    myapp = importlib.import_module("myapp")
    client = myapp.create_app({"TESTING": True}).test_client()
    pushed = client.get("/add/2/3").get_json()
    assert pushed["state"] == "queued"

    output = burst(folder, "myapp")
    assert "2 + 3 = 5" in output
    shown = client.get(f"/tasks/{pushed['task']}").get_json()
    assert shown == {"state": "succeeded", "result": 5, "error": None}


@pytest.mark.slow
def test_the_one_file_app_runs_as_written(folder: Path, dsn: str) -> None:
    hello = importlib.import_module("hello")
    task_id = hello.app.test_client().get("/add/2/3").get_json()["task"]
    burst(folder, "hello")
    with hello.app.app_context():
        task = hello.q.get_task(task_id)
    assert (task.state, task.result) == ("succeeded", 5)
