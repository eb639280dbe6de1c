"""A worker's LISTEN connection: a latency hint, never the correctness path.

It is (re)built lazily with jittered backoff, health-checked when idle, and
dropped on the first error; the worker polls meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any

from . import queries
from .connection import Database, is_driver_error, translated_errors
from .exceptions import DatabaseError

log = logging.getLogger("flask_pgtq.worker")

#: Seconds between health checks of an idle LISTEN connection.
CHECK_INTERVAL = 5.0
#: Longest wait, in seconds, before trying to LISTEN again.
RETRY_CAP = 1.0


class Listener:
    """LISTEN on *channels* over its own connection.

    :param dsn: where to connect (``PGTQ_LISTEN_DSN`` or ``PGTQ_DSN``).
    :param channels: channel names (constants of ours, never user input).
    :param label: who listens, for log lines.
    """

    def __init__(self, dsn: str, channels: tuple[str, ...], label: str) -> None:
        self._db = Database(dsn, max_connections=1, application_name="flask_pgtq-listen")
        self._channels = channels
        self._label = label
        self._conn: Any = None
        self._checked = 0.0
        self.next_try = 0.0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def fileno(self) -> int:
        return int(self._conn.fileno())

    def ensure(self) -> None:
        """Connect and LISTEN, unless connected or backing off."""
        if self._conn is not None or time.monotonic() < self.next_try:
            return
        conn = None
        try:
            conn = self._db.connect(
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3
            )
            # The connection can die between connect and LISTEN too.
            with translated_errors(self._db), conn.cursor() as cur:
                cur.execute(queries.listen(self._channels))
        except DatabaseError as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self.next_try = time.monotonic() + RETRY_CAP * random.uniform(0.5, 1)
            log.warning("%s cannot LISTEN (%s); polling until it can", self._label, exc)
            return
        self._conn = conn
        self._checked = time.monotonic()

    def drain(self) -> list[tuple[str, str]]:
        """Read what arrived: ``(channel, payload)`` pairs.  Drops the
        connection (and returns nothing) if it broke."""
        try:
            self._conn.poll()
            notes = [(n.channel, n.payload) for n in self._conn.notifies]
            self._conn.notifies.clear()
            return notes
        except Exception as exc:
            if not is_driver_error(exc):
                raise
            log.warning("%s lost its LISTEN connection (%s); reconnecting", self._label, exc)
            self.close()
            return []

    def check(self) -> None:
        """Health-check an idle connection every :data:`CHECK_INTERVAL`."""
        if self._conn is None or time.monotonic() - self._checked < CHECK_INTERVAL:
            return
        self._checked = time.monotonic()
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1")
        except Exception as exc:
            if not is_driver_error(exc):
                raise
            log.warning("%s LISTEN connection failed its check (%s)", self._label, exc)
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
