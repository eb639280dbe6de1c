"""flask_pgtq scale-out: more worker processes against one PostgreSQL, and workers
on "separate hosts" (network namespaces on this machine).

    python bench/scaleout.py                    # both parts, about 8 minutes
    python bench/scaleout.py --part local       # 1, 2, 4, 8 processes on 127.0.0.1:5432
    python bench/scaleout.py --part netns       # namespaces + veth, throwaway server

* **local**: drain throughput of a pre-filled queue with 1, 2, 4 and 8 worker
  processes (default concurrency, and ``-c 256``) on the shared server, database
  ``bench_scaleout``; connections per worker process from ``pg_stat_activity``
  (application_name ``flask_pgtq:<pid>`` and ``flask_pgtq-listen:<pid>``).
* **netns**: a throwaway PostgreSQL server runs in namespace ``pgtqb-db``;
  workers run in ``pgtqb-w1`` and ``pgtqb-w2``, each joined to it by a veth
  pair (10.231.1.0/24, 10.231.2.0/24: addresses that exist only inside these
  namespaces).  Links compared: workers on the database's own host (its
  loopback), over veth, and over veth through a delay proxy
  (bench/delay_proxy.py; the kernel here has no netem) adding 0 and
  ``--delay-ms`` per round trip.  Everything is removed at the end, on error
  and on SIGTERM/SIGINT.

Writes ``bench/results/scaleout.json``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import subprocess
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
    connections_per_process,
    install_signal_handlers,
    log,
    measure_rate,
    meta,
    write_json,
)

DBNAME = "bench_scaleout"
PROCS = harness.Processes()
WATCH = harness.CpuWatch()
NS_DB = "pgtqb-db"
NS_WORKERS = ["pgtqb-w1", "pgtqb-w2"]
SUBNET = "10.231"
PROXY_PORT_OFFSET = 1
STATE: dict[str, Any] = {"server": None, "netns": False}


def measure_drain(
    queue: Queue, workers: Workers, drain: int, timeout: float, idle_wait: float = 1.5
) -> dict[str, Any]:
    """Pre-fill, start *workers*, time *drain* tasks; sample connections."""
    queue.truncate()
    queue.fill(drain + 20_000)
    queue.execute("VACUUM ANALYZE pgtq_tasks")
    harness.checkpoint()
    seen: dict[str, int] = {}
    last = [0.0]

    def sample() -> None:
        if time.monotonic() - last[0] < 0.5:
            return
        last[0] = time.monotonic()
        for name, count in queue.connections().items():
            seen[name] = max(seen.get(name, 0), count)

    quiet = WATCH.wait_quiet(20.0)
    WATCH.start()
    with Running(PROCS, workers) as running:
        rate = measure_rate(running, queue.succeeded, target=drain, timeout=timeout, sample=sample)
        load = WATCH.stop()
        sample()
        busy = connections_per_process(seen)
        # Then idle: drain what is left, wait, look again.
        harness.wait_until(lambda: queue.not_done() == 0, 30.0, 0.1)
        time.sleep(idle_wait)
        idle = connections_per_process(queue.connections())
        rate["rss"] = running.rss()
    return {
        "description": workers.describe(),
        "processes": workers.processes,
        "concurrency": workers.concurrency,
        **rate,
        "connections_busy_max": busy,
        "connections_idle": idle,
        "load": {**load, **quiet},
    }


# -- local: 1..8 processes -----------------------------------------------------------


def run_local(opts: argparse.Namespace) -> dict[str, Any]:
    harness.recreate_database(DBNAME)
    dsn = harness.libpq_dsn(DBNAME)
    queue = Queue(dsn)
    queue.init_db()
    runs = []
    try:
        for rep in range(opts.repeat):
            procs = opts.processes if rep % 2 == 0 else list(reversed(opts.processes))
            for p in procs:
                for c in opts.concurrency:
                    workers = Workers(processes=p, concurrency=c, dsn=dsn)
                    log(f"local: repeat {rep + 1}, {workers.describe()}")
                    item = measure_drain(queue, workers, opts.drain, opts.drain_timeout)
                    item["repeat"] = rep + 1
                    runs.append(item)
                    log(
                        f"  {item['per_s']:,.0f} tasks/s; connections per process busy"
                        f" {item['connections_busy_max']['max_per_process']}, idle"
                        f" {item['connections_idle']['max_per_process']}"
                        f" (other processes {item['load']['foreign_cores']} cores)"
                    )
    finally:
        queue.close()
        harness.drop_database(DBNAME)
    rows = []
    for p in opts.processes:
        for c in opts.concurrency:
            items = [r for r in runs if r["processes"] == p and r["concurrency"] == c]
            rows.append(
                {
                    "processes": p,
                    "concurrency": c,
                    "description": items[0]["description"],
                    "per_s": [r["per_s"] for r in items],
                    "median_per_s": harness.median([r["per_s"] for r in items]),
                    "connections_per_process_busy": max(
                        r["connections_busy_max"]["max_per_process"] or 0 for r in items
                    ),
                    "connections_per_process_idle": max(
                        r["connections_idle"]["max_per_process"] or 0 for r in items
                    ),
                    "connections_total_busy": max(
                        r["connections_busy_max"]["total"] for r in items
                    ),
                    "foreign_cores_max": max(r["load"]["foreign_cores"] for r in items),
                }
            )
    return {"runs": runs, "rows": rows}


def local_table(local: dict[str, Any]) -> str:
    lines = [
        "| worker processes | per process | drain/s (median) | connections per process"
        " busy / idle | connections in all |",
        "|---:|---|---:|---|---:|",
    ]
    for row in local["rows"]:
        c = "default (-c 1)" if row["concurrency"] is None else f"-c {row['concurrency']}"
        lines.append(
            f"| {row['processes']} | {c} | {row['median_per_s']:,.0f} |"
            f" {row['connections_per_process_busy']} / {row['connections_per_process_idle']} |"
            f" {row['connections_total_busy']} |"
        )
    return "\n".join(lines)


# -- netns: separate hosts -----------------------------------------------------------


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def netns_down() -> None:
    """Remove our namespaces (their veth ends go with them)."""
    for ns in [NS_DB, *NS_WORKERS]:
        sh("ip", "netns", "del", ns, check=False)
    STATE["netns"] = False


def netns_up() -> None:
    netns_down()  # leftovers of an earlier, killed run: only our own names
    STATE["netns"] = True
    for ns in [NS_DB, *NS_WORKERS]:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for k, ns in enumerate(NS_WORKERS, start=1):
        db_end, worker_end = f"pgtqb-d{k}", f"pgtqb-v{k}"
        sh(
            "ip",
            "link",
            "add",
            db_end,
            "netns",
            NS_DB,
            "type",
            "veth",
            "peer",
            "name",
            worker_end,
            "netns",
            ns,
        )
        sh("ip", "-n", NS_DB, "addr", "add", f"{SUBNET}.{k}.1/24", "dev", db_end)
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{k}.2/24", "dev", worker_end)
        sh("ip", "-n", NS_DB, "link", "set", db_end, "up")
        sh("ip", "-n", ns, "link", "set", worker_end, "up")


def netem_available() -> str:
    """Whether ``tc qdisc ... netem`` works here (it needs the kernel's sch_netem)."""
    out = sh(
        "ip",
        "netns",
        "exec",
        NS_WORKERS[0],
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "netem",
        "delay",
        "1ms",
        check=False,
    )
    if out.returncode == 0:
        sh(
            "ip",
            "netns",
            "exec",
            NS_WORKERS[0],
            "tc",
            "qdisc",
            "del",
            "dev",
            "lo",
            "root",
            check=False,
        )
        return "yes"
    return f"no: {out.stderr.strip()}"


RTT_SCRIPT = """
import json, statistics, sys, time
import psycopg2
conn = psycopg2.connect(sys.argv[1]); conn.autocommit = True; cur = conn.cursor()
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); cur.execute("SELECT 1"); cur.fetchone()
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print(json.dumps({"median_ms": round(statistics.median(times), 3),
                  "p95_ms": round(times[int(len(times) * 0.95)], 3)}))
"""


def round_trip(ns: str, dsn: str, n: int = 300) -> dict[str, Any]:
    out = sh(
        "ip", "netns", "exec", ns, harness.python(), "-c", RTT_SCRIPT, dsn, str(n), check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout)


def run_netns(opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        netns_up()
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        netns_down()
        return {"error": f"could not create network namespaces: {exc}"}
    out["netem"] = netem_available()
    listen = ",".join(["127.0.0.1"] + [f"{SUBNET}.{k}.1" for k in (1, 2)])
    server = ThrowawayServer(
        listen=listen,
        settings={"max_connections": "200"},
        hba=[f"host all all {SUBNET}.0.0/16 trust"],
        netns=NS_DB,
    )
    STATE["server"] = server
    server.start()
    # The throwaway server's CPU is the benchmark's, not "other processes".
    WATCH.roots.add(int((server.datadir / "postmaster.pid").read_text().split()[0]))
    out["server"] = server.facts()
    server.create_database(DBNAME)
    queue = Queue(server.socket_dsn(DBNAME))
    queue.init_db()
    port = server.port
    proxy_port = port + PROXY_PORT_OFFSET

    def proxies(delay_ms: float) -> list[Any]:
        procs = []
        for k in (1, 2):
            addr = f"{SUBNET}.{k}.1"
            procs.append(
                PROCS.start(
                    [
                        "ip",
                        "netns",
                        "exec",
                        NS_DB,
                        harness.python(),
                        str(harness.BENCH / "delay_proxy.py"),
                        addr,
                        str(proxy_port),
                        "127.0.0.1",
                        str(port),
                        str(delay_ms / 2),
                    ]
                )
            )
        time.sleep(1.0)
        return procs

    links = [
        (
            "same host (db namespace, loopback)",
            [NS_DB],
            [f"dbname={DBNAME} user=postgres host=127.0.0.1 port={port}"],
            None,
        ),
        (
            "separate hosts (2 namespaces, veth)",
            NS_WORKERS,
            [f"dbname={DBNAME} user=postgres host={SUBNET}.{k}.1 port={port}" for k in (1, 2)],
            None,
        ),
    ]
    if opts.delay_ms is not None:
        for delay in (0.0, opts.delay_ms):
            links.append(
                (
                    f"separate hosts, veth + delay proxy ({delay / 2:g} ms each way asked)",
                    NS_WORKERS,
                    [
                        f"dbname={DBNAME} user=postgres host={SUBNET}.{k}.1 port={proxy_port}"
                        for k in (1, 2)
                    ],
                    delay,
                )
            )
    runs = []
    try:
        for rep in range(opts.repeat):
            shift = rep % len(links)
            for label, namespaces, dsns, delay in links[shift:] + links[:shift]:
                proxy_procs = proxies(delay) if delay is not None else []
                try:
                    rtt = round_trip(namespaces[0], dsns[0])
                    log(f"netns: repeat {rep + 1}, {label}: SELECT 1 round trip {rtt}")
                    for p, c in opts.netns_configs:
                        workers = Workers(
                            processes=p,
                            concurrency=c,
                            prefixes=[["ip", "netns", "exec", ns] for ns in namespaces],
                            dsns=dsns,
                        )
                        item = measure_drain(queue, workers, opts.drain, opts.drain_timeout)
                        item.update(
                            link=label, round_trip=rtt, namespaces=namespaces, repeat=rep + 1
                        )
                        runs.append(item)
                        log(
                            f"  {workers.describe()}: {item['per_s']:,.0f} tasks/s"
                            f" (other processes {item['load']['foreign_cores']} cores)"
                        )
                finally:
                    PROCS.stop(proxy_procs)
    finally:
        queue.close()
        server.stop()
        STATE["server"] = None
        netns_down()
    out["links"] = [label for label, *_ in links]
    out["runs"] = runs
    return out


def netns_table(netns: dict[str, Any]) -> str:
    if "error" in netns:
        return f"netns: {netns['error']}"
    lines = [
        "| link | SELECT 1 round trip ms (median) | workers | drain/s (median) |",
        "|---|---:|---|---:|",
    ]
    runs = netns["runs"]
    for link in netns.get("links") or dict.fromkeys(r["link"] for r in runs):
        mine = [r for r in runs if r["link"] == link]
        rtts = [r["round_trip"].get("median_ms") for r in mine]
        rtt = harness.median(rtts)
        for description in dict.fromkeys(r["description"] for r in mine):
            rates = [r["per_s"] for r in mine if r["description"] == description]
            spaces = len(mine[0]["namespaces"])
            where = "" if spaces == 1 else f", in {spaces} namespaces"
            lines.append(
                f"| {link} | {'n/a' if rtt is None else f'{rtt:.3f}'} |"
                f" {description}{where} | {harness.median(rates):,.0f} |"
            )
    lines.append("")
    lines.append(f"netem in this kernel: {netns['netem']}")
    return "\n".join(lines)


def cleanup() -> None:
    PROCS.cleanup()
    server = STATE.get("server")
    if server is not None:
        with contextlib.suppress(Exception):
            server.stop()
        STATE["server"] = None
    if STATE.get("netns"):
        netns_down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="local,netns")
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument(
        "--concurrency", default="default,256", help="per process; 'default' = not given"
    )
    parser.add_argument("--drain", type=int, default=40_000)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=1.0,
        help="round trip added by the delay proxy; negative: no proxy runs",
    )
    parser.add_argument(
        "--netns-configs",
        default="2xdefault,2x256,4xdefault",
        help="PROCESSESxCONCURRENCY for the namespace runs",
    )
    parser.add_argument("--quick", action="store_true", help="smaller drains, one repeat")
    parser.add_argument("--output", default=str(harness.BENCH / "results" / "scaleout.json"))
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.drain, opts.repeat = 15_000, 1
    if opts.delay_ms is not None and opts.delay_ms < 0:
        opts.delay_ms = None
    opts.processes = [int(p) for p in opts.processes.split(",")]
    opts.concurrency = [None if c == "default" else int(c) for c in opts.concurrency.split(",")]
    opts.netns_configs = [
        (int(p), None if c == "default" else int(c))
        for p, c in (item.split("x") for item in opts.netns_configs.split(","))
    ]
    atexit.register(cleanup)
    install_signal_handlers(PROCS, cleanup)
    data: dict[str, Any] = {
        "meta": meta(sys.argv[1:]),
        "settings": {k: v for k, v in vars(opts).items()},
    }
    text = []
    parts = opts.part.split(",")
    if "local" in parts:
        data["local"] = run_local(opts)
        text.append(local_table(data["local"]))
    if "netns" in parts:
        data["netns"] = run_netns(opts)
        text.append(netns_table(data["netns"]))
    data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data["table"] = "\n\n".join(text)
    print(data["table"])
    write_json(Path(opts.output), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
