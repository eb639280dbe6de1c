"""Running one attempt of an ``isolated=True`` handler in a forked child process.

A handler thread cannot be stopped while C code holds the GIL (a
catastrophic regular expression, a long NumPy call that does not release
it): the worker's heartbeat and watchdog threads then never run, the lease
expires and another worker starts the task again.  An isolated handler runs
in a child process instead.  The worker's thread only waits for it in
``select()`` (the GIL is free), so the heartbeat keeps the lease, and the
watchdog ends a late child with ``SIGKILL``: a real stop, whatever the child
is doing.

Two layers:

- :class:`Child`: fork, a pipe for the result, wait, kill.  No knowledge
  of tasks.
- :func:`run_attempt`: one attempt of a task in a :class:`Child`, watched
  by the worker's :class:`~flask_pgtq.watchdog.Watchdog`, turned into an
  :class:`~flask_pgtq.values.Outcome`.

The child runs :meth:`Runner.execute <flask_pgtq.runner.Runner.execute>`,
exactly as a handler thread does (fresh app context, ``current_task``,
``Retry``/``Cancel``, the result encoded as JSON), and sends the outcome
back as JSON text.  So an isolated attempt ends as a thread-run one would,
tracebacks included.

Forking a process that runs threads copies only the forking thread; a lock
another thread held at that moment stays locked in the child.  flask_pgtq's
own state is safe (the connection pool starts afresh in a child, logging
resets its locks); code that the *handler* calls may not be (a library's
connection pool shared with the parent; see "Isolated handlers" in the
README).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import tracing
from .exceptions import ChildFailed
from .task import State
from .values import Outcome

if TYPE_CHECKING:
    from .runner import Runner
    from .task import Task
    from .watchdog import Watchdog

#: Exit code of a child whose work raised instead of returning its text.
EXIT_BROKEN = 70
#: Seconds between checks for the child's end where ``pidfd_open`` is missing.
POLL = 0.05
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ended:
    """How a child ended.

    :ivar output: the text the child sent, or ``None`` if it sent nothing.
    :ivar status: its wait status (see :func:`os.waitstatus_to_exitcode`).
    :ivar stopped_for: the reason given to :meth:`Child.kill`, if it was killed.
    """

    output: str | None
    status: int
    stopped_for: type[BaseException] | None

    def describe(self) -> str:
        """``"exited with code 3"`` or ``"killed by signal SIGSEGV"``."""
        if os.WIFSIGNALED(self.status):
            number = os.WTERMSIG(self.status)
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = str(number)
            return f"killed by signal {name}"
        return f"exited with code {os.waitstatus_to_exitcode(self.status)}"


class Child:
    """A function running in a forked child process.

    Build it with :meth:`start`; then one thread calls :meth:`wait`, and any
    thread may call :meth:`kill`.
    """

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid = pid
        self._pipe = pipe
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # Linux >= 5.3 only
            self._pidfd = os.pidfd_open(pid)
        # Held while reaping and while killing, so that a kill never reaches
        # a recycled pid.
        self._lock = threading.Lock()
        self._status: int | None = None
        self._stopped_for: type[BaseException] | None = None

    @classmethod
    def start(cls, work: Callable[[], str]) -> Child:
        """Fork; the child calls *work*, sends the text it returns to the
        parent and ends with :func:`os._exit` (no ``atexit`` handlers, no
        flush of buffers copied from the parent).

        The child ignores SIGTERM and SIGINT (a worker stopping gracefully
        lets it finish, as it would a thread; a ``Ctrl-C`` reaches the whole
        process group) and, on Linux, is killed if the worker dies.
        """
        read_end, write_end = os.pipe()
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            # Else text the parent buffered would be written twice.
            with contextlib.suppress(Exception):
                stream.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns (DeprecationWarning) that forking a process
            # with threads may deadlock the child on a lock another thread
            # held.  Known and handled here: the child only runs the task
            # (flask_pgtq's pool and logging start afresh after a fork) and
            # ends with os._exit; the risk left is in locks of libraries the
            # handler uses, which the README's "Isolated handlers" explains.
            # The filter is narrow (this message only) and set for the fork
            # alone; catch_warnings is not thread-safe, so another thread
            # that warns in this instant might see it too.
            warnings.filterwarnings(
                "ignore", message=r".*multi-threaded.*fork", category=DeprecationWarning
            )
            try:
                pid = os.fork()
            except OSError:
                os.close(read_end)
                os.close(write_end)
                raise
        if pid == 0:  # pragma: no cover - runs in the child
            _child(read_end, write_end, parent, work)
        os.close(write_end)
        os.set_blocking(read_end, False)
        return cls(pid, read_end)

    def kill(self, reason: type[BaseException]) -> None:
        """Kill the child at once (``SIGKILL``), noting *reason*
        (:class:`~flask_pgtq.exceptions.TaskTimeout` or
        :class:`~flask_pgtq.exceptions.TaskCancelled`).  Thread-safe; does
        nothing once the child has been reaped."""
        with self._lock:
            if self._status is not None:
                return
            if self._stopped_for is None:
                self._stopped_for = reason
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> Ended:
        """Wait for the child to end, reading what it sends; reap it.

        The wait is in ``select()``: other threads run meanwhile.  It ends
        when the child does, even if a process the handler forked still
        holds the pipe open.
        """
        chunks: list[bytes] = []
        fds = [self._pipe]
        if self._pidfd is not None:
            fds.append(self._pidfd)
        try:
            while not self._reaped():
                timeout = None
                if self._pidfd is None:
                    # Nothing tells when the child ends: look again soon
                    # (sooner after end of file, when it is about to).
                    timeout = POLL if self._pipe in fds else 0.002
                ready, _, _ = select.select(fds, [], [], timeout)
                if self._pipe in ready and not self._read(chunks):
                    fds.remove(self._pipe)  # end of file: the child is ending
            with contextlib.suppress(BlockingIOError, OSError):
                self._read(chunks)  # what it wrote just before it ended
        finally:
            with self._lock:
                if self._status is None:  # this wait was interrupted: end the child
                    os.kill(self.pid, signal.SIGKILL)
                    self._status = os.waitpid(self.pid, 0)[1]
            os.close(self._pipe)
            if self._pidfd is not None:
                os.close(self._pidfd)
        data = b"".join(chunks)
        assert self._status is not None
        return Ended(
            data.decode("utf-8", "replace") if data else None,
            self._status,
            self._stopped_for,
        )

    def _read(self, chunks: list[bytes]) -> bool:
        """Read what is there; ``False`` at end of file."""
        while True:
            try:
                data = os.read(self._pipe, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            chunks.append(data)

    def _reaped(self) -> bool:
        with self._lock:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return False
            self._status = status
            return True


def _child(read_end: int, write_end: int, parent: int, work: Callable[[], str]) -> None:
    """The child's whole life: never returns into the caller's code."""
    me = os.getpid()
    code = 0
    try:
        os.close(read_end)
        for signum in (signal.SIGTERM, signal.SIGINT):
            # A Python handler rather than SIG_IGN, which programs the
            # handler starts (subprocess) would inherit.
            signal.signal(signum, _ignore)
        _die_with(parent)
        # The collector would visit every object inherited from the worker,
        # and its bookkeeping writes would copy each memory page they sit on
        # (tens of milliseconds): leave them to the parent.
        gc.freeze()
        text = work()
        if os.getpid() != me:
            return  # a process the handler forked got here: not ours to report
        data = text.encode()
        while data:
            data = data[os.write(write_end, data) :]
    except BaseException:  # noqa: BLE001 - reported on stderr, the exit code says the rest
        code = EXIT_BROKEN
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)


def _ignore(signum: int, frame: object) -> None:
    """Signal handler of the child: the worker decides when it ends."""


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when the worker's thread that
    forked it ends (the worker died, or exec'd itself anew); Linux only."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


# -- one attempt of a task ------------------------------------------------------


def run_attempt(runner: Runner, watchdog: Watchdog, task: Task, timeout: float | None) -> Outcome:
    """Run one attempt of *task* in a child process; return its outcome.

    The child runs ``runner.execute(task)``.  The attempt is registered with
    *watchdog*, which kills the child at its *timeout* or on a cancel
    request (at once: the child cannot see ``current_task.cancel_requested``
    change).  A killed attempt ends as
    :meth:`Runner.abandoned <flask_pgtq.runner.Runner.abandoned>` says (a
    timeout, or cancelled); a child that dies before it sends its outcome is
    a failed attempt (retried while attempts are left).
    """
    started = time.perf_counter()
    try:
        child = Child.start(lambda: _attempt_in_child(runner, task))
    except OSError as exc:  # out of memory or processes
        return runner.failed_attempt(
            task, f"ChildFailed: could not fork a child process for this attempt: {exc}", started
        )
    watchdog.started(task.id, timeout, stop=child.kill)
    try:
        ended = child.wait()
    finally:
        watchdog.finished(task.id)
    if ended.output is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            # A complete outcome wins, even if a kill came just after it.
            return decode_outcome(task, ended.output)
    if ended.stopped_for is not None:
        return runner.abandoned(task, ended.stopped_for, started)
    return runner.failed_attempt(
        task,
        f"ChildFailed: the child process running this isolated attempt {ended.describe()} "
        "before it sent a result",
        started,
    )


def _attempt_in_child(runner: Runner, task: Task) -> str:
    """The child's work: run the attempt, and export its spans before the
    child ends with ``os._exit`` (a batch span processor would lose them)."""
    outcome = encode_outcome(runner.execute(task))
    tracing.flush_child_spans()
    return outcome


def encode_outcome(outcome: Outcome) -> str:
    """An outcome as JSON text, to cross from the child to the parent.  The
    exception itself cannot cross; its type and message do."""
    exc = outcome.exception
    return json.dumps(
        {
            "state": outcome.state.value,
            "result": outcome.result,
            "error": outcome.error,
            "delay": outcome.delay,
            "snooze": outcome.snooze,
            "meta": outcome.task.meta if outcome.task.meta_changed else None,
            "duration": outcome.duration,
            "exception": None if exc is None else f"{type(exc).__qualname__}: {exc}",
        }
    )


def decode_outcome(task: Task, text: str) -> Outcome:
    """The outcome :func:`encode_outcome` sent, for *task*.

    :raises ValueError: *text* is not such an outcome (cut short).
    """
    data = json.loads(text)
    if data.get("meta") is not None:
        # What the run stored with the task in the child (its span).
        task.meta = data["meta"]
        task.meta_changed = True
    return Outcome(
        task,
        State(data["state"]),
        result=data["result"],
        error=data["error"],
        delay=float(data["delay"]),
        duration=float(data["duration"]),
        snooze=bool(data.get("snooze")),
        exception=None if data["exception"] is None else ChildFailed(data["exception"]),
    )
