"""Plumbing shared by the measurements: processes, databases, statistics."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def libpq_dsn(dbname: str) -> str:
    return f"dbname={dbname} user={PG_USER} host={PG_HOST} port={PG_PORT}"


def uri_dsn(dbname: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


# -- processes -----------------------------------------------------------------


class Processes:
    """Worker subprocesses, each in its own session so that the whole tree
    (Celery's pool children, RQ's work horses) can be signalled at once."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="pgtq-bench-"))
        self.logs: dict[int, Path] = {}
        self._count = 0

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start(
        self, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self._count += 1
        path = self.log_dir / f"{self._count:03d}.log"
        log = open(path, "wb")  # noqa: SIM115
        log.write((" ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.logs[proc.pid] = path
        self.procs.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        path = self.logs.get(proc.pid)
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(
        self, procs: Sequence[subprocess.Popen[bytes]] | None = None, grace: float = 5.0
    ) -> None:
        """SIGTERM each process group, then SIGKILL what is left after *grace*."""
        targets = list(self.procs if procs is None else procs)
        for proc in targets:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                    # A drain may have stopped the group (SIGSTOP): let it see the TERM.
                    os.killpg(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + grace
        for proc in targets:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in targets:
            # The group may outlive its leader (pool children): kill it regardless.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for proc in targets:
            if proc in self.procs:
                self.procs.remove(proc)

    def cleanup(self) -> None:
        self.stop(grace=3.0)
        shutil.rmtree(self.log_dir, ignore_errors=True)


def first_exited(procs: Sequence[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes] | None:
    """The first of *procs* that has exited, if any."""
    for proc in procs:
        if proc.poll() is not None:
            return proc
    return None


def signal_groups(procs: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    """Send *signum* to each worker's whole process group (its session)."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)


def tree_pids(pid: int) -> list[int]:
    """*pid* and all its descendants."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return [pid] + [child.pid for child in proc.children(recursive=True)]
    except Exception:
        return [pid]


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of one process, in KiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def worker_peak_rss_mib(procs: Sequence[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Largest VmHWM of any process in the workers' trees, and the tree total."""
    peaks = []
    for proc in procs:
        for pid in tree_pids(proc.pid):
            kib = peak_rss_kib(pid)
            if kib:
                peaks.append(kib)
    if not peaks:
        return {"max_process_mib": None, "tree_total_mib": None, "processes": 0}
    return {
        "max_process_mib": round(max(peaks) / 1024, 1),
        "tree_total_mib": round(sum(peaks) / 1024, 1),
        "processes": len(peaks),
    }


def worker_rss_mib(procs: Sequence[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Resident set *now* of each process in the workers' trees (psutil), its
    largest and the tree total, and the largest peak so far (VmHWM)."""
    import psutil

    now: list[float] = []
    peaks: list[int] = []
    for proc in procs:
        for pid in tree_pids(proc.pid):
            with contextlib.suppress(psutil.Error):
                now.append(psutil.Process(pid).memory_info().rss / 1048576)
            kib = peak_rss_kib(pid)
            if kib:
                peaks.append(kib)
    return {
        "per_process_mib": [round(mib, 1) for mib in now],
        "max_process_mib": round(max(now), 1) if now else None,
        "tree_total_mib": round(sum(now), 1) if now else None,
        "peak_max_process_mib": round(max(peaks) / 1024, 1) if peaks else None,
        "processes": len(now),
    }


# -- PostgreSQL ----------------------------------------------------------------


def admin_connect() -> Any:
    conn = psycopg2.connect(libpq_dsn("postgres"))
    conn.autocommit = True
    return conn


def recreate_database(name: str) -> None:
    """Drop (forcing off any session) and create an empty database."""
    if not re.fullmatch(r"bench_[a-z0-9_]+", name):
        raise ValueError(f"refusing to drop a database not named bench_*: {name!r}")
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_database(name: str) -> None:
    if not re.fullmatch(r"bench_[a-z0-9_]+", name):
        raise ValueError(f"refusing to drop a database not named bench_*: {name!r}")
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def sql(dbname: str, query: str, params: object = None) -> list[tuple[Any, ...]]:
    """Run one statement on database *dbname* (autocommit); its rows, if any."""
    conn = psycopg2.connect(libpq_dsn(dbname))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def checkpoint() -> None:
    """Flush dirty buffers now, so that a checkpoint is less likely mid-measurement."""
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
    finally:
        conn.close()


def server_facts() -> dict[str, Any]:
    conn = admin_connect()
    facts: dict[str, Any] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version()")
            facts["version"] = cur.fetchone()[0]
            for name in (
                "shared_buffers",
                "synchronous_commit",
                "fsync",
                "wal_level",
                "max_connections",
                "checkpoint_timeout",
                "max_wal_size",
            ):
                cur.execute(f"SHOW {name}")
                facts[name] = cur.fetchone()[0]
    finally:
        conn.close()
    return facts


class SqlProbe:
    """One autocommit connection for polling a queue's tables."""

    def __init__(self, dbname: str) -> None:
        self.conn = psycopg2.connect(libpq_dsn(dbname))
        self.conn.autocommit = True

    def value(self, sql: str) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


def pgbench_insert_tps(seconds: float) -> dict[str, Any]:
    """Single-client INSERT commits/s, simple protocol, on a one-table database."""
    binary = find_pgbench()
    if binary is None:
        return {"error": "pgbench not found"}
    dbname = "bench_pgbench"
    recreate_database(dbname)
    conn = psycopg2.connect(libpq_dsn(dbname))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE bench_insert (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
            " payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
    conn.close()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO bench_insert (payload) VALUES ('[1]');\n")
    checkpoint()
    try:
        out = subprocess.run(
            [
                binary,
                "-h",
                PG_HOST,
                "-p",
                str(PG_PORT),
                "-U",
                PG_USER,
                "-n",
                "-c",
                "1",
                "-j",
                "1",
                "-T",
                str(max(1, round(seconds))),
                "-f",
                script.name,
                dbname,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
        drop_database(dbname)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    if not match:
        return {"error": (out.stdout + out.stderr)[-500:]}
    return {"tps": float(match.group(1)), "binary": binary}


# -- statistics and waiting ------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100)."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def python() -> str:
    return sys.executable


def venv_script(name: str) -> str:
    """A console script installed next to this interpreter."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


# -- other load on the machine ---------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks used so far), from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _service_pids() -> set[int]:
    """The PostgreSQL postmaster and the Redis server that the benchmark uses."""
    pids = set()
    with contextlib.suppress(Exception):
        conn = admin_connect()
        with conn.cursor() as cur:
            cur.execute("SHOW data_directory")
            data_dir = cur.fetchone()[0]
        conn.close()
        pids.add(int(Path(data_dir, "postmaster.pid").read_text().split()[0]))
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        pids.add(int(client.info("server")["process_id"]))
        client.close()
    return pids


class CpuWatch:
    """CPU used during a window by the benchmark (this process and its workers, the
    PostgreSQL server and Redis) and by everything else ("foreign"): other people's
    test runs on a shared machine distort the numbers, so each measurement says how
    much else was running."""

    def __init__(self) -> None:
        self.services = _service_pids()
        self.roots = {os.getpid(), 2} | self.services  # 2: kernel threads
        self._t0 = 0.0
        self._s0: dict[int, tuple[int, int]] = {}

    def _root(self, pid: int, table: dict[int, tuple[int, int]]) -> int | None:
        """The root of ours that *pid* descends from, or ``None``."""
        for _ in range(64):
            if pid in self.roots:
                return pid
            parent = table.get(pid)
            if parent is None or parent[0] in (0, pid):
                return None
            pid = parent[0]
        return None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._s0 = _process_table()

    def stop(self) -> dict[str, float]:
        table = _process_table()
        wall = max(1e-6, time.monotonic() - self._t0)
        ours = foreign = servers = kernel = 0
        for pid, (_, ticks) in table.items():
            used = max(0, ticks - self._s0.get(pid, (0, 0))[1])
            root = self._root(pid, table)
            if root is None:
                foreign += used
                continue
            ours += used
            if root in self.services:
                servers += used
            elif root == 2:
                kernel += used
        return {
            "bench_cores": round(ours / CLOCK_TICKS / wall, 2),
            "foreign_cores": round(foreign / CLOCK_TICKS / wall, 2),
            # CPU seconds of the benchmark's part, split: the PostgreSQL and
            # Redis servers (every backend), kernel threads (I/O, WAL
            # flushes), and the rest (workers, the harness and its pushes).
            # Ticks of processes that exited inside the window are lost.
            "server_cpu_s": round(servers / CLOCK_TICKS, 3),
            "kernel_cpu_s": round(kernel / CLOCK_TICKS, 3),
            "client_cpu_s": round((ours - servers - kernel) / CLOCK_TICKS, 3),
        }

    def wait_quiet(self, max_wait: float, threshold: float = 0.15) -> dict[str, float]:
        """Wait (up to *max_wait* s) until other processes use under *threshold* cores."""
        deadline = time.monotonic() + max_wait
        waited = time.monotonic()
        while True:
            self.start()
            time.sleep(0.5)
            load = self.stop()
            if load["foreign_cores"] < threshold or time.monotonic() >= deadline:
                return {
                    "foreign_cores_before": load["foreign_cores"],
                    "waited_s": round(time.monotonic() - waited - 0.5, 1),
                }
