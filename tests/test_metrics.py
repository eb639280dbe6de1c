"""Prometheus metrics: the queue collector, task counters, the endpoints."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest

from flask_pgtq import ConfigurationError, PgTq
from flask_pgtq.metrics import QueueCollector, TaskMetrics
from tests import worker_app
from tests.helpers import poll_until, sql_all


def make_app(dsn: str, **config: Any) -> tuple[Flask, PgTq]:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    app.config["PGTQ_RETRY_BACKOFF"] = 0
    app.config["PGTQ_METRICS_URL"] = "/metrics"
    app.config.update(config)
    q = PgTq(app)

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    @q.handler(max_attempts=2)
    def boom() -> None:
        raise RuntimeError("no")

    return app, q


def sample(body: str, metric: str, /, **labels: str) -> float | None:
    """The value of one sample in Prometheus' text format, or ``None``."""
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != metric:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def test_metrics_endpoint_shows_queue_depth_and_outcomes(dsn: str) -> None:
    app, q = make_app(dsn)
    with app.app_context():
        for i in range(3):
            q.push("add", i, i)
        q.handlers["add"].options(delay=600).push(0, 0)
        q.pop().run()
        q.push("boom")
        sql_all(
            dsn,
            "UPDATE pgtq_tasks SET run_at = now() - interval '42 seconds' "
            "WHERE state = 'queued' AND run_at <= now()",
        )
        q.handlers["boom"].options(priority=9).push()
        q.pop().run()  # boom: attempt 1 fails, retried (backoff 0)
        q.pop().run()  # boom again: attempt 2 fails for good

    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    body = response.get_data(as_text=True)

    assert sample(body, "pgtq_database_up") == 1
    assert sample(body, "pgtq_tasks", queue="default", state="ready") == 3
    assert sample(body, "pgtq_tasks", queue="default", state="scheduled") == 1
    assert sample(body, "pgtq_tasks", queue="default", state="succeeded") == 1
    assert sample(body, "pgtq_tasks", queue="default", state="failed") == 1
    assert 41 <= sample(body, "pgtq_oldest_waiting_seconds", queue="default") < 100
    assert sample(body, "pgtq_workers", queue="default") == 0
    assert "pgtq_paused{" not in body
    with app.app_context():
        q.pause("default")
        q.pause(handler="boom")
    body = app.test_client().get("/metrics").get_data(as_text=True)
    assert sample(body, "pgtq_paused", kind="queue", name="default") == 1
    assert sample(body, "pgtq_paused", kind="handler", name="boom") == 1

    outcome = "pgtq_task_outcomes_total"
    assert sample(body, outcome, queue="default", name="add", outcome="succeeded") == 1
    assert sample(body, outcome, queue="default", name="boom", outcome="retried") == 1
    assert sample(body, outcome, queue="default", name="boom", outcome="failed") == 1
    count = "pgtq_task_duration_seconds_count"
    assert sample(body, count, queue="default", name="add", outcome="succeeded") == 1
    assert sample(body, count, queue="default", name="boom", outcome="failed") == 1


def test_collector_reports_a_database_that_is_down() -> None:
    app, _ = make_app("host=127.0.0.1 port=1 user=u dbname=d connect_timeout=5")
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert sample(response.get_data(as_text=True), "pgtq_database_up") == 0


def test_collector_and_task_metrics_in_your_own_registry(dsn: str) -> None:
    app, q = make_app(dsn, PGTQ_METRICS_URL=None)
    assert "pgtq_metrics" not in app.view_functions
    registry = CollectorRegistry()
    registry.register(QueueCollector.for_app(app))
    metrics = TaskMetrics(registry).connect(app)
    try:
        with app.app_context():
            first = q.push("add", 1, 2)
            q.handlers["add"].options(after=[first]).push(3, 4)
            q.pop().run()
            q.handlers["add"].options(after=[q.push("add", 0, 0)]).push(5, 6)
        body = generate_latest(registry).decode()
    finally:
        metrics.disconnect()
    assert sample(body, "pgtq_tasks", queue="default", state="succeeded") == 1
    assert sample(body, "pgtq_tasks", queue="default", state="waiting") == 1
    assert (
        sample(body, "pgtq_task_outcomes_total", queue="default", name="add", outcome="succeeded")
        == 1
    )


def test_metrics_url_must_be_a_path(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_METRICS_URL"):
        make_app(dsn, PGTQ_METRICS_URL="metrics")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_worker_serves_its_metrics_on_a_port(dsn: str, start_worker: Any, monkeypatch) -> None:
    monkeypatch.setenv("PGTQ_TEST_APP_DSN", dsn)
    app = worker_app.create_app()
    with app.app_context():
        for i in range(3):
            worker_app.add.push(i, i)
    port = _free_port()
    start_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1")

    def scrape() -> str | None:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            body = response.read().decode()
        labels = {"queue": "default", "name": "add", "outcome": "succeeded"}
        counted = sample(body, "pgtq_task_outcomes_total", **labels) == 3
        # The database is read first in a scrape, the counters after: the
        # last task may be counted before the database shows it.
        stored = sample(body, "pgtq_tasks", queue="default", state="succeeded") == 3
        return body if counted and stored else None

    body = poll_until(scrape, 20, 0.1, "the worker to count 3 tasks")
    assert sample(body, "pgtq_workers", queue="default") == 1
