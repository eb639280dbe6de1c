"""Time a drain: *n* tasks through a system's workers, with one of two clocks.

``body`` (the default): the workers start on an empty queue and each runs a
warm-up task; then they are paused (SIGSTOP to each worker's process group),
the queue is filled with *n* tasks, and the clock starts when they are resumed
(SIGCONT).  It stops when the last of the *n* task bodies has run, as the
body itself recorded it (``bench/apps/body.py``).  The same event ends every
system's clock, whatever the system writes to its queue after a body (an
outcome, a log row) and whenever it does it; worker start-up is outside the
window for every system.

``queue`` (before this module, kept for comparison): the queue is filled
first, the workers start, the clock starts at the first poll of the system's
queue that sees fewer than *n* tasks left and stops when the queue says
nothing is queued or running.  Its start and end are each system's own
bookkeeping, not the bodies: for pgqueuer the first sign of progress is the
first flush of its completion log, after each worker has already claimed a
batch (2,000 rows at ``--batch-size 2000``) and run most of it; for Celery
the end comes before the last bodies (tasks are acked when they start).  The
bodies record in this mode too, so its result also says when the last body
ran.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from . import harness
from .apps.body import Record, read_records
from .systems import System, WorkerConfig

CLOCKS = ("body", "queue")

#: Warm-up: tasks pushed one at a time until every worker has run one, at most.
WARMUP_TASKS = 200


class Drain:
    """One drain measurement; ``run()`` returns its result as a dict."""

    def __init__(
        self,
        system: System,
        config: WorkerConfig,
        n: int,
        timeout: float,
        processes: harness.Processes,
        watch: harness.CpuWatch | None,
    ) -> None:
        self.system = system
        self.config = config
        self.n = n
        self.timeout = timeout
        self.processes = processes
        self.watch = watch
        self.procs: list[Any] = []
        shm = Path("/dev/shm")
        self.body_dir = Path(
            tempfile.mkdtemp(prefix="pgtq-bench-body-", dir=shm if shm.is_dir() else None)
        )
        self.result: dict[str, Any] = {
            "config": config.name,
            "description": config.description,
            "processes": config.processes,
            "tasks": n,
        }

    # -- pieces shared by both clocks ---------------------------------------------

    def records(self) -> list[Record]:
        return read_records(self.body_dir)

    def bodies(self) -> int:
        return sum(r.count for r in self.records())

    def start_workers(self) -> float:
        env = dict(self.config.env, BENCH_BODY_DIR=str(self.body_dir))
        launched = time.monotonic()
        self.procs = [self.processes.start(argv, env) for argv in self.config.argvs]
        return launched

    def exited_error(self) -> str | None:
        dead = harness.first_exited(self.procs)
        if dead is None:
            return None
        return f"worker exited with {dead.returncode}: {self.processes.log_tail(dead)}"

    def watch_start(self) -> None:
        if self.watch is not None:
            self.watch.start()

    def watch_stop(self) -> None:
        if self.watch is not None:
            self.result.setdefault("load", {}).update(self.watch.stop())

    def wait_bodies(self, want: int, deadline: float, interval: float) -> bool:
        """Poll the records until *want* bodies ran; False at *deadline* or a dead worker."""
        while self.bodies() < want:
            if time.monotonic() > deadline or harness.first_exited(self.procs) is not None:
                return False
            time.sleep(interval)
        return True

    def queue_empty_seen(self) -> tuple[float | None, bool]:
        """Poll the system's queue until it says it is empty: when, and whether at
        the first look (then it may have been empty earlier)."""
        first_look = True
        deadline = time.monotonic() + 10
        while self.system.busy():
            first_look = False
            if time.monotonic() > deadline:
                return None, False
            time.sleep(0.002)
        return time.monotonic(), first_look

    def finish(self) -> None:
        self.result["failed"] = self.system.failed()
        self.result["rss"] = harness.worker_peak_rss_mib(self.procs)

    def run(self, clock: str) -> dict[str, Any]:
        self.result["clock"] = clock
        try:
            self.system.reset()
            (self.run_body if clock == "body" else self.run_queue)()
            return self.result
        finally:
            self.processes.stop(self.procs)
            shutil.rmtree(self.body_dir, ignore_errors=True)

    # -- clock: the last body ----------------------------------------------------

    def warm_up(self, launched: float) -> bool:
        """Push one task at a time until every worker process group has run one."""
        sessions = {proc.pid for proc in self.procs}
        deadline = time.monotonic() + 60
        pushed = 0
        while True:
            ran = {r.session for r in self.records()}
            if sessions <= ran:
                break
            if pushed >= WARMUP_TASKS or time.monotonic() > deadline:
                self.result["note"] = (
                    f"{len(sessions - ran)} of {len(sessions)} workers ran none of "
                    f"{pushed} warm-up tasks; they had started, the clock starts anyway"
                )
                break
            error = self.exited_error()
            if error is not None:
                self.result["error"] = error
                return False
            self.system.prefill(1)
            pushed += 1
            self.wait_bodies(pushed, min(deadline, time.monotonic() + 2), 0.002)
        self.result["startup_s"] = round(time.monotonic() - launched, 3)
        self.result["warmup_tasks"] = pushed
        # Let the last warm-up's outcome be written before the workers are paused.
        harness.wait_until(lambda: not self.system.busy(), 5.0, 0.01)
        time.sleep(0.2)
        return True

    def run_body(self) -> None:
        launched = self.start_workers()
        if not self.warm_up(launched):
            return
        harness.signal_groups(self.procs, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            self.system.prefill(self.n)
            harness.checkpoint()
            before = {r.pid: r.count for r in self.records()}
            self.result["paused_s"] = round(time.monotonic() - paused, 3)
            self.watch_start()
            t1 = time.monotonic()
        finally:
            harness.signal_groups(self.procs, signal.SIGCONT)
        want = sum(before.values()) + self.n
        complete = self.wait_bodies(want, t1 + self.timeout, 0.005)
        self.watch_stop()
        empty, first_look = self.queue_empty_seen() if complete else (None, False)
        time.sleep(0.05)  # the records are final once every body ran; read them at rest
        records = self.records()
        done = sum(r.count for r in records) - sum(before.values())
        window = [r for r in records if r.count > before.get(r.pid, 0)]
        if not window:
            self.result["error"] = self.exited_error() or "no task ran"
            return
        t2 = max(r.last for r in window)
        self.result.update(
            seconds=round(t2 - t1, 4),
            per_s=round(done / (t2 - t1), 1) if t2 > t1 else None,
            bodies=done,
            per_worker=_per_worker(records, before, self.procs),
        )
        load = self.result.get("load", {})
        if done and "server_cpu_s" in load:
            # CPU per task run, by side (the window runs to the last body,
            # so work a system defers past it, such as pgqueuer's log
            # flush, is not counted).
            self.result["cpu_us_per_task"] = {
                side: round(load[f"{side}_cpu_s"] * 1e6 / done, 1)
                for side in ("server", "kernel", "client")
            }
        if not complete:
            error = self.exited_error()
            if error is not None:
                self.result["error"] = error
            else:
                self.result["note"] = (
                    f"stopped after {self.timeout:.0f} s with {self.n - done} of {self.n} "
                    "bodies not run; rate is over what ran"
                )
        elif empty is not None:
            # Not the clock: how the queue's own "done" relates to the bodies'.
            self.result["queue_empty_s_after_last_body"] = round(empty - t2, 4)
            self.result["queue_empty_at_first_look"] = first_look
        self.finish()

    # -- clock: the queue (before) -------------------------------------------------

    def run_queue(self) -> None:
        n = self.n
        self.system.prefill(n)
        harness.checkpoint()
        self.watch_start()
        t_launch = self.start_workers()
        startup_deadline = time.monotonic() + 60
        while True:
            before = time.monotonic()
            left = self.system.remaining()
            t1 = (before + time.monotonic()) / 2
            if left < n:
                break
            error = self.exited_error()
            if error is not None:
                self.result["error"] = error
                return
            if time.monotonic() > startup_deadline:
                self.result["error"] = "no task started within 60 s"
                return
            time.sleep(0.02)
        bodies_at_t1 = self.bodies()
        self.result["startup_s"] = round(t1 - t_launch, 3)
        deadline = t1 + self.timeout
        while self.system.busy():
            if time.monotonic() > deadline or harness.first_exited(self.procs) is not None:
                break
            time.sleep(0.005)
        t2 = time.monotonic()
        self.watch_stop()
        end_left = self.system.remaining() if self.system.busy() else 0
        done = left - end_left
        self.result.update(
            start_left=left,
            seconds=round(t2 - t1, 4),
            per_s=round(done / (t2 - t1), 1) if t2 > t1 and done > 0 else None,
        )
        if end_left:
            error = self.exited_error()
            if error is None:
                self.result["note"] = (
                    f"stopped after {self.timeout:.0f} s with {end_left} of {n} left; "
                    "rate is over what finished"
                )
            else:
                self.result["error"] = error
        if left == 0:
            self.result["error"] = "drained before the first poll: use a larger size"
            self.result["per_s"] = None
        # What the bodies say about the same run (see the module docstring).
        harness.wait_until(lambda: self.bodies() >= n, 5.0, 0.01)
        records = self.records()
        if records:
            first = min(r.first for r in records)
            last = max(r.last for r in records)
            self.result["bodies"] = {
                "ran": sum(r.count for r in records),
                "ran_before_clock_start": bodies_at_t1,
                "first_body_s_after_launch": round(first - t_launch, 4),
                "last_body_s_after_launch": round(last - t_launch, 4),
                "queue_empty_s_after_last_body": round(t2 - last, 4),
                "per_s_launch_to_last_body": round(n / (last - t_launch), 1),
                "per_s_first_to_last_body": round(n / (last - first), 1) if last > first else None,
            }
        self.finish()


def _per_worker(records: list[Record], before: dict[int, int], procs: list[Any]) -> list[int]:
    """Bodies each worker (process group) ran inside the window, in start order."""
    counts = {proc.pid: 0 for proc in procs}
    for r in records:
        counts[r.session] = counts.get(r.session, 0) + r.count - before.get(r.pid, 0)
    return list(counts.values())


def measure(
    system: System,
    config: WorkerConfig,
    n: int,
    timeout: float,
    *,
    clock: str,
    processes: harness.Processes,
    watch: harness.CpuWatch | None,
) -> dict[str, Any]:
    """Fill the queue with *n* no-ops, run the workers of *config*, time the drain."""
    return Drain(system, config, n, timeout, processes, watch).run(clock)
