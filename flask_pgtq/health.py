"""Health checks, for process managers and for alerting.

* **A worker's probes** (``flask pgtq worker --health-port 8081``):
  :func:`serve_health` answers over HTTP from a daemon thread of the worker.

  ``/livez``
      200 while the worker's main loop turns (its last turn is more recent
      than :func:`live_limit` seconds), else 503.  A database outage does
      not fail it: the loop keeps turning while it waits for the database,
      and restarting the process would not help.
  ``/readyz``
      200 when the worker has started, is not shutting down, and its
      database answers with a current schema; else 503.

  Each answers a small JSON object: ``{"status": "ok"}``, or
  ``{"status": "fail", "reason": "..."}``.

* **The queue's health** (``flask pgtq health``): :func:`queue_problems`
  says which queues have no live worker, or a ready task waiting too long.

Like the rest of the core this module does not import Flask.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import schema
from .exceptions import DatabaseError, SetupError

if TYPE_CHECKING:
    from .admin import QueueStatus
    from .worker import Worker

log = logging.getLogger("flask_pgtq.health")

#: Seconds a readiness check waits for the database at most (to connect,
#: then for each statement).
DATABASE_TIMEOUT = 2


def live_limit(poll_interval: float) -> float:
    """Seconds since the main loop's last turn after which a worker is not live."""
    return max(poll_interval * 3, 10.0)


class WorkerHealth:
    """Liveness and readiness of one :class:`~flask_pgtq.worker.Worker`.

    Readiness checks the database over a connection of its own (not the
    worker's pool, whose connections may all be busy), opened with short
    timeouts and kept between checks.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._conn: Any = None

    def live(self) -> str | None:
        """``None`` when live, else why not."""
        age = time.monotonic() - self.worker.last_turn
        limit = live_limit(self.worker.config.poll_interval)
        if age > limit:
            return f"the worker's main loop last turned {age:.0f}s ago (limit {limit:.0f}s)"
        return None

    def ready(self) -> str | None:
        """``None`` when ready, else why not."""
        if self.worker.stopping:
            return "the worker is shutting down"
        if not self.worker.started:
            return "the worker is starting"
        try:
            with self._lock:
                version = self._schema_version()
        except DatabaseError as exc:
            return f"the database is unreachable: {one_line(str(exc))}"
        needed = schema.latest_version()
        if version < needed:
            return f"the database has schema version {version}, this code needs {needed}"
        return None

    def _schema_version(self) -> int:
        for attempt in (1, 2):  # a kept connection may have died since
            if self._conn is None or self._conn.closed:
                self._conn = self.worker.store.db.connect(
                    connect_timeout=DATABASE_TIMEOUT,
                    options=f"-c statement_timeout={DATABASE_TIMEOUT * 1000}",
                )
            try:
                return schema.current_version(self._conn)
            except Exception:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                log.debug("closing the health check's connection failed", exc_info=True)
            self._conn = None


class HealthServer(ThreadingHTTPServer):
    """Serves ``/livez`` and ``/readyz`` for one worker."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], health: WorkerHealth) -> None:
        self.health = health
        super().__init__(address, _Probe)

    def close(self) -> None:
        """Stop serving and close the socket and the database connection."""
        self.shutdown()
        self.server_close()
        self.health.close()


class _Probe(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/livez":
            reason = self.server.health.live()
        elif path == "/readyz":
            reason = self.server.health.ready()
        else:
            self._answer(404, {"status": "fail", "reason": "not found: try /livez or /readyz"})
            return
        if reason is None:
            self._answer(200, {"status": "ok"})
        else:
            self._answer(503, {"status": "fail", "reason": reason})

    def _answer(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("health probe: " + format, *args)


def serve_health(worker: Worker, port: int, host: str = "0.0.0.0") -> HealthServer:
    """Serve *worker*'s ``/livez`` and ``/readyz`` on *port* from a daemon
    thread; call :meth:`HealthServer.close` when the worker is done.

    :raises SetupError: the address cannot be bound (in use, say).
    """
    try:
        server = HealthServer((host, port), WorkerHealth(worker))
    except OSError as exc:
        raise SetupError(f"cannot serve health checks on {host}:{port}: {exc}") from exc
    threading.Thread(target=server.serve_forever, name="pgtq-health", daemon=True).start()
    return server


def one_line(text: str) -> str:
    """*text* with its line breaks and runs of spaces as single spaces
    (libpq's messages span lines)."""
    return " ".join(text.split())


def queue_problems(
    status: Iterable[QueueStatus], queues: Sequence[str], max_wait: float | None = None
) -> list[str]:
    """What is wrong with *queues*, one sentence each (empty when all is well).

    :param status: every queue's status (:meth:`Admin.status
        <flask_pgtq.admin.Admin.status>`).
    :param queues: the queues that must be served.
    :param max_wait: seconds the oldest ready task of a queue may have
        waited; ``None`` for no limit.
    """
    by_name = {s.queue: s for s in status}
    problems = []
    for name in queues:
        queue = by_name.get(name)
        if queue is None or queue.workers == 0:
            problems.append(f"queue {name!r} has no live worker")
        if (
            max_wait is not None
            and queue is not None
            and queue.oldest_wait is not None
            and queue.oldest_wait > max_wait
        ):
            problems.append(
                f"queue {name!r}: the oldest ready task has waited {queue.oldest_wait:.0f}s "
                f"(more than {max_wait:g}s)"
            )
    return problems
