"""Workflows: what a chord costs a drain, and a chain's per-step overhead.

    bench/.venv/bin/python bench/workflows.py [--members 10000] [--repeat 3]

Prints (one PostgreSQL, default settings, ``--burst`` workers):

* the drain rate of a chord of ``--members`` no-op members and its callback,
  by 1 and by 2 worker processes, next to the plain drain of as many no-op
  tasks in the same run (the issue's target: at least 70 % of the plain rate);
* the end-to-end time of a 10-step chain (push to the last step's end), per
  step, median of ``--chains`` chains, against the push-to-start latency of
  three times as many single tasks, interleaved with them (target: the
  per-step overhead at most twice the single-task p50).

A drain's clock runs from the first task's start to the last one's end, as
the database recorded them; the chain's from before the push to the last
step's ``finished_at``.  PostgreSQL at 127.0.0.1:5432 (user postgres, trust;
``BENCH_PG_*`` as in the harness); the database ``bench_workflows`` is
dropped and made again.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

DSN = harness.libpq_dsn("bench_workflows")
APP_DIR = Path("/tmp/bench-workflows-app")

APP = textwrap.dedent(
    """
    from flask import Flask
    from flask_pgtq import PgTq

    app = Flask(__name__)
    app.config["PGTQ_DSN"] = {dsn!r}
    q = PgTq(app)

    @q.handler()
    def noop(n):
        return n

    @q.handler()
    def total(results):
        return len(results)

    @q.handler()
    def step(previous):
        return previous + 1
    """
)


def sql(query: str, params: object = None) -> list[tuple]:
    return harness.sql("bench_workflows", query, params)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{APP_DIR}:{ROOT}"}


def workers(count: int, *args: str) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wfapp", "pgtq", "worker", *args],
            cwd=APP_DIR,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def app_queue():  # noqa: ANN201 - the bench app's queue, in its app context
    sys.path[:0] = [str(APP_DIR), str(ROOT)]
    import wfapp

    return wfapp


def drained(processes: int) -> float:
    """Tasks per second, first start to last end, of what is in the table."""
    sql("CHECKPOINT")
    for proc in workers(processes, "--burst"):
        proc.wait(600)
    ((pending, seconds, done),) = sql(
        "SELECT count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed', 'cancelled')), "
        "extract(epoch FROM max(finished_at) - min(started_at)), count(*) FROM pgtq_tasks"
    )
    assert pending == 0, f"{pending} tasks left"
    return done / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chains", type=int, default=30, help="10-step chains timed")
    opts = parser.parse_args()
    APP_DIR.mkdir(exist_ok=True)
    (APP_DIR / "wfapp.py").write_text(APP.format(dsn=DSN))
    harness.recreate_database("bench_workflows")
    wfapp = app_queue()
    from flask_pgtq import chain, chord

    with wfapp.app.app_context():
        wfapp.q.init_db()
        rates: dict[str, list[float]] = {}
        for i in range(opts.repeat):
            for processes in (1, 2):
                kinds = ["plain", "chord"] if i % 2 == 0 else ["chord", "plain"]
                for kind in kinds:
                    sql("TRUNCATE pgtq_tasks, pgtq_dependencies, pgtq_workflows")
                    if kind == "plain":
                        for start in range(0, opts.members + 1, 1000):
                            end = min(start + 1000, opts.members + 1)
                            wfapp.noop.push_many([(n,) for n in range(start, end)])
                    else:
                        members = [wfapp.noop.s(n) for n in range(opts.members)]
                        chord(members, wfapp.total.s()).push()
                    # Statistics as autovacuum keeps them: a plan made from
                    # those TRUNCATE left read and sorted every queued task
                    # on each claim, plain or chord alike.
                    sql("ANALYZE pgtq_tasks, pgtq_dependencies")
                    rates.setdefault(f"{kind} {processes}", []).append(drained(processes))
        print(f"drain of {opts.members:,} members + callback (median of {opts.repeat}):")
        for processes in (1, 2):
            plain = statistics.median(rates[f"plain {processes}"])
            chord_rate = statistics.median(rates[f"chord {processes}"])
            print(
                f"  {processes} process(es): plain {plain:9,.0f}/s, chord {chord_rate:9,.0f}/s, "
                f"ratio {chord_rate / plain:.0%} (target >= 70%)"
            )
        # A 10-step chain against single push->start latencies, one idle worker.
        sql("TRUNCATE pgtq_tasks, pgtq_dependencies, pgtq_workflows")
        (worker,) = workers(1)
        try:
            time.sleep(2)  # the worker starts (outside the measured window)
            # Interleaved (three singles, then a chain), so that both face
            # the same moments of a machine whose speed drifts.
            latencies = []
            per_step = []
            for n in range(opts.chains):
                for _ in range(3):
                    sent = time.time()
                    task = wfapp.noop.push(n)
                    task.wait(timeout=30)
                    ((started,),) = sql(
                        "SELECT extract(epoch FROM started_at) FROM pgtq_tasks WHERE id = %s",
                        (task.id,),
                    )
                    latencies.append(float(started) - sent)
                    time.sleep(0.02)
                sent = time.time()
                wf = chain(wfapp.step.s(0), *[wfapp.step.s() for _ in range(9)]).push()
                assert wf.wait(timeout=60) == 10
                ((ended,),) = sql(
                    "SELECT extract(epoch FROM max(finished_at)) FROM pgtq_tasks "
                    "WHERE workflow_id = %s",
                    (wf.id,),
                )
                per_step.append((float(ended) - sent) / 10)
                time.sleep(0.02)
        finally:
            worker.terminate()
            worker.wait(30)
        p50 = statistics.median(latencies)
        step = statistics.median(per_step)
        print(
            f"10-step chain: {step * 1000:.2f} ms per step (median of {len(per_step)} chains); "
            f"single push->start p50 {p50 * 1000:.2f} ms (of {len(latencies)}); "
            f"ratio {step / p50:.2f} (target <= 2)"
        )


if __name__ == "__main__":
    main()
