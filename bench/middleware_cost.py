"""What middleware and the OpenTelemetry hooks cost per task, in Python alone.

    python bench/middleware_cost.py [--tasks 10000] [--repeat 5]

Times two paths that need no database, for each setup, and the hooks alone:

* ``run``: :meth:`Runner.execute <flask_pgtq.runner.Runner.execute>`, a
  worker's whole attempt in a handler thread (argument check, fresh app
  context, ``task_started``, middleware, the handler, the result encoded);
* ``eager``: a push with ``PGTQ_EAGER`` (arguments encoded, the push hook,
  middleware, the handler);
* ``hooks``: what flask_pgtq adds per task for middleware and tracing, alone
  (the middleware chain around a call that does nothing, and the push hook
  around an insert that does nothing), in nanoseconds: on a busy machine the
  two paths above vary by more than that.

Setups, each in a fresh interpreter so that none sees another's imports:

* ``no otel``: the opentelemetry package cannot be imported, no middleware;
* ``empty mw``: the same, with one ``@q.middleware`` that only calls on;
* ``otel, no provider``: opentelemetry-api importable, no tracer provider set
  (tracing off: what every app that has the package but does not trace pays);
* ``otel + sdk``: the SDK's tracer provider, with no span processor (spans
  are made, then dropped): what tracing itself costs.

Prints microseconds per task, the best of ``--repeat`` rounds of ``--tasks``.
Needs Flask and flask_pgtq; the last setups need opentelemetry-api/-sdk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("no otel", "empty mw", "otel, no provider", "otel + sdk")


def measure(setup: str, tasks: int, repeat: int) -> dict[str, float]:
    """Run in the child: microseconds per task for each path."""
    if setup in ("no otel", "empty mw"):
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import fails
    sys.path.insert(0, str(ROOT))
    from flask import Flask

    from flask_pgtq import PgTq, State, Task, middleware, tracing

    if setup == "otel + sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
    expect = setup == "otel + sdk"
    assert tracing.active() is expect, f"{setup}: tracing.active() is {tracing.active()}"

    app = Flask("bench")
    app.config.update(PGTQ_DSN="dbname=unused", PGTQ_EAGER=True)
    q = PgTq(app)
    if setup == "empty mw":

        @q.middleware
        def empty(task: Task, call_next: object) -> object:
            return call_next()  # type: ignore[operator]

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    results = {}
    with app.app_context():
        runner = q.app_queue().runner
        task = Task(1, "add", "default", [1, 2], {}, State.RUNNING, attempts=1, max_attempts=3)

        def run() -> None:
            outcome = runner.execute(task)
            assert outcome.state is State.SUCCEEDED

        def eager() -> None:
            assert add.push(1, 2).result == 3

        layers = runner.middleware

        def hooks() -> None:
            middleware.run_through(task, nothing, layers, ())
            tracing.push(nothing_with, "add", "default")

        for name, call, times in (
            ("run", run, tasks),
            ("eager", eager, tasks),
            ("hooks", hooks, 10 * tasks),
        ):
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                for _ in range(times):
                    call()
                best = min(best, time.perf_counter() - started)
            results[name] = best / times * 1e6
    return results


def nothing() -> None:
    """A handler call that does nothing."""


def nothing_with(meta: str | None) -> None:
    """An insert that does nothing."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--setup", help=argparse.SUPPRESS)  # the child's
    opts = parser.parse_args()
    if opts.setup:
        print(json.dumps(measure(opts.setup, opts.tasks, opts.repeat)))
        return 0
    print(f"{'setup':<20} {'run µs/task':>12} {'eager µs/task':>14} {'hooks ns/task':>14}")
    for setup in SETUPS:
        child = subprocess.run(
            [sys.executable, __file__, "--setup", setup, "--tasks", str(opts.tasks),
             "--repeat", str(opts.repeat)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            reason = (child.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"{setup:<20} skipped: {reason}")
            continue
        result = json.loads(child.stdout)
        print(
            f"{setup:<20} {result['run']:>12.2f} {result['eager']:>14.2f} "
            f"{result['hooks'] * 1000:>14.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
