"""The worker: claims tasks, runs them in handler threads, records outcomes.

One main thread talks to the database: it claims as many tasks as there are
free handler threads in one statement per queue, records finished attempts
in one statement per batch, rescues tasks of dead workers, prunes old ones
and fires periodic schedules.  A heartbeat thread renews this worker's lease
whatever the handlers do.  Between rounds the main thread sleeps in
``select()`` on a LISTEN connection (new tasks, cancel requests) and a pipe
(finished tasks, signals); polling every ``PGTQ_POLL_INTERVAL`` seconds is
the correctness path, LISTEN only a hint.  An ``isolated=True`` handler
runs in a child process that its handler thread waits for
(:mod:`flask_pgtq.isolation`).  An ``async def`` handler runs on the
worker's one event loop (:mod:`flask_pgtq.aio`): the handler thread that
takes it from the inbox hands it over and takes the next task.

``concurrency`` caps the tasks running at once, of both kinds together:
one semaphore holds that many slots.  A handler thread takes a slot before
it takes a task from the inbox; a sync task gives it back when it ends, an
async task when its attempt on the loop ends.  So ``concurrency`` async
tasks may wait on the loop at once (the threads then wait for a slot),
and never more than ``concurrency`` tasks of either kind run.

Database outages never end the worker: every step retries with capped,
jittered backoff, and the LISTEN connection is rebuilt and health-checked.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from queue import SimpleQueue
from typing import Any

from . import aio, isolation, queries, schema, signals
from .config import queue_list
from .control import Control
from .exceptions import (
    DatabaseError,
    SchemaNotReady,
    TaskCancelled,
    TaskTimeout,
)
from .listener import Listener
from .outcomes import Outcomes
from .pacing import LimitTimer, Prefetch
from .periodic import Schedule, Scheduler
from .queue import decode_claimed, new_owner_id
from .runner import Runner
from .schedules import stored_for
from .task import State, Task
from .values import Outcome
from .watchdog import Watchdog

log = logging.getLogger("flask_pgtq.worker")

#: Reconnect backoff: first delay and cap, in seconds (jittered).
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 1.0
#: Exit code asking for a fresh process: a handler could not be stopped.
EXIT_RESTART = 75
#: Finished attempts that make a handler thread wake the main thread even
#: while it still has tasks to run; and the longest an outcome waits.
FLUSH_BATCH = 64
FLUSH_DELAY = 0.02
#: The interpreter's thread switch interval while a worker runs (seconds;
#: Python's default is 0.005).  The main thread sends each round and is
#: woken when the handler threads run low; with the default it then waited
#: up to 5 ms for the GIL held by a busy handler thread, a round's worth of
#: idle database each time (one process drained 24,000 tasks/s, 27,000 with
#: this; ``bench/README.md``).
SWITCH_INTERVAL = 0.0005


class Worker:
    """One worker process's loop.  Build it with :func:`main_loop` or the CLI.

    :param runner: runs and records tasks for one app.
    :param queues: queue names to serve; claimed in turn, so a flood in one
        does not starve the others.
    :param concurrency: handler threads.
    :param burst: exit once nothing is ready (and nothing runs).
    :param max_tasks: exit after this many tasks (between tasks).
    :param max_memory_mb: exit (between tasks) once the process's resident
        memory exceeds this many MiB.
    :param schedules: periodic schedules; those of served queues are fired.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        queues: Iterable[str],
        concurrency: int,
        burst: bool = False,
        max_tasks: int | None = None,
        max_memory_mb: float | None = None,
        schedules: Iterable[Schedule] = (),
    ) -> None:
        self.runner = runner
        self.store = runner.store
        self.control = Control(self.store.db)
        self.config = runner.config
        self.queues = list(queues)
        self.concurrency = concurrency
        self.burst = burst
        self.max_tasks = max_tasks
        self.max_memory_mb = max_memory_mb
        self.id = new_owner_id()
        self.claimed = 0
        self.stop_requests = 0
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.limits = LimitTimer(
            [h.limit for h in runner.handlers.values() if h.limit is not None],
            self.config.poll_interval,
        )
        self.prefetch = Prefetch(concurrency, self.config.prefetch)
        default = self.config.queue
        unknown: set[str] = set()
        self.scheduler = Scheduler(
            self.store,
            [s for s in schedules if (s.handler.defaults.queue or default) in self.queues],
            lambda: stored_for(
                self.control.stored_schedules(), runner.handlers, self.queues, default, unknown
            ),
        )
        self.watchdog = Watchdog(self.config.cancel_grace)
        #: Runs the attempts of async handlers (started with the first).
        self.event_loop = aio.EventLoop(runner, self.watchdog)
        #: One per task running (sync or async): at most ``concurrency``.
        self._slots = threading.Semaphore(concurrency)
        self.listener = Listener(
            self.config.effective_listen_dsn,
            (queries.NEW_TASKS, queries.CANCEL_REQUESTS, queries.CONTROL),
            f"worker {self.id}",
        )
        self._running: dict[int, Task] = {}
        #: Running tasks whose handler has started (the others wait in the
        #: inbox): released at shutdown, their attempt counts.
        self._started: set[int] = set()
        self._outcomes = Outcomes(self.store, self.id)
        #: Outcomes were recorded since the loop last looked (a burst
        #: worker then claims once more: dependents may have been released).
        self._recorded_any = False
        #: A workflow task ended in the last round: the dependents it
        #: released are claimable now, before the NOTIFY that says so.
        self._released = False
        self._cancels: set[int] = set()
        self._inbox: SimpleQueue[Task | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._wake_r, self._wake_w = os.pipe()
        #: A handler thread already woke the main thread since it last woke
        #: (set by handler threads, cleared by the main thread).
        self._woken = False
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._failures = 0
        self._turn = 0
        self._heartbeat_stop = threading.Event()
        #: When the main loop last turned (``time.monotonic()``): what
        #: ``/livez`` reads (:mod:`flask_pgtq.health`).
        self.last_turn = time.monotonic()
        #: Registered and claiming (until a stop request).
        self.started = False

    # -- public -------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit code: 0 on a clean stop,
        :data:`EXIT_RESTART` when a stuck handler needs a fresh process."""
        previous = self._install_signal_handlers()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            if not self._start():
                return 0
            try:
                self._loop()
            finally:
                self._shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            sys.setswitchinterval(interval)
        return self.exit_code

    @property
    def busy(self) -> int:
        """How many tasks this worker holds now (running, or claimed and
        waiting for a thread)."""
        return len(self._running)

    @property
    def stopping(self) -> bool:
        """Whether the worker was asked to stop: it claims nothing more."""
        return self.stop_requests > 0

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the worker to stop (thread-safe).  A second call stops at once."""
        self.stop_requests += 1
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wake()

    # -- start and stop -----------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(
                signum, lambda n, _frame: self.stop(f"signal {signal.Signals(n).name}")
            )
        return previous

    def _start(self) -> bool:
        """Check the schema and register, waiting for the database if needed."""
        while not self.stop_requests:
            self.last_turn = time.monotonic()
            try:
                with self.store.db.connection() as conn:
                    version = schema.current_version(conn)
                if version < schema.latest_version():
                    raise SchemaNotReady(
                        f"the database has flask_pgtq schema version {version}, this "
                        f"code needs {schema.latest_version()}: run 'flask pgtq init-db'"
                    )
                self.store.register_owner(self.id, queues=self.queues, concurrency=self.concurrency)
                break
            except SchemaNotReady:
                raise
            except DatabaseError as exc:
                self._backoff("starting", exc)
        if self.stop_requests:
            return False
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._handle, name=f"pgtq-handler-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._heartbeat, name="pgtq-heartbeat", daemon=True).start()
        self.started = True
        log.info(
            "worker %s started: queues=%s concurrency=%s pid=%s",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            os.getpid(),
        )
        with self.runner.context():
            signals.send(
                signals.worker_started,
                self.runner.sender,
                worker_id=self.id,
                queues=list(self.queues),
                concurrency=self.concurrency,
            )
        return True

    def _shutdown(self) -> None:
        reason = self.stop_reason or "stopped"
        log.info("worker %s stopping (%s)", self.id, reason)
        with contextlib.suppress(DatabaseError):
            self.store.mark_stopping(self.id)
        if self._running and self.stop_requests < 2:
            ids = sorted(self._started) or sorted(self._running)
            shown = ", ".join(map(str, ids[:10]))
            if len(ids) > 10:
                shown += f" and {len(ids) - 10} more"
            log.info(
                "worker %s: waiting up to %gs for task%s %s; Ctrl-C again to requeue now",
                self.id,
                self.config.shutdown_grace,
                "s" if len(ids) > 1 else "",
                shown,
            )
        with self.runner.context():
            signals.send(
                signals.worker_stopping, self.runner.sender, worker_id=self.id, reason=reason
            )
        deadline = time.monotonic() + self.config.shutdown_grace
        while self._running and self.stop_requests < 2 and time.monotonic() < deadline:
            self.last_turn = time.monotonic()
            try:
                self._flush()
                self._supervise()
            except DatabaseError as exc:
                self._backoff("recording outcomes", exc)
                continue
            if self._running:
                self._wait(min(0.5, max(0.0, deadline - time.monotonic())), listen=False)
        with contextlib.suppress(DatabaseError):
            self._flush()
        if self._running:
            ids = list(self._running)
            interrupted = [i for i in ids if i in self._started]
            waiting = [i for i in ids if i not in self._started]
            self.watchdog.stop_all(TaskCancelled)  # isolated ones: kill their children first
            try:
                released = self.store.release(self.id, waiting, interrupted)
                log.warning(
                    "worker %s released %d unfinished task(s) back to the queue: %s",
                    self.id,
                    len(released),
                    released,
                )
            except DatabaseError as exc:
                log.error(
                    "worker %s could not release tasks %s (%s); they run again once "
                    "its lease expires",
                    self.id,
                    ids,
                    exc,
                )
        self._heartbeat_stop.set()
        self.event_loop.close()
        for _ in self._threads:
            self._inbox.put(None)
        try:
            self.store.unregister_owner(self.id)
        except DatabaseError:
            log.warning("worker %s could not unregister; its row expires with its lease", self.id)
        self.listener.close()
        log.info("worker %s stopped", self.id)

    # -- the loop -------------------------------------------------------------

    def _loop(self) -> None:
        next_rescue = next_sync = 0.0
        next_prune = time.monotonic() + self.config.prune_interval * random.uniform(0, 1)
        while not self.stop_requests:
            self.last_turn = time.monotonic()
            try:
                self._supervise()
                if self.stop_requests or self._over_memory():
                    self._flush()
                    break
                now = time.monotonic()
                if now >= next_rescue:
                    self._rescue()
                    next_rescue = now + self.config.heartbeat_interval * random.uniform(0.8, 1.2)
                if now >= next_sync:
                    self._sync_limited()
                    next_sync = now + self.config.prune_interval * random.uniform(0.8, 1.2)
                if now >= next_prune:
                    self._prune()
                    next_prune = now + self.config.prune_interval * random.uniform(0.8, 1.2)
                self.scheduler.tick()
                if self.config.listen:
                    self.listener.ensure()
                    if self.listener.connected:
                        # What arrived so far was sent at commits that the
                        # round's snapshot will see: read it now, so that it
                        # does not wake the worker for a round that finds
                        # nothing (a chain's next step, claimed at once, is
                        # announced by the commit that released it).
                        self._take_notifications()
                got = self._round()
                self._failures = 0
            except DatabaseError as exc:
                self._backoff("working", exc)
                continue
            recorded, self._recorded_any = self._recorded_any, False
            if not self._running and not self._outcomes and not got and not recorded:
                # (A round that recorded outcomes may have released waiting
                # dependents, which the same round could not see yet: one
                # more round before "nothing left".)
                if self.burst:
                    self.stop("burst: nothing left to run")
                    break
                if self.max_tasks is not None and self.claimed >= self.max_tasks:
                    self.stop(f"max tasks ({self.max_tasks}) reached")
                    break
            released, self._released = self._released, False
            if (released or (self.burst and recorded)) and not self._running:
                # Nothing left to run and dependents just released (a chain's
                # next step): claim at once, without waiting for the NOTIFY.
                # (A busy worker claims with its next round anyway.)  So does
                # a burst after its last outcomes, to end without a poll.
                if not self.stop_requests:
                    continue
            # Finished tasks, new tasks and signals all end the wait early.
            self._wait(self._next_wait())

    def _next_wait(self) -> float:
        timeout = self.config.poll_interval
        if self._outcomes:
            timeout = FLUSH_DELAY
        if self.config.listen and not self.listener.connected:
            # No LISTEN yet: wake up in time to try again.
            timeout = min(timeout, self.listener.next_try - time.monotonic())
        deadline = self.watchdog.next_deadline()
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        fire = self.scheduler.seconds_to_next()
        if fire is not None:
            timeout = min(timeout, fire + 0.001)
        return max(0.0, timeout)

    def _round(self) -> int:
        """Record finished attempts and claim new tasks: one round trip per
        queue served (outcomes go with the first).  Returns how many tasks
        were claimed."""
        left = None if self.max_tasks is None else self.max_tasks - self.claimed
        free, ahead = self.prefetch.room(len(self._running) - len(self._outcomes), left)
        room = free + ahead
        self._outcomes.record_singly(self._recorded)
        outcomes = self._outcomes.take()
        if not outcomes and room == 0:
            return 0
        got = 0
        # Free threads start at once; prefetched tasks wait for the round's
        # end, to go to the inbox with the other queues' in turns.
        starting = free
        prefetched: list[list[Task]] = []
        count = len(self.queues)
        start = self._turn
        self._turn = (self._turn + 1) % count
        for i in range(count):
            queue = self.queues[(start + i) % count]
            limits = self.limits.due()
            # An even share of the room per queue (what one leaves, the next
            # may take), so a flood in one queue cannot crowd out the others.
            share = -(-(room - got) // (count - i))
            now = min(share, max(free - got, 0))
            try:
                accepted, tasks = self.store.finish_and_claim(
                    self.id,
                    outcomes,
                    queue,
                    now,
                    limits,
                    self.limits.limits,
                    share - now,
                    decode=False,  # by the handler thread that runs the task
                )
            except BaseException as exc:
                self._outcomes.refused(outcomes, exc)
                raise
            if outcomes:
                self._outcomes.recorded()
                self._recorded(outcomes, accepted)
                outcomes = []
            self.limits.tried(limits, (task.name for task in tasks))
            for task in tasks:
                self._running[task.id] = task
            for task in tasks[:starting]:
                self._inbox.put(task)
            prefetched.append(tasks[starting:])
            starting = max(starting - len(tasks), 0)
            got += len(tasks)
            if got >= room:
                break
        # Queues take turns in the inbox too: prefetched tasks of a flooded
        # queue must not run before another queue's share.
        for turn in itertools.zip_longest(*prefetched):
            for task in turn:
                if task is not None:
                    self._inbox.put(task)
        self.claimed += got
        return got

    def _recorded(self, outcomes: list[Outcome], accepted: set[int]) -> None:
        """Bookkeeping, logs and signals once outcomes are committed."""
        self._recorded_any = True
        for outcome in outcomes:
            if outcome.task.workflow_id is not None and outcome.state is not State.QUEUED:
                self._released = True
            self._running.pop(outcome.task.id, None)
            self._started.discard(outcome.task.id)
            self.prefetch.note_run(outcome.duration)
            self.limits.wake(outcome.task.name)
        self.runner.report(self.id, outcomes, accepted)

    def _flush(self) -> None:
        """Record finished attempts without claiming (when stopping)."""
        self._outcomes.record_singly(self._recorded)
        outcomes = self._outcomes.take()
        if not outcomes:
            return
        try:
            accepted = self.store.finish(self.id, outcomes)
        except BaseException as exc:
            self._outcomes.refused(outcomes, exc)
            raise
        self._outcomes.recorded()
        self._recorded(outcomes, accepted)

    def _supervise(self) -> None:
        """Pass on cancel requests, stop overdue handlers, give up on stuck ones."""
        while self._cancels:
            task_id = self._cancels.pop()
            task = self._running.get(task_id)
            if task is not None and self.watchdog.cancel_requested(task_id):
                task.cancel_requested_at = datetime.now(UTC)
        for task_id, reason in self.watchdog.enforce():
            task = self._running.get(task_id)
            if task is None:
                continue
            log.error(
                "task %s (%s) did not stop after %s; recording it and restarting "
                "this worker's process to end the handler's thread",
                task_id,
                task.name,
                reason.__name__,
            )
            self._outcomes.abandoned.add(task_id)
            self.runner.record(self.id, [self.runner.abandoned(task, reason)])
            self._running.pop(task_id, None)
            self.exit_code = EXIT_RESTART
            self.stop(f"handler of task {task_id} stuck")

    def _over_memory(self) -> bool:
        if self.max_memory_mb is None:
            return False
        used = resident_memory_mb()
        if used <= self.max_memory_mb:
            return False
        self.stop(f"memory ceiling: {used:.0f} MiB > {self.max_memory_mb:.0f} MiB")
        return True

    def _sync_limited(self) -> None:
        """Mark the queued tasks of the worker's limited handlers (pushed
        before a limit was set, or by an app without the handler), unmark
        those of handlers no longer limited: at start, then every prune
        interval."""
        marked, unmarked = self.store.sync_limited(self.queues, self.limits.limits)
        if marked or unmarked:
            log.info(
                "worker %s: %d queued task(s) now wait for the limited claim, %d no longer",
                self.id,
                marked,
                unmarked,
            )

    def _prune(self, most_batches: int = 20) -> None:
        """Retention: delete a few small batches of old finished tasks."""
        total = 0
        for _ in range(most_batches):
            deleted = self.store.prune()
            total += deleted
            if deleted < self.config.prune_batch:
                break
        if total:
            log.info("worker %s deleted %d finished task(s) past retention", self.id, total)

    def _rescue(self) -> None:
        for kind, target in self.control.end_pauses():
            log.info("the pause of %s %s ended (timed)", kind, target)
            with self.runner.context():
                signals.send(
                    signals.resumed, self.runner.sender, kind=kind, target=target, ended="expired"
                )
        for row in self.store.rescue():
            log.warning(
                "rescued task %s (%s) of queue %s after attempt %s: its worker's lease "
                "expired; now %s",
                row["id"],
                row["name"],
                row["queue"],
                row["attempts"],
                row["state"],
            )
        self._release_unknown()

    def _release_unknown(self) -> None:
        """Give back the tasks the database says this worker holds but the
        worker never got: a claim whose commit went through although the
        statement's reply was an error (a statement timeout or a cancel that
        fired during the commit, a connection cut just after it).  Under a
        live lease nobody else would ever run them.  They never started:
        their attempt is not counted."""
        unknown = self.store.owned_running(self.id) - set(self._running)
        if unknown:
            released = self.store.release(self.id, sorted(unknown))
            log.warning(
                "worker %s released %d task(s) it holds in the database but never got "
                "(a claim that committed although its statement failed): %s",
                self.id,
                len(released),
                released,
            )

    # -- threads --------------------------------------------------------------

    def _handle(self) -> None:
        """A handler thread: take a slot, then a task from the inbox; run
        it (or hand it to the event loop, which gives the slot back when
        the attempt ends), hand its outcome back."""
        while True:
            self._slots.acquire()
            task = self._inbox.get()
            if task is None:
                self._slots.release()
                return
            self._started.add(task.id)
            decode_claimed(task)
            handler = self.runner.handlers.get(task.name)
            if handler is not None and handler.is_async:
                self.event_loop.submit(task, self._finished)
                continue
            try:
                outcome = self._run(task)
            except BaseException:  # noqa: BLE001 - no input may end this thread
                log.exception("worker %s: internal error running task %s", self.id, task.id)
                outcome = Outcome(
                    task,
                    State.FAILED,
                    error="the worker could not run or record this task; failed without "
                    f"retry:\n{traceback.format_exc()}",
                )
            self._finished(outcome)

    def _finished(self, outcome: Outcome | None) -> None:
        """An attempt ended (in a handler thread, or on the event loop):
        give its slot back and its outcome to the main thread (none for an
        async attempt cut short at shutdown)."""
        self._slots.release()
        if outcome is None:
            return
        outcome.as_json_text()  # here, not in the thread that sends the round
        self._outcomes.add(outcome)
        # The main thread flushes in batches: wake it when the tasks
        # waiting here run low (none left, or half the prefetch, so that
        # its next claim arrives before they run out), or when a batch
        # is ready; else it flushes within FLUSH_DELAY.
        if not self._woken and (
            self._inbox.qsize() <= self.prefetch.refill_at or len(self._outcomes) >= FLUSH_BATCH
        ):
            # Once per wait of the main thread: a write per task costs
            # the handler threads a system call each.
            self._woken = True
            self._wake()

    def _run(self, task: Task) -> Outcome:
        handler = self.runner.handlers.get(task.name)
        if handler is not None and handler.isolated:
            return isolation.run_attempt(self.runner, self.watchdog, task, handler.timeout)
        outcome: Outcome | None = None
        try:
            self.watchdog.started(task.id, handler.timeout if handler else None)
            try:
                outcome = self.runner.execute(task)
            finally:
                # After this no stop can be raised in this thread.
                self.watchdog.finished(task.id)
        except (TaskTimeout, TaskCancelled) as exc:
            # Raised just outside the handler's own try: still an outcome.
            if outcome is None:
                outcome = self.runner.abandoned(task, type(exc))
        return outcome

    def _heartbeat(self) -> None:
        while not self._heartbeat_stop.wait(self.config.heartbeat_interval):
            try:
                if not self.store.heartbeat(self.id):
                    log.warning(
                        "worker %s lost its lease (it was presumed dead); its running "
                        "tasks were rescued and their outcomes will be discarded; "
                        "registering again",
                        self.id,
                    )
                    self.store.register_owner(
                        self.id, queues=self.queues, concurrency=self.concurrency
                    )
                cancels = self.store.cancel_requests(self.id)
                if cancels:
                    self._cancels.update(cancels)
                    self._wake()
            except DatabaseError as exc:
                log.warning("worker %s heartbeat failed: %s", self.id, exc)

    # -- waiting --------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _wait(self, timeout: float, *, listen: bool = True) -> None:
        """Sleep until woken (new task, finished task, signal) or *timeout*."""
        fds = [self._wake_r]
        if listen and self.listener.connected:
            fds.append(self.listener.fileno())
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            ready = []
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        # Awake now and about to look at everything: handler threads may wake
        # it again for what happens from here on.
        self._woken = False
        if len(fds) > 1 and fds[1] in ready:
            self._take_notifications()
        elif not ready and listen:
            self.listener.check()

    def _take_notifications(self) -> None:
        """Act on the notifications that arrived (without waiting)."""
        for channel, payload in self.listener.drain():
            if channel == queries.CANCEL_REQUESTS and payload.isdigit():
                self._cancels.add(int(payload))
            elif channel == queries.NEW_TASKS:
                self.limits.wake_all()
            elif channel == queries.CONTROL and payload == "schedules":
                self.scheduler.changed()

    def _backoff(self, doing: str, exc: BaseException) -> None:
        self._failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)
        log.warning(
            "worker %s: database error while %s (%s); retrying in %.2fs",
            self.id,
            doing,
            exc,
            delay,
        )
        self._wait(delay, listen=False)


def resident_memory_mb() -> float:
    """This process's resident memory in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main_loop(
    q: Any,
    *,
    queues: Iterable[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
    max_tasks: int | None = None,
    max_memory_mb: float | None = None,
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
) -> int:
    """Run a worker for *q* (a :class:`~flask_pgtq.PgTq`) in this process.

    With Flask, call it inside the app context (``flask pgtq worker`` does);
    standalone, just call it.  Returns when stopped (SIGTERM/SIGINT, or
    ``burst``/``max_tasks``) with exit code 0, or :data:`EXIT_RESTART` after
    a handler that ignored its timeout or cancellation: then start a fresh
    process (``flask pgtq worker`` restarts itself).

    :param queues: queues to serve; default ``PGTQ_QUEUE``.
    :param concurrency: handler threads; default ``PGTQ_CONCURRENCY``.
    :param burst: run what is ready, then return.
    :param max_tasks: return after this many tasks.
    :param max_memory_mb: return (between tasks) once resident memory
        exceeds this many MiB; let a process manager start a fresh worker.
    :param health_port: serve ``/livez`` and ``/readyz`` on this port while
        the worker runs (see :mod:`flask_pgtq.health`).
    :param health_host: the address for *health_port*.
    :raises SetupError: *health_port* cannot be bound.
    """
    app_queue = q.app_queue()
    worker = Worker(
        app_queue.runner,
        queues=queue_list(queues, app_queue.config.queue),
        concurrency=concurrency or app_queue.config.concurrency,
        burst=burst,
        max_tasks=max_tasks,
        max_memory_mb=max_memory_mb,
        schedules=q.schedules.values(),
    )
    if health_port is None:
        return worker.run()
    from .health import serve_health

    server = serve_health(worker, health_port, health_host)
    try:
        return worker.run()
    finally:
        server.close()


def restart_process() -> None:
    """Replace this process with a fresh copy of itself (same command line)."""
    log.warning("restarting: exec %s", " ".join(sys.orig_argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
