"""flask_pgtq alone: fill a queue, run workers, count what they finished, sample
the table.  Shared by bench/backlog.py, bench/scaleout.py and bench/concurrency.py.

Progress is read from the database, never from the workers: the number of
succeeded tasks (an index scan of ``pgtq_tasks_finished``), or, when retention
deletes them, what is still queued.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from . import harness

FILL_BATCH = 10_000


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def git_version() -> dict[str, Any]:
    """The commit measured, and whether flask_pgtq/ differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=harness.ROOT, capture_output=True, text=True
        ).stdout.strip()

    import flask_pgtq

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "flask_pgtq_uncommitted": bool(git("status", "--porcelain", "--", "flask_pgtq")),
        "flask_pgtq_version": flask_pgtq.__version__,
        "flask_pgtq_path": flask_pgtq.__file__,
    }


def meta(argv: Sequence[str]) -> dict[str, Any]:
    return {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": list(argv),
        "git": git_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "postgres": harness.server_facts(),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    log(f"wrote {path}")


# -- the queue ---------------------------------------------------------------------


class Queue:
    """A client app (for push_many) and a probe connection on one database."""

    def __init__(self, dsn: str, **config: Any) -> None:
        from .apps.pgtq_tuned_app import create_app

        self.dsn = dsn
        self.app, self.q, self.handlers = create_app(dsn, **config)
        self.ctx = self.app.app_context()
        self.ctx.push()
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def init_db(self) -> None:
        self.q.init_db()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.q.close()  # best effort: a private handle
        with contextlib.suppress(Exception):
            self.ctx.pop()

    def value(self, sql: str, params: Any = None) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def execute(self, sql: str, params: Any = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)

    def fill(
        self,
        n: int,
        handler: str = "noop",
        args: Callable[[int], tuple[Any, ...]] = lambda i: (i,),
        batch: int = FILL_BATCH,
        start: int = 0,
    ) -> float:
        """Push *n* tasks with ``push_many`` in batches; return the seconds taken."""
        push_many = self.handlers[handler].push_many
        t0 = time.perf_counter()
        for lo in range(start, start + n, batch):
            push_many([args(i) for i in range(lo, min(start + n, lo + batch))])
        return time.perf_counter() - t0

    def succeeded(self) -> int:
        return int(
            self.value(
                "SELECT count(*) FROM pgtq_tasks"
                " WHERE state = 'succeeded' AND finished_at IS NOT NULL"
            )
        )

    def queued(self) -> int:
        # Queued tasks sit in two partial indexes, by the "limited" mark
        # (schema version 9): a count over each, not a scan of the table.
        return int(
            self.value(
                "SELECT (SELECT count(*) FROM pgtq_tasks WHERE state = 'queued' AND NOT limited)"
                " + (SELECT count(*) FROM pgtq_tasks WHERE state = 'queued' AND limited)"
            )
        )

    def running(self) -> int:
        return int(self.value("SELECT count(*) FROM pgtq_tasks WHERE state = 'running'"))

    def not_done(self) -> int:
        # Two counts, each matching a partial index's predicate.
        return self.queued() + self.running()

    def failed(self) -> int:
        return int(
            self.value("SELECT count(*) FROM pgtq_tasks WHERE state IN ('failed', 'cancelled')")
        )

    def truncate(self) -> None:
        self.execute("TRUNCATE pgtq_tasks, pgtq_workers")

    def connections(self) -> dict[str, int]:
        """Open connections to this database by application_name."""
        rows = self.rows(
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " GROUP BY 1"
        )
        return {name: int(count) for name, count in rows}


def connections_per_process(seen: dict[str, int]) -> dict[str, Any]:
    """Fold ``flask_pgtq:<pid>`` / ``flask_pgtq-listen:<pid>`` counts per pid."""
    per_pid: dict[str, dict[str, int]] = {}
    for name, count in seen.items():
        role, _, pid = name.rpartition(":")
        if role not in ("flask_pgtq", "flask_pgtq-listen") or not pid.isdigit():
            continue
        key = "listen" if role == "flask_pgtq-listen" else "pool"
        per_pid.setdefault(pid, {"pool": 0, "listen": 0})[key] = count
    totals = [v["pool"] + v["listen"] for v in per_pid.values()]
    return {
        "processes": len(per_pid),
        "per_process": per_pid,
        "max_per_process": max(totals) if totals else None,
        "total": sum(totals),
    }


# -- workers -----------------------------------------------------------------------


@dataclass
class Workers:
    """How to start the worker processes of one measurement."""

    processes: int = 1
    concurrency: int | None = None  # None: the default (PGTQ_CONCURRENCY, 1)
    config: dict[str, Any] = field(default_factory=dict)  # PGTQ_* overrides
    prefixes: list[list[str]] | None = None  # per process, e.g. ["ip", "netns", "exec", ns]
    dsn: str = ""
    dsns: list[str] | None = None  # per process, with prefixes (each namespace its address)
    log_level: str = "WARNING"

    def describe(self) -> str:
        c = "default concurrency (1)" if self.concurrency is None else f"-c {self.concurrency}"
        return f"{self.processes} process{'es' if self.processes > 1 else ''} x {c}"

    def argvs(self) -> list[list[str]]:
        argv = [
            harness.python(),
            "-m",
            "flask",
            "--app",
            "bench.apps.pgtq_tuned_app",
            "pgtq",
            "worker",
            "--log-level",
            self.log_level,
        ]
        if self.concurrency is not None:
            argv += ["-c", str(self.concurrency)]
        out = []
        for k in range(self.processes):
            prefix = self.prefixes[k % len(self.prefixes)] if self.prefixes else []
            out.append(prefix + argv)
        return out

    def env(self, k: int = 0) -> dict[str, str]:
        dsn = self.dsns[k % len(self.dsns)] if self.dsns else self.dsn
        env = {"BENCH_PGTQ_DSN": dsn}
        for key, value in self.config.items():
            env[f"BENCHCFG_{key}"] = json.dumps(value)
        return env


class Running:
    """Worker processes started for one measurement; stopped on exit."""

    def __init__(self, procs: harness.Processes, workers: Workers) -> None:
        self.procs_registry = procs
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Running:
        self.procs = [
            self.procs_registry.start(argv, self.workers.env(k))
            for k, argv in enumerate(self.workers.argvs())
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.procs_registry.stop(self.procs)

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {proc.returncode}: {self.procs_registry.log_tail(proc)}"
                )

    def rss(self) -> dict[str, Any]:
        return harness.worker_peak_rss_mib(self.procs)

    def rss_now(self) -> dict[str, Any]:
        """Each worker process's resident set now (and the peak so far)."""
        return harness.worker_rss_mib(self.procs)


def wait_first(
    running: Running, progress: Callable[[], int], start: int, timeout: float = 60.0
) -> tuple[float, int]:
    """Wait until *progress* moves past *start*; return (time, value)."""
    deadline = time.monotonic() + timeout
    while True:
        before = time.monotonic()
        value = progress()
        t = (before + time.monotonic()) / 2
        if value != start:
            return t, value
        running.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no progress within {timeout:.0f} s")
        time.sleep(0.02)


def measure_rate(
    running: Running,
    done: Callable[[], int],
    *,
    target: int | None = None,
    window: float | None = None,
    timeout: float = 60.0,
    sample: Callable[[], None] | None = None,
    interval: float = 0.05,
) -> dict[str, Any]:
    """Tasks/s from the first finished task until *target* are done (or for *window* s).

    *done* counts finished tasks (it must grow).  Start-up is not counted.
    """
    base = done()
    t1, d1 = wait_first(running, done, base)
    deadline = t1 + (window if window is not None else timeout)
    while True:
        before = time.monotonic()
        d2 = done()
        t2 = (before + time.monotonic()) / 2
        if target is not None and d2 - base >= target:
            break
        if time.monotonic() >= deadline:
            break
        running.check()
        if sample is not None:
            sample()
        time.sleep(interval)
    out = {
        "tasks": d2 - d1,
        "seconds": round(t2 - t1, 3),
        "per_s": round((d2 - d1) / (t2 - t1), 1) if t2 > t1 else None,
    }
    if target is not None and d2 - base < target:
        out["note"] = f"stopped after {t2 - t1:.0f} s with {d2 - base} of {target} done"
    return out


# -- table sizes -------------------------------------------------------------------


def table_stats(queue: Queue, table: str = "pgtq_tasks") -> dict[str, Any]:
    """Sizes (bytes) of a table and its indexes, tuple counts, vacuum counters."""
    sizes = queue.rows(
        "SELECT pg_total_relation_size(%(t)s::regclass), pg_relation_size(%(t)s::regclass)",
        {"t": table},
    )[0]
    indexes = queue.rows(
        "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes"
        " WHERE relname = %(t)s ORDER BY indexrelname",
        {"t": table},
    )
    stat = queue.rows(
        "SELECT n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, vacuum_count,"
        " n_tup_ins, n_tup_del, n_tup_hot_upd, n_tup_upd, last_autovacuum"
        " FROM pg_stat_user_tables WHERE relname = %(t)s",
        {"t": table},
    )[0]
    return {
        "total_bytes": int(sizes[0]),
        "heap_bytes": int(sizes[1]),
        "indexes_bytes": {name: int(size) for name, size in indexes},
        "n_live_tup": int(stat[0]),
        "n_dead_tup": int(stat[1]),
        "autovacuum_count": int(stat[2]),
        "autoanalyze_count": int(stat[3]),
        "vacuum_count": int(stat[4]),
        "n_tup_ins": int(stat[5]),
        "n_tup_del": int(stat[6]),
        "n_tup_hot_upd": int(stat[7]),
        "n_tup_upd": int(stat[8]),
        "last_autovacuum": stat[9].isoformat() if stat[9] else None,
    }


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1048576:,.1f}"


def install_signal_handlers(procs: harness.Processes, cleanup: Callable[[], None]) -> None:
    """SIGTERM/SIGINT: stop the workers, run *cleanup*, exit."""

    def on_signal(signum: int, _frame: Any) -> None:
        log(f"stopping on signal {signum}: killing worker processes")
        procs.stop(grace=1.0)
        with contextlib.suppress(Exception):
            cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
