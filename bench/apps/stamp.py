"""Record when a latency task starts: one line ``<sent> <started>`` per task.

Each line is written with one ``write()`` on a file opened with O_APPEND, so
lines from several worker processes never interleave.  The start time is
read first, before any I/O.
"""

from __future__ import annotations

import os
import time


def record(sent: float) -> None:
    started = time.time()
    path = os.environ.get("BENCH_STAMP_FILE")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{float(sent)!r} {started!r}\n".encode())
    finally:
        os.close(fd)
