"""Per-key limits: what they cost a drain, and a claim with many idle keys.

    bench/.venv/bin/python bench/keys.py [--tasks 20000] [--keys 1000] [--repeat 3]

Prints, for one worker process at default settings (2 handler threads):

* the drain rate of ``--tasks`` no-op tasks of a plain handler;
* the same number spread over ``--keys`` keys of a handler with
  ``key_concurrency=1`` (the issue's target: at least 60 % of the plain
  rate, measured side by side, repeats interleaved);
* the time of one key-limited claim with 100,000 idle keys (finished tasks
  with distinct keys started within the rate window) and a few ready tasks,
  against the same claim with none.

A drain's clock runs from the first task's start to the last one's end, as
the database recorded them.  PostgreSQL at 127.0.0.1:5432 (user postgres,
trust; ``BENCH_PG_*`` as in the harness); the database ``bench_keys`` is
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

DSN = harness.libpq_dsn("bench_keys")

APP = textwrap.dedent(
    """
    from flask import Flask
    from flask_pgtq import PgTq

    app = Flask(__name__)
    app.config["PGTQ_DSN"] = {dsn!r}
    q = PgTq(app)

    @q.handler()
    def plain(n):
        pass

    @q.handler(key_concurrency=1)
    def keyed(n):
        pass

    @q.handler(key_rate_limit="100/m")
    def rated(n):
        pass
    """
)


def sql(query: str, params: object = None) -> list[tuple]:
    return harness.sql("bench_keys", query, params)


def fresh_database(app_dir: Path) -> None:
    harness.recreate_database("bench_keys")
    flask(app_dir, "pgtq", "init-db")


def flask(app_dir: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{app_dir}:{ROOT}"}
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "keysapp", *args],
        cwd=app_dir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def drain(app_dir: Path, name: str, tasks: int, keys: int | None) -> float:
    """Push *tasks* (over *keys* keys), drain them with one burst worker;
    tasks per second from the first start to the last end."""
    sql("TRUNCATE pgtq_tasks")
    key = "NULL" if keys is None else f"'k' || mod(g, {keys})"
    # As a push marks them: tasks with a key of a handler limited per key
    # wait for the limited claim.
    sql(
        f"INSERT INTO pgtq_tasks (queue, name, args, key, limited) "
        f"SELECT 'default', %s, jsonb_build_array(g), {key}, {key} IS NOT NULL "
        f"FROM generate_series(1, %s) g",
        (name, tasks),
    )
    sql("CHECKPOINT")
    flask(app_dir, "pgtq", "worker", "--burst")
    ((done, seconds),) = sql(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'), "
        "extract(epoch FROM max(finished_at) - min(started_at)) FROM pgtq_tasks"
    )
    assert done == tasks, f"{name}: {done} of {tasks} succeeded"
    return tasks / float(seconds)


def claim_cost(app_dir: Path, idle: int) -> float:
    """Milliseconds of one rate-limited claim with *idle* keys in history."""
    sys.path[:0] = [str(app_dir), str(ROOT)]
    from flask_pgtq import PgTq

    sql("TRUNCATE pgtq_tasks")
    sql(
        "INSERT INTO pgtq_tasks (queue, name, args, key, state, started_at, finished_at, "
        "attempts) SELECT 'default', 'rated', '[]', 'idle' || g, 'succeeded', now(), now(), 1 "
        "FROM generate_series(1, %s) g",
        (idle,),
    )
    sql(
        "INSERT INTO pgtq_tasks (queue, name, args, key, limited) "
        "SELECT 'default', 'rated', '[]', 'busy' || g, true FROM generate_series(1, 10) g"
    )
    sql("ANALYZE pgtq_tasks")
    q = PgTq(dsn=DSN)

    @q.handler(key_rate_limit="100/m")
    def rated() -> None:
        pass

    store = q.app_queue().store
    limit = q.handlers["rated"].limit
    assert limit is not None
    store.register_owner("00000000-0000-0000-0000-000000000001")
    times = []
    for _ in range(20):
        sql("UPDATE pgtq_tasks SET state = 'queued', locked_by = NULL WHERE key LIKE 'busy%%'")
        start = time.perf_counter()
        got = store.finish_and_claim(
            "00000000-0000-0000-0000-000000000001", [], "default", 1, [limit], None, 0
        )[1]
        times.append(time.perf_counter() - start)
        assert got, "nothing claimed"
    q.close()
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    app_dir = Path("/tmp/bench-keys-app")
    app_dir.mkdir(exist_ok=True)
    (app_dir / "keysapp.py").write_text(APP.format(dsn=DSN))
    fresh_database(app_dir)
    rates: dict[str, list[float]] = {"plain": [], "keyed": []}
    for i in range(opts.repeat):
        order = ["plain", "keyed"] if i % 2 == 0 else ["keyed", "plain"]
        for name in order:
            keys = None if name == "plain" else opts.keys
            rates[name].append(drain(app_dir, name, opts.tasks, keys))
    plain = statistics.median(rates["plain"])
    keyed = statistics.median(rates["keyed"])
    print(f"drain, 1 process, {opts.tasks} tasks (median of {opts.repeat}, interleaved):")
    print(f"  plain handler:                {plain:10,.0f} tasks/s  {rates['plain']}")
    print(f"  key_concurrency=1, {opts.keys} keys: {keyed:10,.0f} tasks/s  {rates['keyed']}")
    print(f"  ratio: {keyed / plain:.0%} (target >= 60%)")
    with_idle = claim_cost(app_dir, opts.idle)
    without = claim_cost(app_dir, 0)
    print(
        f"rate-limited claim: {without:.2f} ms with no idle keys, "
        f"{with_idle:.2f} ms with {opts.idle:,} idle keys"
    )


if __name__ == "__main__":
    main()
