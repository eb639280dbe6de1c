"""flask_pgtq: is the cost flat with the size of the backlog and the age of the table?

    python bench/backlog.py                  # full: backlogs 10,000 and 1,000,000; 1M through
    python bench/backlog.py --quick          # backlogs 10,000 and 200,000; 200,000 through
    python bench/backlog.py --part flat      # only the backlog comparison
    python bench/backlog.py --part through   # 10,000,000 tasks at default retention
    python bench/backlog.py --part through --through 300000 --bucket 50000 --servers stock

Three parts (bench/README.md says what each number means); the default runs
the first two:

* **flat**: drain throughput of flask_pgtq (one worker process at default
  settings, and the 2-core configuration) with 10,000 and with 1,000,000 queued
  tasks, and their ratio.
* **retention**: push 1,000,000 tasks through (push + drain at once) with
  ``PGTQ_KEEP_SUCCEEDED`` = 5 s and ``PGTQ_PRUNE_INTERVAL`` = 1 s, sampling
  table and index sizes, dead tuples and autovacuum counts as it goes.  It
  runs on the shared server (127.0.0.1:5432, whatever its autovacuum setting)
  and on a throwaway server with stock settings (autovacuum on).
* **through**: push 10,000,000 tasks (``--through``) through one worker
  configuration (``--through-config``, 2 processes at default settings) at
  flask_pgtq's default settings, retention included (nothing overridden),
  pushing while it drains: the table's size every few seconds (peak and end),
  the drain rate of each million (``--bucket``), the workers' RSS after the
  first 10,000 tasks and at the end.  Same servers as retention.

Uses the database ``bench_backlog`` (dropped and created here).  Writes
``bench/results/backlog.json``.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.pgserver import ThrowawayServer  # noqa: E402
from bench.pgtq_drain import (  # noqa: E402
    Queue,
    Running,
    Workers,
    install_signal_handlers,
    log,
    measure_rate,
    meta,
    mib,
    table_stats,
    write_json,
)

DBNAME = "bench_backlog"
PROCS = harness.Processes()
SERVERS: list[ThrowawayServer] = []
WATCH = harness.CpuWatch()

CONFIGS = {
    "1proc": Workers(processes=1),
    "2cores": Workers(processes=2),
}


def log_sample(label: str, done: int, item: dict[str, Any]) -> None:
    """One progress line of a through or retention run."""
    log(
        f"  {label}: {done:,} done, table {mib(item['total_bytes'])} MiB,"
        f" dead {item['n_dead_tup']:,}, autovacuum {item['autovacuum_count']}"
    )


def cleanup() -> None:
    PROCS.cleanup()
    while SERVERS:
        SERVERS.pop().stop()


# -- flat: backlog size ----------------------------------------------------------


def measure_flat_one(
    queue: Queue, dsn: str, size: int, config: str, drain: int, timeout: float, hold: int
) -> dict[str, Any]:
    """Drain *drain* tasks from a backlog held at *size* (topped up as tasks finish)."""
    queue.truncate()
    fill_s = queue.fill(size)
    queue.execute("VACUUM ANALYZE pgtq_tasks")
    harness.checkpoint()
    stats_before = table_stats(queue)
    workers = CONFIGS[config]
    workers.dsn = dsn
    pushed = [0]
    succeeded = [0]

    def done() -> int:
        succeeded[0] = queue.succeeded()
        return succeeded[0]

    def top_up() -> None:
        # Hold the backlog at its size: push back what finished, in batches.
        gone = succeeded[0] - pushed[0]
        if gone >= hold:
            queue.fill(gone, start=size + pushed[0], batch=hold)
            pushed[0] += gone

    quiet = WATCH.wait_quiet(30.0)
    WATCH.start()
    with Running(PROCS, workers) as running:
        rate = measure_rate(
            running, done, target=drain, timeout=timeout, sample=top_up, interval=0.05
        )
        rate["rss"] = running.rss()
    rate["load"] = {**WATCH.stop(), **quiet}
    queued_end = queue.queued()
    return {
        "backlog": size,
        "config": config,
        "description": workers.describe(),
        "fill_seconds": round(fill_s, 2),
        "fill_per_s": round(size / fill_s, 1),
        "topped_up": pushed[0],
        "queued_at_end": queued_end,
        "table_before": stats_before,
        **rate,
    }


def run_flat(opts: argparse.Namespace, dsn: str) -> dict[str, Any]:
    harness.recreate_database(DBNAME)
    queue = Queue(dsn)
    queue.init_db()
    runs = []
    try:
        for rep in range(opts.repeat):
            sizes = opts.sizes if rep % 2 == 0 else list(reversed(opts.sizes))
            for size in sizes:
                for config in opts.configs:
                    log(f"flat: repeat {rep + 1}, backlog {size:,}, {config}")
                    item = measure_flat_one(
                        queue, dsn, size, config, opts.drain, opts.drain_timeout, opts.hold
                    )
                    item["repeat"] = rep + 1
                    runs.append(item)
                    log(
                        f"  {item['per_s']:,.0f} tasks/s over {item['tasks']:,} tasks"
                        f" (fill {item['fill_per_s']:,.0f}/s, other processes"
                        f" {item['load']['foreign_cores']} cores)"
                        + (f" [{item['note']}]" if item.get("note") else "")
                    )
    finally:
        queue.close()
        harness.drop_database(DBNAME)
    summary: dict[str, Any] = {}
    for config in opts.configs:
        row: dict[str, Any] = {}
        for size in opts.sizes:
            rates = [r["per_s"] for r in runs if r["config"] == config and r["backlog"] == size]
            row[str(size)] = {"per_s": rates, "median": harness.median(rates)}
        small, large = (row[str(s)]["median"] for s in (min(opts.sizes), max(opts.sizes)))
        row["ratio_large_to_small"] = round(large / small, 3) if small and large else None
        row["description"] = CONFIGS[config].describe()
        summary[config] = row
    return {"runs": runs, "summary": summary}


def flat_table(flat: dict[str, Any], sizes: list[int]) -> str:
    small, large = min(sizes), max(sizes)
    lines = [
        f"| worker config | drain/s, {small:,} queued | drain/s, {large:,} queued | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in flat["summary"].values():
        ratio = row["ratio_large_to_small"]
        lines.append(
            f"| {row['description']} | {row[str(small)]['median']:,.0f} |"
            f" {row[str(large)]['median']:,.0f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


# -- retention: age ---------------------------------------------------------------


def run_retention(
    opts: argparse.Namespace, label: str, dsn: str, recreate: Any, facts: dict[str, Any]
) -> dict[str, Any]:
    log(f"  {label}: {opts.tasks:,} tasks")
    recreate(DBNAME)
    queue = Queue(dsn)
    queue.init_db()
    config = {
        "PGTQ_KEEP_SUCCEEDED": opts.keep_succeeded,
        "PGTQ_PRUNE_INTERVAL": opts.prune_interval,
    }
    workers = Workers(processes=2, config=config, dsn=dsn)
    total = opts.tasks
    samples: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "server": label,
        "server_settings": facts,
        "tasks": total,
        "workers": workers.describe(),
        "config": config,
        "producer": f"push_many batches of {opts.batch:,} while fewer than"
        f" {opts.max_queued:,} are queued",
    }

    def sample(phase: str, done: int, t0: float) -> dict[str, Any]:
        item = {"phase": phase, "t": round(time.monotonic() - t0, 1), "done": done}
        item.update(table_stats(queue))
        samples.append(item)
        return item

    try:
        t0 = time.monotonic()
        sample("before", 0, t0)
        pushed = 0
        with Running(PROCS, workers) as running:
            start = time.monotonic()
            next_sample = start + opts.sample_every
            deadline = start + opts.max_minutes * 60
            done = 0
            while True:
                queued = queue.queued()
                if pushed < total and queued < opts.max_queued:
                    n = min(opts.batch, total - pushed)
                    queue.fill(n, start=pushed, batch=n)
                    pushed += n
                    continue
                done = pushed - queue.not_done()
                now = time.monotonic()
                if now >= next_sample:
                    item = sample("during", done, t0)
                    next_sample = now + opts.sample_every
                    log_sample(label, done, item)
                if done >= total:
                    break
                if now > deadline:
                    out["note"] = f"stopped after {opts.max_minutes} min with {done:,} done"
                    break
                running.check()
                time.sleep(0.05)
            elapsed = time.monotonic() - start
            out["pass_seconds"] = round(elapsed, 1)
            out["pass_per_s"] = round(done / elapsed, 1)
            out["done"] = done
            sample("all done", done, t0)
            # Retention deletes the last ones keep_succeeded seconds later.
            harness.wait_until(
                lambda: queue.succeeded() == 0,
                opts.keep_succeeded + 10 * opts.prune_interval + 10,
                0.5,
            )
            sample("pruned", done, t0)
            log(f"  {label}: waiting {opts.settle:.0f} s idle (autovacuum)")
            time.sleep(opts.settle)
            sample(f"idle {opts.settle:.0f} s later", done, t0)
            out["failed"] = queue.failed()
            out["left"] = queue.not_done()
    finally:
        queue.close()
    out["samples"] = samples
    out["rates"] = window_rates(samples)
    during = [s for s in samples if s["phase"] in ("during", "all done")]
    if during:
        half = [s for s in during if s["done"] <= total / 2]
        second = [s for s in during if s["done"] > total / 2]
        peak1 = max((s["total_bytes"] for s in half), default=None)
        peak2 = max((s["total_bytes"] for s in second), default=None)
        out["peak_total_bytes_first_half"] = peak1
        out["peak_total_bytes_second_half"] = peak2
        out["growth_second_half_vs_first"] = round(peak2 / peak1, 3) if peak1 and peak2 else None
        out["peak_dead_tup"] = max(s["n_dead_tup"] for s in during)
    return out


def window_rates(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks/s between consecutive samples taken while tasks went through."""
    during = [s for s in samples if s["phase"] in ("before", "during", "all done")]
    out = []
    for a, b in zip(during, during[1:], strict=False):
        if b["t"] > a["t"] and b["done"] > a["done"]:
            out.append(
                {
                    "done_from": a["done"],
                    "done_to": b["done"],
                    "per_s": round((b["done"] - a["done"]) / (b["t"] - a["t"]), 1),
                }
            )
    return out


def retention_table(ret: dict[str, Any]) -> str:
    samples = ret["samples"]
    keep = [samples[0]]
    during = [s for s in samples if s["phase"] == "during"]
    # A few evenly spaced samples from the pass, then the end.
    for frac in (0.25, 0.5, 0.75):
        target = ret["tasks"] * frac
        near = [s for s in during if s["done"] >= target]
        if near and near[0] not in keep:
            keep.append(near[0])
    keep += [s for s in samples if s["phase"] not in ("before", "during")]
    index_names = sorted(samples[-1]["indexes_bytes"])
    short = {name: name.replace("pgtq_tasks_", "") for name in index_names}
    header = (
        "| when | tasks done | total MiB | heap MiB | "
        + " | ".join(f"{short[n]} MiB" for n in index_names)
        + " | live tup | dead tup | autovacuums |"
    )
    lines = [header, "|" + "---|" * (7 + len(index_names))]
    for s in keep:
        cells = [
            s["phase"],
            f"{s['done']:,}",
            mib(s["total_bytes"]),
            mib(s["heap_bytes"]),
            *(mib(s["indexes_bytes"].get(n)) for n in index_names),
            f"{s['n_live_tup']:,}",
            f"{s['n_dead_tup']:,}",
            str(s["autovacuum_count"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rates = [r["per_s"] for r in ret["rates"]]
    if rates:
        k = max(1, len(rates) // 4)
        first, last = harness.median(rates[:k]), harness.median(rates[-k:])
        lines.append("")
        lines.append(
            f"{ret['done']:,} tasks through in {ret['pass_seconds']:,.0f} s"
            f" ({ret['pass_per_s']:,.0f}/s); rate in the first quarter {first:,.0f}/s,"
            f" last quarter {last:,.0f}/s; peak size, second half / first half:"
            f" {ret.get('growth_second_half_vs_first')}"
        )
    return "\n".join(lines)


# -- through: N tasks at default retention ----------------------------------------


def retention_defaults() -> dict[str, Any]:
    """flask_pgtq's retention settings as shipped (``flask_pgtq.config.Config``)."""
    from flask_pgtq.config import Config

    shipped = {f.name: f.default for f in dataclasses.fields(Config)}
    names = ("keep_succeeded", "keep_failed", "prune_interval", "prune_batch")
    return {f"PGTQ_{name.upper()}": shipped[name] for name in names}


def run_through(
    opts: argparse.Namespace, label: str, dsn: str, recreate: Any, facts: dict[str, Any]
) -> dict[str, Any]:
    """Push *opts.through* tasks through one worker configuration at default
    settings (retention included), pushing while it drains."""
    log(f"  {label}: {opts.through:,} tasks, rates per {opts.bucket:,}")
    recreate(DBNAME)
    queue = Queue(dsn)
    queue.init_db()
    workers = dataclasses.replace(CONFIGS[opts.through_config], dsn=dsn, config={})
    total, bucket = opts.through, opts.bucket
    retention = retention_defaults()
    out: dict[str, Any] = {
        "server": label,
        "server_settings": facts,
        "tasks": total,
        "bucket": bucket,
        "workers": workers.describe(),
        "retention": retention,
        # BENCHCFG_PGTQ_* reach the workers from this environment: empty for
        # a run at default settings.
        "inherited_settings": {k: v for k, v in os.environ.items() if k.startswith("BENCHCFG_")},
        "producer": f"push_many batches of {opts.batch:,} while fewer than"
        f" {opts.max_queued:,} are queued",
    }
    samples: list[dict[str, Any]] = []
    # (time, done, total bytes) when progress was first seen, then when done
    # first reached each multiple of the bucket (and the end).
    marks: list[tuple[float, int, int]] = []
    t0 = time.monotonic()

    def sample(phase: str, done: int) -> dict[str, Any]:
        item = {"phase": phase, "t": round(time.monotonic() - t0, 1), "done": done}
        item.update(table_stats(queue))
        samples.append(item)
        return item

    def total_bytes() -> int:
        return int(queue.value("SELECT pg_total_relation_size('pgtq_tasks')"))

    try:
        sample("before", 0)
        pushed = done = 0
        WATCH.start()
        with Running(PROCS, workers) as running:
            start = time.monotonic()
            deadline = start + opts.through_max_minutes * 60
            next_sample = start + opts.sample_every
            next_edge = 1
            moved = (start, 0)
            while True:
                before = time.monotonic()
                queued = queue.queued()
                done = pushed - queued - queue.running()
                now = (before + time.monotonic()) / 2
                if done >= min(next_edge, total) and done > 0:
                    marks.append((now, done, total_bytes()))
                    next_edge = (done // bucket + 1) * bucket
                if "rss_after_first" not in out and done >= opts.rss_after:
                    out["rss_after_first"] = {"done": done, **running.rss_now()}
                if now >= next_sample:
                    item = sample("during", done)
                    next_sample = now + opts.sample_every
                    log_sample(label, done, item)
                if done >= total:
                    break
                if done != moved[1]:
                    moved = (now, done)
                elif now - moved[0] > opts.stall_seconds:
                    out["note"] = f"no progress for {opts.stall_seconds:.0f} s at {done:,} done"
                    break
                if now > deadline:
                    out["note"] = f"stopped after {opts.through_max_minutes} min at {done:,} done"
                    break
                running.check()
                if pushed < total and queued < opts.max_queued:
                    n = min(opts.batch, total - pushed)
                    queue.fill(n, start=pushed, batch=n)
                    pushed += n
                    continue
                time.sleep(0.05)
            if marks and done > marks[-1][1]:
                # Stopped early: the last bucket ends here.
                marks.append((now, done, total_bytes()))
            out["rss_end"] = {"done": done, **running.rss_now()}
            out["load"] = WATCH.stop()
        # The workers' sessions report their last statistics as they exit.
        end = sample("end, workers stopped", done)
        out["done"] = done
        out["pushed"] = pushed
        out["pushed"] = pushed
        if marks:
            elapsed = marks[-1][0] - marks[0][0]
            out["pass_seconds"] = round(elapsed, 1)
            through = marks[-1][1] - marks[0][1]
            out["pass_per_s"] = round(through / elapsed, 1) if elapsed else None
    finally:
        queue.close()
    out["samples"] = samples
    out["buckets"] = [
        {
            "from": d1,
            "to": d2,
            "seconds": round(t2 - t1, 2),
            "per_s": round((d2 - d1) / (t2 - t1), 1),
            "total_bytes_at_end": size,
        }
        for (t1, d1, _), (t2, d2, size) in itertools.pairwise(marks)
        if t2 > t1
    ]
    sizes = [(s["total_bytes"], s["done"]) for s in samples] + [(m[2], m[1]) for m in marks]
    out["peak_total_bytes"], out["peak_at_done"] = max(sizes)
    out["end_total_bytes"] = end["total_bytes"]
    out["end_bytes_per_task"] = round(end["total_bytes"] / pushed, 1) if pushed else None
    out["deleted"] = end["n_tup_del"]
    keep = retention["PGTQ_KEEP_SUCCEEDED"]
    ran = samples[-1]["t"]
    if keep is None or keep > ran:
        out["retention_note"] = (
            f"PGTQ_KEEP_SUCCEEDED is {duration(keep)} and the run took {duration(ran)}: no"
            " succeeded task was old enough to be deleted; the table held every task pushed"
            f" (deleted: {out['deleted']:,}), bounded only by retention"
        )
    return out


def duration(seconds: float | None) -> str:
    """``604,800 s (7.0 days)``; ``None``: kept for ever."""
    if seconds is None:
        return "None (for ever)"
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds:,.0f} s ({seconds / size:.1f} {unit})"
    return f"{seconds:,.0f} s"


def through_table(ret: dict[str, Any]) -> str:
    lines = [
        "| tasks done | drain/s | total MiB at the end |",
        "|---|---:|---:|",
    ]
    for b in ret["buckets"]:
        lines.append(
            f"| {b['from']:,}–{b['to']:,} | {b['per_s']:,.0f} | {mib(b['total_bytes_at_end'])} |"
        )
    lines.append("")
    if ret["buckets"]:
        first, last = ret["buckets"][0], ret["buckets"][-1]
        lines.append(
            f"{ret['done']:,} tasks through in {ret['pass_seconds']:,.0f} s"
            f" ({ret['pass_per_s']:,.0f}/s) by {ret['workers']}; first bucket"
            f" {first['per_s']:,.0f}/s, last {last['per_s']:,.0f}/s"
            f" (last / first {last['per_s'] / first['per_s']:.2f})"
        )
    lines.append(
        f"table + indexes: peak {mib(ret['peak_total_bytes'])} MiB (at {ret['peak_at_done']:,}"
        f" done), end {mib(ret['end_total_bytes'])} MiB ({ret['end_bytes_per_task']} bytes per"
        f" task); rows deleted by retention: {ret['deleted']:,}"
    )
    for key, when in (("rss_after_first", "after"), ("rss_end", "at the end,")):
        rss = ret.get(key)
        if rss:
            lines.append(
                f"worker RSS {when} {rss['done']:,} done: {rss['per_process_mib']} MiB"
                f" (peak so far {rss['peak_max_process_mib']} MiB)"
            )
    keep = ret["retention"]
    lines.append(
        f"default retention: PGTQ_KEEP_SUCCEEDED {duration(keep['PGTQ_KEEP_SUCCEEDED'])},"
        f" PGTQ_KEEP_FAILED {duration(keep['PGTQ_KEEP_FAILED'])}, PGTQ_PRUNE_INTERVAL"
        f" {duration(keep['PGTQ_PRUNE_INTERVAL'])}, PGTQ_PRUNE_BATCH {keep['PGTQ_PRUNE_BATCH']}"
    )
    load = ret.get("load", {})
    lines.append(
        f"cores used: by the benchmark {load.get('bench_cores')}, by other processes"
        f" {load.get('foreign_cores')}"
    )
    for key in ("retention_note", "note", "inherited_settings"):
        if ret.get(key):
            lines.append(f"{key}: {ret[key]}" if key == "inherited_settings" else ret[key])
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 instead of 1,000,000")
    parser.add_argument("--part", default="flat,retention", help="flat, retention, through")
    parser.add_argument("--sizes", help="backlogs to compare (default 10000,1000000)")
    parser.add_argument("--drain", type=int, default=50_000, help="tasks timed per drain")
    parser.add_argument("--hold", type=int, default=2_000, help="top-up batch while draining")
    parser.add_argument("--repeat", type=int, help="repeats of the flat part (default 3)")
    parser.add_argument("--configs", default="1proc,2cores")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--tasks", type=int, help="tasks through the retention run (1,000,000)")
    parser.add_argument("--keep-succeeded", type=float, default=5.0)
    parser.add_argument("--prune-interval", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=10_000, help="producer batch")
    parser.add_argument("--max-queued", type=int, default=20_000)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=70.0, help="idle seconds at the end")
    parser.add_argument(
        "--servers", default="shared,stock", help="retention, through: shared, stock"
    )
    parser.add_argument("--max-minutes", type=float, default=12.0, help="per retention run")
    parser.add_argument("--through", type=int, help="tasks through (10,000,000; --quick 300,000)")
    parser.add_argument("--bucket", type=int, help="through: tasks per rate (1,000,000)")
    parser.add_argument("--through-config", default="2cores", choices=sorted(CONFIGS))
    parser.add_argument("--rss-after", type=int, default=10_000, help="through: first RSS")
    parser.add_argument("--through-max-minutes", type=float, default=60.0, help="per server")
    parser.add_argument("--stall-seconds", type=float, default=120.0, help="through: give up")
    parser.add_argument("--output", default=str(harness.BENCH / "results" / "backlog.json"))
    opts = parser.parse_args(argv)
    opts.sizes = [
        int(s)
        for s in (opts.sizes or ("10000,200000" if opts.quick else "10000,1000000")).split(",")
    ]
    opts.tasks = opts.tasks or (200_000 if opts.quick else 1_000_000)
    opts.repeat = opts.repeat or (1 if opts.quick else 3)
    opts.through = opts.through or (300_000 if opts.quick else 10_000_000)
    opts.bucket = opts.bucket or (50_000 if opts.quick else 1_000_000)
    if not 0 < opts.bucket <= opts.through:
        parser.error("--bucket must be between 1 and --through")
    if opts.quick:
        opts.drain = min(opts.drain, 20_000)
        opts.settle = min(opts.settle, 10.0)
    opts.configs = opts.configs.split(",")
    parts = opts.part.split(",")

    atexit.register(cleanup)
    install_signal_handlers(PROCS, cleanup)
    data: dict[str, Any] = {
        "meta": meta(sys.argv[1:]),
        "settings": {k: v for k, v in vars(opts).items() if k != "configs"}
        | {"configs": opts.configs},
    }
    dsn = harness.libpq_dsn(DBNAME)
    text = []
    if "flat" in parts:
        data["flat"] = run_flat(opts, dsn)
        text.append(flat_table(data["flat"], opts.sizes))
    for part, run, table in (
        ("retention", run_retention, retention_table),
        ("through", run_through, through_table),
    ):
        if part not in parts:
            continue
        data[part] = on_each_server(opts, part, run, dsn)
        for ret in data[part]:
            autovacuum = ret["server_settings"].get("autovacuum")
            text.append(f"{part}, {ret['server']} (autovacuum {autovacuum}):\n" + table(ret))
    data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data["table"] = "\n\n".join(text)
    print(data["table"])
    write_json(Path(opts.output), data)
    return 0


def on_each_server(opts: argparse.Namespace, part: str, run: Any, dsn: str) -> list[dict[str, Any]]:
    """``run(opts, label, dsn, recreate, facts)`` on each server of
    ``--servers``: the shared one, then a throwaway one with stock settings."""
    results = []
    for server in opts.servers.split(","):
        if server == "shared":
            log(f"{part}: on the shared server")
            facts = harness.server_facts()
            facts.update(autovacuum=_setting("autovacuum"))
            results.append(
                run(opts, "shared 127.0.0.1:5432", dsn, harness.recreate_database, facts)
            )
            harness.drop_database(DBNAME)
        else:
            log(f"{part}: on a throwaway server, stock settings")
            pg = ThrowawayServer().start()
            SERVERS.append(pg)
            # Its CPU is the benchmark's, not other load (CpuWatch).
            WATCH.roots.add(pg.postmaster_pid())
            results.append(
                run(
                    opts,
                    "throwaway, stock settings",
                    pg.dsn(DBNAME),
                    pg.create_database,
                    pg.facts(),
                )
            )
            pg.stop()
            SERVERS.remove(pg)
    return results


def _setting(name: str) -> str:
    conn = harness.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SHOW {name}")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
