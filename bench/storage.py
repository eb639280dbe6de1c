"""Storage designs for a task's lifecycle: what the database pays per task.

    bench/.venv/bin/python bench/storage.py [--tasks 20000] [--repeat 5]

Runs the SQL of a task's life (batch push, claim in rounds of 500, record
success) against the real schema, once per design, the designs
interleaved, and prints per design the rate of the claim + outcome rounds,
the server CPU they cost per task (the backend's utime + stime from
/proc, so run it on the database's machine) and their WAL bytes per task:

* ``update``: today's design; success is an UPDATE of the task's row, which
  stays in ``pgtq_tasks`` until retention deletes it;
* ``update, no finished index``: the same without ``pgtq_tasks_finished``
  (what the retention index costs the outcome);
* ``move to archive``: delete-on-success; the outcome deletes the row and
  inserts it, whole, into an archive table of the same columns (primary key
  and a ``finished_at`` index, as retention would need);
* ``move to results``: the same into a narrow table (id, queue, name,
  state, result, attempts and times): what succeeded tasks would keep if
  their arguments went with them.

Server-side statements only: no worker, no Python per task, so the numbers
say what each design costs PostgreSQL, not what a drain gains.  PostgreSQL
at 127.0.0.1:5432 (``BENCH_PG_*`` as in the harness); the database
``bench_storage`` is dropped and made again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench import harness  # noqa: E402
from flask_pgtq import queries, schema  # noqa: E402

DB = "bench_storage"
ROUND = 500

CLAIM = """
SET LOCAL synchronous_commit = off;
UPDATE pgtq_tasks AS t
SET state = 'running', attempts = t.attempts + 1, started_at = now(),
    locked_by = '00000000-0000-0000-0000-000000000001'
FROM (SELECT id FROM pgtq_tasks
      WHERE state = 'queued' AND queue = 'default' AND NOT limited AND run_at <= now()
      ORDER BY priority DESC, run_at, id
      LIMIT %s
      FOR UPDATE SKIP LOCKED) AS picked
WHERE t.id = picked.id
RETURNING t.id
"""

UPDATE = """
UPDATE pgtq_tasks
SET state = 'succeeded', result = '1', finished_at = now(), locked_by = NULL
WHERE id = ANY(%s) AND state = 'running'
"""

#: Every column of pgtq_tasks as the archive row of a success.
ARCHIVED = """
id, queue, name, args, kwargs, 'succeeded', priority, attempts, max_attempts, run_at,
created_at, started_at, now(), NULL, '1', error, progress, history, cancel_requested_at,
unique_key, unique_until, snoozes, key, workflow_id, waiting_for, run_on_failure,
pass_result, meta, tags, limited
"""

DESIGNS = {
    "update": UPDATE,
    "update, no finished index": UPDATE,
    "move to archive": f"""
        WITH moved AS (
            DELETE FROM pgtq_tasks WHERE id = ANY(%s) AND state = 'running' RETURNING *
        )
        INSERT INTO bench_archive SELECT {ARCHIVED} FROM moved
    """,
    "move to results": """
        WITH moved AS (
            DELETE FROM pgtq_tasks WHERE id = ANY(%s) AND state = 'running'
            RETURNING id, queue, name, attempts, created_at, started_at
        )
        INSERT INTO bench_results
        SELECT id, queue, name, 'succeeded', '1', attempts, created_at, started_at, now()
        FROM moved
    """,
}

TABLES = """
CREATE TABLE bench_archive (LIKE pgtq_tasks INCLUDING DEFAULTS);
ALTER TABLE bench_archive ADD PRIMARY KEY (id);
CREATE INDEX ON bench_archive (finished_at);
CREATE TABLE bench_results (
    id bigint PRIMARY KEY, queue text NOT NULL, name text NOT NULL, state text NOT NULL,
    result jsonb, attempts integer NOT NULL, created_at timestamptz NOT NULL,
    started_at timestamptz, finished_at timestamptz NOT NULL
);
CREATE INDEX ON bench_results (finished_at);
"""

FINISHED_INDEX = (
    "CREATE INDEX pgtq_tasks_finished ON pgtq_tasks (state, finished_at) "
    "WHERE finished_at IS NOT NULL"
)


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lifecycle(cur: object, design: str, tasks: int, pid: int) -> tuple[float, float, float]:
    """Push *tasks*, then claim and record them in rounds; return the
    rounds' tasks/s, backend CPU µs per task and WAL bytes per task."""
    cur.execute("TRUNCATE pgtq_tasks, bench_archive, bench_results")
    cur.execute("DROP INDEX IF EXISTS pgtq_tasks_finished")
    if design != "update, no finished index":
        cur.execute(FINISHED_INDEX)
    push = queries.get("push_tasks")
    for low in range(0, tasks, 1000):
        args = json.dumps([[n] for n in range(low, min(low + 1000, tasks))])
        cur.execute(
            push,
            {
                "queue": "default",
                "name": "noop",
                "priority": 0,
                "max_attempts": 3,
                "run_at": None,
                "delay": 0,
                "key": None,
                "meta": None,
                "tags": [],
                "limited": False,
                "args": args,
                "kwargs": "[]",
            },
        )
    cur.execute("VACUUM ANALYZE pgtq_tasks")
    cur.execute("CHECKPOINT")
    cur.execute("SELECT pg_current_wal_lsn()")
    (wal_start,) = cur.fetchone()
    cpu_start = backend_cpu_seconds(pid)
    start = time.perf_counter()
    while True:
        cur.execute(CLAIM, (ROUND,))
        ids = [row[0] for row in cur.fetchall()]
        if not ids:
            break
        cur.execute(DESIGNS[design], (ids,))
    seconds = time.perf_counter() - start
    cpu = backend_cpu_seconds(pid) - cpu_start
    cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_start,))
    (wal,) = cur.fetchone()
    return tasks / seconds, cpu / tasks * 1e6, float(wal) / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    harness.recreate_database(DB)
    conn = psycopg2.connect(harness.libpq_dsn(DB))
    schema.upgrade(conn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(TABLES)
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
        runs: dict[str, list[tuple[float, float, float]]] = {d: [] for d in DESIGNS}
        for _ in range(opts.repeat):
            for design in DESIGNS:
                runs[design].append(lifecycle(cur, design, opts.tasks, pid))
    conn.close()
    harness.drop_database(DB)
    print(
        f"{opts.tasks:,} tasks, claim + outcome rounds of {ROUND}, "
        f"medians of {opts.repeat} interleaved runs:"
    )
    base = statistics.median(r[0] for r in runs["update"])
    for design, results in runs.items():
        rate = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        wal = statistics.median(r[2] for r in results)
        spread = ", ".join(f"{r[0]:,.0f}" for r in results)
        print(
            f"  {design:27s} {rate:9,.0f} tasks/s ({rate / base:4.2f}x)  "
            f"server CPU {cpu:5.1f} us/task  WAL {wal:5.0f} B/task  [{spread}]"
        )


if __name__ == "__main__":
    main()
