"""Run flask_pgtq and its peers side by side; print a table, write JSON.

    python bench/run.py                 # full run: 3 interleaved repeats, medians
    python bench/run.py --quick         # a couple of minutes
    python bench/run.py --systems flask_pgtq,pgqueuer --measure drain1,latency

See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import drain, harness  # noqa: E402
from bench.systems import ALL, BATCH_SIZE, System, WorkerConfig  # noqa: E402

MEASUREMENTS = ["push", "batch", "drain1", "drain2", "latency"]
#: Not run by default: drain with every candidate 2-core configuration.
EXTRA_MEASUREMENTS = ["sweep"]

SIZES = {
    "quick": {
        "push_n": 1000,
        "batch_n": 5000,
        "drain1_n": 5000,
        "drain2_n": 10000,
        "latency_samples": 100,
        "latency_gap": 0.02,
        "pgbench_seconds": 5,
        "repeat": 1,
        "drain_timeout": 15.0,
        "max_minutes": 8.0,
        "quiet_wait": 10.0,
    },
    "full": {
        "push_n": 3000,
        "batch_n": 20000,
        "drain1_n": 20000,
        "drain2_n": 20000,
        "latency_samples": 200,
        "latency_gap": 0.02,
        "pgbench_seconds": 10,
        "repeat": 3,
        "drain_timeout": 25.0,
        "max_minutes": 25.0,
        "quiet_wait": 30.0,
    },
}

PROCS = harness.Processes()
WATCH: harness.CpuWatch | None = None


def watch_start() -> None:
    if WATCH is not None:
        WATCH.start()


def watch_stop(result: dict[str, Any]) -> None:
    if WATCH is not None:
        result.setdefault("load", {}).update(WATCH.stop())


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# -- measurements ----------------------------------------------------------------


def measure_push(system: System, n: int) -> dict[str, Any]:
    system.reset()
    harness.checkpoint()
    watch_start()
    elapsed = system.push_single(n)
    result = {"tasks": n, "seconds": round(elapsed, 4), "per_s": round(n / elapsed, 1)}
    watch_stop(result)
    return result


def measure_batch(system: System, n: int) -> dict[str, Any]:
    api = system.batch_api()
    if api is None:
        note = getattr(system, "batch_note", lambda: "no batch API")()
        return {"per_s": None, "note": note}
    system.reset()
    harness.checkpoint()
    watch_start()
    elapsed = system.push_batch(n, BATCH_SIZE)
    result = {
        "tasks": n,
        "batch": BATCH_SIZE,
        "seconds": round(elapsed, 4),
        "per_s": round(n / elapsed, 1),
        "api": api,
    }
    watch_stop(result)
    return result


def measure_drain(
    system: System, config: WorkerConfig, n: int, opts: argparse.Namespace
) -> dict[str, Any]:
    """Drain *n* no-ops with *config*'s workers; see bench/drain.py for the clocks."""
    return drain.measure(
        system,
        config,
        n,
        opts.drain_timeout,
        clock=opts.drain_clock,
        processes=PROCS,
        watch=WATCH,
    )


def measure_latency(
    system: System, config: WorkerConfig, samples: int, gap: float
) -> dict[str, Any]:
    """Push one stamp task at a time to an idle worker; each records its start."""
    fd, path = tempfile.mkstemp(prefix="pgtq-bench-stamps-", suffix=".txt")
    os.close(fd)
    stamps = Path(path)

    def lines() -> int:
        try:
            return stamps.read_bytes().count(b"\n")
        except OSError:
            return 0

    system.reset()
    harness.checkpoint()
    env = dict(config.env, BENCH_STAMP_FILE=path)
    procs = [PROCS.start(argv, env) for argv in config.argvs]
    result: dict[str, Any] = {"config": config.name, "samples": samples}
    try:
        # Warm up: wait until the worker runs a stamp task, then a little more.
        ready = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ready:
            if harness.first_exited(procs) is not None:
                break
            system.push_stamp(time.time())
            ready = harness.wait_until(lambda: lines() > 0, 1.0, 0.01)
        if not ready:
            dead = harness.first_exited(procs)
            result["error"] = "worker never ran a task" + (
                f": {PROCS.log_tail(dead)}" if dead is not None else ""
            )
            return result
        harness.wait_until(lambda: not system.busy(), 5.0, 0.01)
        time.sleep(0.5)
        stamps.write_bytes(b"")
        watch_start()
        missed = 0
        for k in range(samples):
            system.push_stamp(time.time())
            want = k - missed
            if not harness.wait_until(lambda want=want: lines() > want, 5.0, 0.001):
                missed += 1
            time.sleep(gap * random.uniform(0.5, 1.5))
        harness.wait_until(lambda: lines() >= samples, 5.0, 0.01)
        watch_stop(result)
        latencies = []
        for line in stamps.read_text().splitlines():
            sent, started = (float(x) for x in line.split())
            latencies.append((started - sent) * 1000)
        result.update(
            received=len(latencies),
            p50_ms=round(harness.percentile(latencies, 50), 2),
            p95_ms=round(harness.percentile(latencies, 95), 2),
            p99_ms=round(harness.percentile(latencies, 99), 2),
            max_ms=round(max(latencies), 2) if latencies else None,
        )
        if len(latencies) < samples:
            result["error"] = f"{samples - len(latencies)} stamp tasks never started"
        return result
    finally:
        PROCS.stop(procs)
        stamps.unlink(missing_ok=True)


# -- the run --------------------------------------------------------------------


def run_system(
    system: System, which: list[str], opts: argparse.Namespace, configs: dict[str, str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    worker_configs = system.worker_configs()
    one = worker_configs[configs.get("drain1", system.one_process)]
    two = worker_configs[configs.get("drain2", system.two_cores)]
    steps = {
        "push": lambda: measure_push(system, opts.push_n),
        "batch": lambda: measure_batch(system, opts.batch_n),
        "drain1": lambda: measure_drain(system, one, opts.drain1_n, opts),
        "drain2": lambda: measure_drain(system, two, opts.drain2_n, opts),
        "latency": lambda: measure_latency(system, one, opts.latency_samples, opts.latency_gap),
        "sweep": lambda: {
            "configs": {
                config: measure_drain(system, worker_configs[config], opts.drain2_n, opts)
                for config in system.sweep
            }
        },
    }
    for name in which:
        if time.monotonic() > opts.deadline:
            out[name] = {"error": "skipped: --max-minutes reached"}
            continue
        quiet = WATCH.wait_quiet(opts.quiet_wait) if WATCH is not None else {}
        try:
            out[name] = steps[name]()
            out[name].setdefault("load", {}).update(quiet)
        except Exception as exc:  # noqa: BLE001 - one failure must not end the run
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  {system.name} {name}: {_brief(out[name])}")
        for config, item in out[name].get("configs", {}).items():
            log(f"    {config} ({item.get('description')}): {_brief(item)}")
    system.close()
    return out


def _brief(result: dict[str, Any]) -> str:
    if result.get("per_s") is not None:
        text = f"{result['per_s']:,.0f}/s"
    elif "p50_ms" in result:
        text = f"p50 {result['p50_ms']} p95 {result['p95_ms']} p99 {result['p99_ms']} ms"
    else:
        text = ""
    if result.get("note"):
        text += f" ({result['note']})"
    foreign = result.get("load", {}).get("foreign_cores")
    if foreign is not None and foreign > FOREIGN_WARN:
        text += f" (other processes: {foreign} cores)"
    if result.get("rss", {}).get("max_process_mib"):
        text += f", peak RSS {result['rss']['max_process_mib']} MiB"
    cpu = result.get("cpu_us_per_task")
    if cpu:
        text += (
            f", CPU per task: servers {cpu['server']} µs, kernel {cpu['kernel']} µs, "
            f"workers and harness {cpu['client']} µs"
        )
    if result.get("error"):
        text += f" [{result['error'][:300]}]"
    return text


def summarize(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    def values(system: str, step: str, key: str) -> list[Any]:
        found = []
        for run in runs:
            item = run["systems"].get(system, {}).get(step, {})
            value = item.get(key) if key != "rss" else item.get("rss", {}).get("max_process_mib")
            if value is not None:
                found.append(value)
        return found

    summary: dict[str, Any] = {}
    for name in systems:
        row = {
            "push_per_s": harness.median(values(name, "push", "per_s")),
            "batch_per_s": harness.median(values(name, "batch", "per_s")),
            "drain1_per_s": harness.median(values(name, "drain1", "per_s")),
            "drain2_per_s": harness.median(values(name, "drain2", "per_s")),
            "latency_p50_ms": harness.median(values(name, "latency", "p50_ms")),
            "latency_p95_ms": harness.median(values(name, "latency", "p95_ms")),
            "latency_p99_ms": harness.median(values(name, "latency", "p99_ms")),
            "worker_peak_rss_mib": harness.median(values(name, "drain1", "rss")),
        }
        notes = []
        for run in runs:
            for step, item in run["systems"].get(name, {}).items():
                if item.get("error"):
                    notes.append(f"run {run['index']} {step}: {item['error'][:200]}")
                elif item.get("per_s") is None and item.get("note"):
                    notes.append(item["note"])
                elif item.get("note"):
                    notes.append(f"run {run['index']} {step}: {item['note']}")
        foreign = []
        for run in runs:
            for step, item in run["systems"].get(name, {}).items():
                value = item.get("load", {}).get("foreign_cores")
                if value is not None:
                    foreign.append(value)
                    if value > FOREIGN_WARN:
                        notes.append(
                            f"run {run['index']} {step}: other processes used {value} cores"
                        )
        row["foreign_cores_max"] = max(foreign) if foreign else None
        row["notes"] = sorted(set(notes))
        summary[name] = row
    pg = [r["pgbench"]["tps"] for r in runs if r.get("pgbench", {}).get("tps")]
    summary["pgbench_insert_tps"] = harness.median(pg)
    summary["ratios"] = ratios(summary, systems)
    return summary


#: Other processes using more cores than this during a measurement earn a note.
FOREIGN_WARN = 0.25

HIGHER = ["push_per_s", "batch_per_s", "drain1_per_s", "drain2_per_s"]
LOWER = ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "worker_peak_rss_mib"]
POSTGRES_ONLY = {"push_per_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"}


def ratios(summary: dict[str, Any], systems: list[str]) -> dict[str, Any]:
    """flask_pgtq against the best peer of each column (higher = flask_pgtq better)."""
    if "flask_pgtq" not in systems:
        return {}
    ours = summary["flask_pgtq"]
    out: dict[str, Any] = {}
    for key in HIGHER + LOWER:
        postgres_only = key in POSTGRES_ONLY
        peers = [
            (s, summary[s][key])
            for s in systems
            if s != "flask_pgtq"
            and summary[s][key] is not None
            and (not postgres_only or ALL[s].backend == "postgres")
        ]
        if not peers or ours[key] is None:
            out[key] = {"ratio": None, "best_peer": peers and min(peers, key=lambda p: p[1])[0]}
            continue
        if key in HIGHER:
            peer, value = max(peers, key=lambda p: p[1])
            ratio = ours[key] / value
        else:
            peer, value = min(peers, key=lambda p: p[1])
            ratio = value / ours[key] if ours[key] else None
        out[key] = {
            "best_peer": peer,
            "peer_value": value,
            "ratio": round(ratio, 3) if ratio else None,
            "among": "PostgreSQL peers" if postgres_only else "all peers",
        }
    if summary.get("pgbench_insert_tps") and ours["push_per_s"]:
        out["push_vs_pgbench"] = round(ours["push_per_s"] / summary["pgbench_insert_tps"], 3)
    return out


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


COLUMNS = [
    ("push_per_s", "push/s", 0),
    ("batch_per_s", "batch push/s", 0),
    ("drain1_per_s", "drain 1 proc/s", 0),
    ("drain2_per_s", "drain 2 cores/s", 0),
    ("latency_p50_ms", "p50 ms", 1),
    ("latency_p95_ms", "p95 ms", 1),
    ("latency_p99_ms", "p99 ms", 1),
    ("worker_peak_rss_mib", "RSS MiB", 0),
]


def table(summary: dict[str, Any], systems: list[str]) -> str:
    header = ["system"] + [title for _, title, _ in COLUMNS]
    rows = [[name] + [fmt(summary[name][key], d) for key, _, d in COLUMNS] for name in systems]
    ratio = summary.get("ratios", {})
    if ratio:
        rows.append(
            ["flask_pgtq / best peer"]
            + [
                (f"{ratio[key]['ratio']:.2f}x" if ratio.get(key, {}).get("ratio") else "n/a")
                for key, _, _ in COLUMNS
            ]
        )
        rows.append(
            ["  best peer"]
            + [str(ratio.get(key, {}).get("best_peer") or "-") for key, _, _ in COLUMNS]
        )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    extra = []
    if summary.get("pgbench_insert_tps"):
        extra.append(f"pgbench, 1 client, INSERT commits/s: {summary['pgbench_insert_tps']:,.0f}")
    if ratio.get("push_vs_pgbench"):
        extra.append(f"flask_pgtq single push / pgbench INSERT: {ratio['push_vs_pgbench']:.2f}")
    foreign = [
        summary[n]["foreign_cores_max"]
        for n in systems
        if summary[n].get("foreign_cores_max") is not None
    ]
    if foreign:
        extra.append(
            f"Other processes on the machine used at most {max(foreign)} cores during a "
            "measurement" + (" (see notes)" if max(foreign) > FOREIGN_WARN else "")
        )
    extra.append(
        "Ratios: >1 means flask_pgtq is ahead (for latency and RSS: peer value / ours). "
        "push/s and latency compare with PostgreSQL peers only."
    )
    return "\n".join(lines + [""] + extra)


def sweep_summary(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in systems:
        per_config: dict[str, Any] = {}
        for run in runs:
            configs = run["systems"].get(name, {}).get("sweep", {}).get("configs", {})
            for config, item in configs.items():
                entry = per_config.setdefault(
                    config, {"description": item.get("description"), "per_s": [], "notes": []}
                )
                entry["per_s"].append(item.get("per_s"))
                if item.get("note") or item.get("error"):
                    entry["notes"].append(item.get("note") or item.get("error"))
        for entry in per_config.values():
            entry["median_per_s"] = harness.median(entry["per_s"])
        out[name] = per_config
    return out


def sweep_table(sweep: dict[str, Any]) -> str:
    lines = ["| system | config | drain/s (median) | runs | note |", "|---|---|---:|---:|---|"]
    for name, configs in sweep.items():
        for entry in configs.values():
            lines.append(
                f"| {name} | {entry['description']} | {fmt(entry['median_per_s'])} | "
                f"{len(entry['per_s'])} | {'; '.join(sorted(set(entry['notes'])))[:80]} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--systems", default=",".join(ALL), help="comma-separated")
    parser.add_argument(
        "--measure",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated from {','.join(MEASUREMENTS + EXTRA_MEASUREMENTS)}"
        " (sweep: drain with each candidate 2-core config; not in the default)",
    )
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--push-n", type=int)
    parser.add_argument("--batch-n", type=int)
    parser.add_argument("--drain1-n", type=int)
    parser.add_argument("--drain2-n", type=int)
    parser.add_argument("--latency-samples", type=int)
    parser.add_argument("--latency-gap", type=float, help="mean seconds between pushes")
    parser.add_argument("--pgbench-seconds", type=float, help="0 skips pgbench")
    parser.add_argument("--drain-timeout", type=float, help="seconds per drain at most")
    parser.add_argument(
        "--drain-clock",
        choices=drain.CLOCKS,
        default="body",
        help="body: workers warm and paused, clock from resume to the last task body run"
        " (default); queue: the earlier clock, from the first poll that sees progress to"
        " the queue being empty (for comparison)",
    )
    parser.add_argument("--max-minutes", type=float, help="skip what is left after this")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait, before each measurement, for other processes to go quiet",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SYSTEM:STEP=NAME",
        help="worker config for a drain step, e.g. flask_pgtq:drain2=2x16 (see systems.py)",
    )
    parser.add_argument("--output", default=str(harness.BENCH / "results" / "latest.json"))
    opts = parser.parse_args(argv)
    for key, value in SIZES["quick" if opts.quick else "full"].items():
        if getattr(opts, key, None) is None:
            setattr(opts, key, value)
    opts.deadline = time.monotonic() + opts.max_minutes * 60

    names = [s.strip() for s in opts.systems.split(",") if s.strip()]
    which = [m.strip() for m in opts.measure.split(",") if m.strip()]
    for name in names:
        if name not in ALL:
            parser.error(f"unknown system {name!r}; known: {', '.join(ALL)}")
    for name in which:
        if name not in MEASUREMENTS + EXTRA_MEASUREMENTS:
            parser.error(
                f"unknown measurement {name!r}; known: "
                f"{', '.join(MEASUREMENTS + EXTRA_MEASUREMENTS)}"
            )
    configs: dict[str, dict[str, str]] = {}
    for item in opts.config:
        target, _, config = item.partition("=")
        system, _, step = target.partition(":")
        if system not in ALL or step not in ("drain1", "drain2"):
            parser.error(f"--config {item!r}: expected SYSTEM:drain1=NAME or SYSTEM:drain2=NAME")
        known = ALL[system]().worker_configs()
        if config not in known:
            parser.error(f"--config {item!r}: {system} has configs {', '.join(known)}")
        configs.setdefault(system, {})[step] = config

    atexit.register(PROCS.cleanup)
    global WATCH
    WATCH = harness.CpuWatch()

    def on_signal(signum: int, _frame: Any) -> None:
        log(f"stopping on signal {signum}: killing worker processes")
        PROCS.stop(grace=1.0)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    systems = {name: ALL[name]() for name in names}
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "sizes": {k: getattr(opts, k) for k in SIZES["full"]},
        "batch_size": BATCH_SIZE,
        "drain_clock": opts.drain_clock,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "postgres": harness.server_facts(),
        "redis": _redis_facts(),
        "versions": {},
        "settings": {},
        "configs": {},
    }
    for name, system in systems.items():
        meta["versions"][name] = system.versions()
        worker_configs = system.worker_configs()
        chosen = configs.get(name, {})
        meta["configs"][name] = {
            "drain1": worker_configs[chosen.get("drain1", system.one_process)].description,
            "drain2": worker_configs[chosen.get("drain2", system.two_cores)].description,
            "latency": worker_configs[chosen.get("drain1", system.one_process)].description,
        }
    runs = []
    log(f"sizes: {meta['sizes']}")
    for index in range(1, opts.repeat + 1):
        run: dict[str, Any] = {"index": index, "systems": {}}
        if "flask_pgtq" in systems:
            # The core may change under a long run (others commit): say what each repeat ran.
            run["flask_pgtq_version"] = systems["flask_pgtq"].versions()["flask_pgtq"]
        if opts.pgbench_seconds:
            run["pgbench"] = harness.pgbench_insert_tps(opts.pgbench_seconds)
            log(f"run {index}: pgbench {run['pgbench']}")
        # Interleave: each run visits the systems in a rotated order.
        order = names[(index - 1) % len(names) :] + names[: (index - 1) % len(names)]
        for name in order:
            log(f"run {index}: {name}")
            run["systems"][name] = run_system(systems[name], which, opts, configs.get(name, {}))
        runs.append(run)
    for name, system in systems.items():
        meta["settings"][name] = system.settings()
    summary = summarize(runs, names)
    meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for name in names:
        if ALL[name].backend == "postgres":
            harness.drop_database(ALL[name].dbname)
    text = table(summary, names) if set(which) & set(MEASUREMENTS) else ""
    if "sweep" in which:
        summary["sweep"] = sweep_summary(runs, names)
        text = (text + "\n\n" if text else "") + sweep_table(summary["sweep"])
    print(text)
    for name in names:
        for note in summary[name]["notes"]:
            print(f"note: {name}: {note}")
    output = Path(opts.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs, "table": text}, indent=2) + "\n"
    )
    log(f"wrote {output}")
    return 0


def _redis_facts() -> dict[str, Any]:
    try:
        import redis

        client = redis.Redis.from_url(harness.REDIS_URL)
        info = client.info("server")
        persistence = client.config_get("save")
        aof = client.config_get("appendonly")
        client.close()
        return {"version": info.get("redis_version"), **persistence, **aof}
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


if __name__ == "__main__":
    sys.exit(main())
