"""Prometheus metrics (``pip install "flask_pgtq[prometheus]"``).

Two sources, because a queue has two kinds of facts:

* The **queue's state** lives in the database.  :class:`QueueCollector`
  queries it at scrape time: ``pgtq_tasks{queue,state}`` (``ready``,
  ``scheduled``, ``running``, ``succeeded``, ``failed``, ``cancelled``),
  ``pgtq_oldest_waiting_seconds{queue}``, ``pgtq_workers{queue}`` (live
  workers) and ``pgtq_database_up``.  Every process sees the same numbers.
* **What tasks did** is known in the process that ran them.
  :class:`TaskMetrics` counts it from the signals:
  ``pgtq_task_outcomes_total{queue,name,outcome}`` (``succeeded``,
  ``failed``, ``cancelled``, and ``retried`` for an attempt that failed and
  will run again) and ``pgtq_task_duration_seconds{queue,name,outcome}``
  (a histogram of handler run time).  Each process counts only its own tasks.
* **Tags** get series of their own only when listed in ``PGTQ_METRICS_TAGS``
  (default none): ``pgtq_tagged_tasks{tag,state}`` (from the database) and
  ``pgtq_tagged_task_outcomes_total{tag,queue,name,outcome}``.  Other tags
  are never a label: every label value is a series Prometheus keeps, and
  tags such as ``tenant:42`` would grow without bound.  A task with two
  listed tags counts once under each (do not sum across tags).

Ways to expose them:

* ``PGTQ_METRICS_URL = "/metrics"``: the app serves both at that path.
* ``flask pgtq worker --metrics-port 9100``: the worker serves both on its
  own port (each worker process needs its own port).
* Your own registry: ``registry.register(QueueCollector.for_app(app))`` and
  ``TaskMetrics(registry).connect(app)``.

Multi-process caveat: counters live in process memory.  Scrape every worker
process (``--metrics-port``), not only the web app, or task outcomes will be
missing; sum them across instances in PromQL.  The database gauges are the
same from every process: aggregate them with ``max`` (not ``sum``), or
scrape them from one place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import signals
from .admin import COUNT_STATES, Admin
from .exceptions import ConfigurationError, DatabaseError

if TYPE_CHECKING:
    from flask import Flask

    from .extension import PgTq

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Histogram,
        generate_latest,
        start_http_server,
    )
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        'flask_pgtq metrics need prometheus_client: pip install "flask_pgtq[prometheus]"'
    ) from exc

#: Histogram buckets of task durations, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class QueueCollector(Collector):
    """Queue depth by state, oldest waiting age and live workers, read from
    the database at each scrape (a few ``count(*)`` queries: scrape every 15
    seconds or so, not every second).

    :param admin: the :class:`~flask_pgtq.admin.Admin` of the queue's database.
    :param tags: tags counted by state in ``pgtq_tagged_tasks`` (``PGTQ_METRICS_TAGS``).
    """

    def __init__(self, admin: Admin, tags: Sequence[str] = ()) -> None:
        self.admin = admin
        self.tags = tuple(tags)

    @classmethod
    def for_app(cls, app: Flask) -> QueueCollector:
        """The collector of *app*'s queue (the app has ``PgTq`` set up)."""
        with app.app_context():
            extension = app.extensions["pgtq"]
            return cls(extension.admin, extension.config.metrics_tags)

    def describe(self) -> list[Any]:
        # Registering must not query the database.
        return []

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "pgtq_database_up", "1 if the queue's database answered this scrape, else 0"
        )
        try:
            queues = self.admin.status()
            pauses = self.admin.pauses()
            by_tag = self.admin.tag_counts(self.tags)
        except DatabaseError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        tasks = GaugeMetricFamily(
            "pgtq_tasks",
            "Tasks by queue and state (ready and scheduled: queued, due now or later)",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "pgtq_oldest_waiting_seconds",
            "How long the oldest ready task of the queue has waited (0 when none)",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "pgtq_workers", "Live workers serving the queue", labels=["queue"]
        )
        for queue in queues:
            for state in COUNT_STATES:
                tasks.add_metric([queue.queue, state], queue.counts[state])
            oldest.add_metric([queue.queue], queue.oldest_wait or 0.0)
            workers.add_metric([queue.queue], queue.workers)
        paused = GaugeMetricFamily(
            "pgtq_paused",
            "1 for each queue or handler paused now (kind: queue or handler)",
            labels=["kind", "name"],
        )
        for pause in pauses:
            paused.add_metric([pause.kind, pause.target], 1)
        tagged = GaugeMetricFamily(
            "pgtq_tagged_tasks",
            "Tasks by tag (those of PGTQ_METRICS_TAGS only) and state",
            labels=["tag", "state"],
        )
        for tag, counts in by_tag.items():
            for state in COUNT_STATES:
                tagged.add_metric([tag, state], counts[state])
        yield up
        yield tasks
        yield oldest
        yield workers
        yield paused
        if self.tags:
            yield tagged


class TaskMetrics:
    """Counters and a histogram of the tasks run in this process, updated
    from the :mod:`~flask_pgtq.signals`.

    :param registry: where the metrics are registered.
    :param tags: tags with series of their own in
        ``pgtq_tagged_task_outcomes_total`` (``PGTQ_METRICS_TAGS``).
    """

    #: Signal -> outcome label.
    OUTCOMES = {
        "task-succeeded": "succeeded",
        "task-failed": "failed",
        "task-cancelled": "cancelled",
        "task-retrying": "retried",
    }
    #: Most attempts whose start time is remembered (a task whose outcome is
    #: never announced, say after a lost lease, must not leak memory).
    MAX_STARTED = 10_000

    def __init__(self, registry: CollectorRegistry, tags: Sequence[str] = ()) -> None:
        self.tags = frozenset(tags)
        self.tagged = Counter(
            "pgtq_tagged_task_outcomes",
            "Attempts by outcome, for tasks with a tag of PGTQ_METRICS_TAGS (once per tag)",
            ["tag", "queue", "name", "outcome"],
            registry=registry,
        )
        self.outcomes = Counter(
            "pgtq_task_outcomes",
            "Attempts by outcome: succeeded, failed, cancelled, or retried "
            "(failed and scheduled again)",
            ["queue", "name", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "pgtq_task_duration_seconds",
            "Run time of task attempts, by outcome",
            ["queue", "name", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._started: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()
        self._receivers: list[Any] = []

    def connect(self, sender: Any) -> TaskMetrics:
        """Count the tasks of *sender* (the app, or a standalone ``PgTq``)."""
        signals.task_started.connect(self._on_started, sender=sender, weak=False)
        for signal in (
            signals.task_succeeded,
            signals.task_failed,
            signals.task_cancelled,
            signals.task_retrying,
        ):
            outcome = self.OUTCOMES[signal.name]

            def receiver(sender: Any, task: Any, _outcome: str = outcome, **extra: Any) -> None:
                self._on_outcome(task, _outcome, extra.get("duration"))

            signal.connect(receiver, sender=sender, weak=False)
            self._receivers.append((signal, receiver, sender))
        self._receivers.append((signals.task_started, self._on_started, sender))
        return self

    def disconnect(self) -> None:
        """Stop counting."""
        for signal, receiver, sender in self._receivers:
            signal.disconnect(receiver, sender=sender)
        self._receivers.clear()

    def _on_started(self, sender: Any, task: Any, **extra: Any) -> None:
        with self._lock:
            if len(self._started) >= self.MAX_STARTED:
                self._started.pop(next(iter(self._started)))
            self._started[(task.id, task.attempts)] = time.perf_counter()

    def _on_outcome(self, task: Any, outcome: str, duration: float | None) -> None:
        with self._lock:
            started = self._started.pop((task.id, task.attempts), None)
        if duration is None and started is not None:
            duration = time.perf_counter() - started
        labels = (task.queue, task.name, outcome)
        self.outcomes.labels(*labels).inc()
        for tag in self.tags.intersection(getattr(task, "tags", ())):
            self.tagged.labels(tag, *labels).inc()
        if duration is not None:
            self.duration.labels(*labels).observe(duration)


class AppMetrics:
    """The metrics of one app: its registry, collector and task metrics."""

    def __init__(self, app: Flask) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = QueueCollector.for_app(app)
        self.registry.register(self.collector)
        self.tasks = TaskMetrics(self.registry, self.collector.tags).connect(app)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


def app_metrics(app: Flask) -> AppMetrics:
    """The app's :class:`AppMetrics`, created on first use (once per app)."""
    # Signals are sent by the app itself: never connect to a proxy of it.
    app = getattr(app, "_get_current_object", lambda: app)()
    metrics = app.extensions.get("pgtq_metrics")
    if metrics is None:
        metrics = app.extensions["pgtq_metrics"] = AppMetrics(app)
    assert isinstance(metrics, AppMetrics)
    return metrics


def register_metrics(app: Flask, extension: PgTq, url: str) -> None:
    """Serve the app's metrics at *url* (``PGTQ_METRICS_URL`` does this).

    The endpoint has no access check of its own: expose it only where your
    Prometheus scrapes it (queue and task names, no arguments, are shown).
    """
    metrics = app_metrics(app)

    def metrics_view() -> Any:
        return metrics.exposition(), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    app.add_url_rule(url, endpoint="pgtq_metrics", view_func=metrics_view)


def serve_worker_metrics(app: Flask, port: int, host: str = "0.0.0.0") -> Any:
    """Serve the app's metrics over HTTP on *port* from a daemon thread
    (``flask pgtq worker --metrics-port``).  Returns the server."""
    metrics = app_metrics(app)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
