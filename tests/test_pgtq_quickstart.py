"""PGTQ's quickstart runs as written: the code block of the README's "Coming
from PGTQ" section, read from the README (so the two cannot drift), run line
by line in this process as in a Python shell, with ``worker.main_loop(q)`` in
a real worker process: the same block, run as a script."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flask_pgtq import PgTq, State, Task
from tests.helpers import poll_until, python_blocks, sql_all

ROOT = Path(__file__).resolve().parent.parent
#: The DSN as the README writes it; the test's database replaces it.
README_DSN = '"dbname=q user=postgres"'


def quickstart() -> str:
    """The first Python block of the README section "Coming from PGTQ"."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    section = readme.split("\nComing from PGTQ\n----------------\n", 1)[1]
    return python_blocks(section)[0]


def run_line(statement: ast.stmt, shell: dict[str, Any]) -> Any:
    """Run one statement in *shell*; an expression's value is returned, as a
    Python shell would print it."""
    if isinstance(statement, ast.Expr):
        code = compile(ast.Expression(statement.value), "<quickstart>", "eval")
        return eval(code, shell)
    exec(compile(ast.Module([statement], type_ignores=[]), "<quickstart>", "exec"), shell)
    return None


def test_the_readme_block_is_pgtqs_quickstart() -> None:
    code = quickstart()
    assert code.startswith("from flask_pgtq import PgTq, worker\n")
    assert f"q = PgTq('test_queue', {README_DSN})\n" in code
    for line in (
        "add_numbers(2, 3)",
        "add_numbers.push(2, 3)",
        "worker.main_loop(q)",
        "task = q.pop()",
        '@q.handler(name="sum_task")',
    ):
        assert f"\n{line}\n" in code, line


@pytest.mark.slow
def test_the_pgtq_quickstart_runs_as_written(dsn: str, tmp_path: Path) -> None:
    code = quickstart().replace(README_DSN, repr(dsn))
    script = tmp_path / "pgtq_quickstart.py"
    script.write_text(code, encoding="utf-8")
    statements = ast.parse(code).body
    (worker_at,) = [i for i, s in enumerate(statements) if ast.unparse(s) == "worker.main_loop(q)"]

    # The shell: everything up to the worker.
    shell: dict[str, Any] = {}
    values = [run_line(statement, shell) for statement in statements[:worker_at]]
    q: PgTq = shell["q"]
    assert q.config.queue == "test_queue"
    assert shell["add_numbers"].name == "add_numbers"
    assert 5 in values  # add_numbers(2, 3), run here and now
    (pushed,) = [v for v in values if isinstance(v, Task)]
    assert (pushed.name, pushed.queue, pushed.state) == ("add_numbers", "test_queue", "queued")

    # The worker process: the same block as a script, until SIGTERM.
    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def worker_ran_both() -> bool:
            assert worker.poll() is None, f"the worker exited:\n{_read(log)}"
            rows = sql_all(dsn, "SELECT state FROM pgtq_tasks WHERE name = 'add_numbers'")
            return rows == [("succeeded",)] * 2  # ours and the script's own push

        poll_until(worker_ran_both, 30, 0.05, "the worker to run both pushed tasks")
        done = q.get_task(pushed.id)
        assert (done.state, done.result) == (State.SUCCEEDED, 5)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, _read(log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()

    # The shell again: the rest of the block.
    for statement in statements[worker_at + 1 :]:
        run_line(statement, shell)
    assert shell["task"] is None  # the worker emptied the queue
    renamed = shell["add_numbers"]
    assert renamed.name == "sum_task"
    assert set(q.handlers) == {"add_numbers", "sum_task"}
    assert renamed(2, 3) == 5
    assert renamed.push(2, 3).name == "sum_task"
    popped = q.pop()
    assert isinstance(popped, Task) and popped.name == "sum_task"
    assert popped.run().result == 5
    assert q.pop() is None


def _read(log: Any) -> str:
    log.flush()
    log.seek(0)
    return str(log.read())
