"""``flask pgtq init-db``, ``flask pgtq worker`` and ``flask pgtq health``."""

from __future__ import annotations

import logging
import sys

import click
from flask import current_app

from ..exceptions import PgTqError
from .common import current_extension


@click.command("init-db")
def init_db() -> None:
    """Create or upgrade the queue's tables (safe to run again)."""
    try:
        applied = current_extension().init_db()
    except PgTqError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        click.echo(f"applied migrations: {', '.join(str(v) for v in applied)}")
    else:
        click.echo("schema is up to date")


@click.command("worker")
@click.option("--queue", "-q", "queues", multiple=True, help="Queue to serve (repeatable).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Handler threads.")
@click.option("--burst", is_flag=True, help="Run what is ready, then exit.")
@click.option(
    "--max-tasks", type=click.IntRange(min=1), help="Exit after this many tasks (between tasks)."
)
@click.option(
    "--max-memory",
    type=click.FloatRange(min=1),
    help="Exit (between tasks) once resident memory exceeds this many MiB.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or one JSON object each (default PGTQ_LOG_FORMAT, text).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve this worker's Prometheus metrics on this port (the prometheus extra).",
)
@click.option(
    "--metrics-host", default="0.0.0.0", show_default=True, help="Address for --metrics-port."
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    help="Serve /livez and /readyz on this port (for Kubernetes probes).",
)
@click.option(
    "--health-host", default="0.0.0.0", show_default=True, help="Address for --health-port."
)
def worker_command(
    queues: tuple[str, ...],
    concurrency: int | None,
    burst: bool,
    max_tasks: int | None,
    max_memory: float | None,
    log_level: str,
    log_format: str | None,
    metrics_port: int | None,
    metrics_host: str,
    health_port: int | None,
    health_host: str,
) -> None:
    """Run a worker inside the app context until SIGTERM or SIGINT."""
    from .. import logs, worker

    log_format = log_format or current_extension().config.log_format
    logger = logging.getLogger("flask_pgtq")
    added = None
    propagate = logger.propagate
    if log_format == "json" or (not logger.handlers and not logging.getLogger().handlers):
        added = logs.make_handler(log_format, sys.stderr)
        logger.addHandler(added)
        # JSON asked for: JSON lines only, not also text through the root logger.
        logger.propagate = log_format != "json"
    level = logger.level
    logger.setLevel(log_level.upper())
    try:
        if metrics_port is not None:
            from ..metrics import serve_worker_metrics

            try:
                serve_worker_metrics(current_app, metrics_port, metrics_host)
            except (PgTqError, OSError) as exc:
                raise click.ClickException(f"cannot serve metrics: {exc}") from exc
        code = worker.main_loop(
            current_extension(),
            queues=queues or None,
            concurrency=concurrency,
            burst=burst,
            max_tasks=max_tasks,
            max_memory_mb=max_memory,
            health_port=health_port,
            health_host=health_host,
        )
    except PgTqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        logger.setLevel(level)
        logger.propagate = propagate
        if added is not None:
            logger.removeHandler(added)
    if code == worker.EXIT_RESTART:
        worker.restart_process()
    sys.exit(code)


@click.command("health")
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    help="Queue that must be served (repeatable); default: the queues of the app's handlers.",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    help="Fail when a queue's oldest ready task has waited longer than this many seconds.",
)
def health_command(queues: tuple[str, ...], max_wait: float | None) -> None:
    """Exit with status 1 and a one-line reason when a queue has no live
    worker or waits too long (for cron-style alerting); else print ok."""
    from ..health import one_line, queue_problems

    extension = current_extension()
    try:
        default = extension.config.queue
        wanted = list(queues) or sorted(
            {h.defaults.queue or default for h in extension.handlers.values()} or {default}
        )
        problems = queue_problems(extension.admin.status(), wanted, max_wait)
    except PgTqError as exc:
        raise click.ClickException(f"cannot check the queues: {one_line(str(exc))}") from exc
    if problems:
        raise click.ClickException("; ".join(problems))
    click.echo(f"ok: {', '.join(wanted)}")


#: The commands of this module, for the ``flask pgtq`` group.
COMMANDS = [init_db, worker_command, health_command]
