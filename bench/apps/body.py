"""The drain task's body, the same in every system: record that it ran, and when.

Each worker process that runs a body keeps one record, a 32-byte file
``$BENCH_BODY_DIR/<pid>`` mapped into its memory: the process's session id
(the harness starts each worker in a session of its own, so this names the
worker even for pool children or forked work horses), how many bodies it has
run, and the ``time.monotonic()`` of its first and last one.  A body costs the
same in every system and little (a clock read and a 32-byte store into shared
memory, about a microsecond, no system call after the first), and it adds no
load to PostgreSQL or Redis, which the queues under test use.  The harness
reads the records (:func:`read_records`) to know when the last body ran;
``time.monotonic()`` is one clock for every process on the machine.

Without ``$BENCH_BODY_DIR`` (pushes, latency runs, the harness's own process)
a body records nothing.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

#: session id, bodies run, first and last body (time.monotonic()).
RECORD = struct.Struct("<qqdd")

_DIR = os.environ.get("BENCH_BODY_DIR")
#: This process's record once its first body ran: [mmap, session, count, first].
_state: list[object] = []


def _open(now: float) -> None:
    assert _DIR is not None
    path = os.path.join(_DIR, str(os.getpid()))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, RECORD.size)
        mem = mmap.mmap(fd, RECORD.size)
    finally:
        os.close(fd)
    _state[:] = [mem, os.getsid(0), 0, now]


# A forked child (a pool process, a work horse) keeps a record of its own.
os.register_at_fork(after_in_child=_state.clear)


def run() -> None:
    """The body: count this run and note its time in this process's record."""
    now = time.monotonic()
    if _DIR is None:
        return
    state = _state
    if not state:
        _open(now)
    count = state[2] + 1  # type: ignore[operator]
    state[2] = count
    RECORD.pack_into(state[0], 0, state[1], count, state[3], now)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Record:
    """What one worker process has run so far."""

    pid: int
    session: int
    count: int
    first: float
    last: float


def read_records(directory: str | Path) -> list[Record]:
    """Every process's record in *directory* (the harness's side)."""
    records = []
    for path in Path(directory).iterdir():
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) != RECORD.size:
            continue
        session, count, first, last = RECORD.unpack(data)
        if count:
            records.append(Record(int(path.name), session, count, first, last))
    return records
