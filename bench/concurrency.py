"""flask_pgtq worker concurrency: threads or processes?

    python bench/concurrency.py             # about 5 minutes
    python bench/concurrency.py --quick

For an I/O-bound handler (``time.sleep(0.01)``) and a CPU-bound one (5 ms of
CPU in a pure-Python loop), tasks/s with N = 1, 2, 4, 8 as

* 1 process x N threads (``--concurrency N``),
* N processes x 1 thread,
* 2 processes x N/2 threads (N >= 4).

The rate is over a fixed window (``--window`` s) from the first finished task,
on a queue filled well beyond what the window can take.  Database
``bench_concurrency`` on 127.0.0.1:5432.  Writes
``bench/results/concurrency.json``.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.pgtq_drain import (  # noqa: E402
    Queue,
    Running,
    Workers,
    install_signal_handlers,
    log,
    measure_rate,
    meta,
    write_json,
)

DBNAME = "bench_concurrency"
PROCS = harness.Processes()
WATCH = harness.CpuWatch()

KINDS = {
    # name: (handler, argument, tasks/s one thread can do at most)
    "io": ("sleep_ms", 10.0, 100.0),
    "cpu": ("spin_ms", 5.0, 200.0),
}


def shapes(n: int) -> list[tuple[str, int, int]]:
    """(label, processes, threads per process) for N-way concurrency."""
    out = [(f"1 process x {n} threads", 1, n)]
    if n > 1:
        out.append((f"{n} processes x 1 thread", n, 1))
    if n >= 4:
        out.append((f"2 processes x {n // 2} threads", 2, n // 2))
    return out


def measure(queue: Queue, kind: str, processes: int, threads: int, window: float) -> dict[str, Any]:
    handler, arg, per_thread = KINDS[kind]
    # Enough for the window plus start-up, whatever the configuration does.
    n = int(per_thread * processes * threads * (window + 10)) + 500
    queue.truncate()
    queue.fill(n, handler=handler, args=lambda i: (arg,), batch=5000)
    harness.checkpoint()
    workers = Workers(processes=processes, concurrency=threads, dsn=queue.dsn)
    quiet = WATCH.wait_quiet(20.0)
    WATCH.start()
    with Running(PROCS, workers) as running:
        rate = measure_rate(running, queue.succeeded, window=window, interval=0.1)
        rate["rss"] = running.rss()
    rate["load"] = {**WATCH.stop(), **quiet}
    rate["queued_at_end"] = queue.queued()
    if rate["queued_at_end"] == 0:
        rate["note"] = "queue ran dry inside the window"
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="1,2,4,8", help="concurrency levels")
    parser.add_argument("--kinds", default="io,cpu")
    parser.add_argument("--window", type=float, default=6.0, help="seconds timed")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 s windows, N up to 4")
    parser.add_argument("--output", default=str(harness.BENCH / "results" / "concurrency.json"))
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.window, opts.n = 3.0, "1,2,4"
    levels = [int(n) for n in opts.n.split(",")]
    kinds = opts.kinds.split(",")
    atexit.register(PROCS.cleanup)
    install_signal_handlers(PROCS, lambda: None)
    data: dict[str, Any] = {"meta": meta(sys.argv[1:]), "settings": vars(opts), "runs": []}
    harness.recreate_database(DBNAME)
    queue = Queue(harness.libpq_dsn(DBNAME))
    queue.init_db()
    try:
        for rep in range(opts.repeat):
            for kind in kinds:
                for n in levels:
                    for label, p, t in shapes(n):
                        log(f"{kind}: {label}")
                        item = measure(queue, kind, p, t, opts.window)
                        item.update(
                            kind=kind, n=n, shape=label, processes=p, threads=t, repeat=rep + 1
                        )
                        data["runs"].append(item)
                        log(
                            f"  {item['per_s']:,.0f} tasks/s"
                            f" (other processes {item['load']['foreign_cores']} cores)"
                            + (f" [{item['note']}]" if item.get("note") else "")
                        )
    finally:
        queue.close()
        harness.drop_database(DBNAME)
    lines = [
        "| handler | N | 1 process x N threads | N processes x 1 thread |"
        " 2 processes x N/2 threads |",
        "|---|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for kind in kinds:
        handler, arg, _ = KINDS[kind]
        for n in levels:
            row = {}
            for label, p, t in shapes(n):
                rates = [
                    r["per_s"]
                    for r in data["runs"]
                    if r["kind"] == kind and r["processes"] == p and r["threads"] == t
                ]
                row[label] = harness.median(rates)
            summary.setdefault(kind, {})[str(n)] = row
            threads = row.get(f"1 process x {n} threads")
            procs = row.get(f"{n} processes x 1 thread", threads if n == 1 else None)
            hybrid = row.get(f"2 processes x {n // 2} threads")
            cells = [threads, procs, hybrid]
            what = f"{kind}: {handler}({arg:g})"
            lines.append(
                f"| {what} | {n} | "
                + " | ".join("-" if v is None else f"{v:,.0f}" for v in cells)
                + " |"
            )
    data["summary"] = summary
    data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data["table"] = "\n".join(lines)
    print(data["table"])
    write_json(Path(opts.output), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
