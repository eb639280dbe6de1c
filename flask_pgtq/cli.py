"""``flask pgtq ...`` commands.  Each is a thin shell over importable code."""

from __future__ import annotations

import logging
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from .exceptions import PgTqError
from .extension import PgTq

pgtq_cli = AppGroup("pgtq", help="The flask_pgtq task queue.")


def _extension() -> PgTq:
    extension = current_app.extensions.get("pgtq")
    if extension is None:
        raise click.ClickException("this app has no PgTq extension: call PgTq(app)")
    return extension  # type: ignore[no-any-return]


@pgtq_cli.command("init-db")
def init_db() -> None:
    """Create or upgrade the queue's tables (safe to run again)."""
    try:
        applied = _extension().init_db()
    except PgTqError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        click.echo(f"applied migrations: {', '.join(str(v) for v in applied)}")
    else:
        click.echo("schema is up to date")


@pgtq_cli.command("worker")
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
def worker_command(
    queues: tuple[str, ...],
    concurrency: int | None,
    burst: bool,
    max_tasks: int | None,
    max_memory: float | None,
    log_level: str,
) -> None:
    """Run a worker inside the app context until SIGTERM or SIGINT."""
    from . import worker

    logger = logging.getLogger("flask_pgtq")
    added = None
    if not logger.handlers and not logging.getLogger().handlers:
        added = logging.StreamHandler(sys.stderr)
        added.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(added)
    level = logger.level
    logger.setLevel(log_level.upper())
    try:
        code = worker.main_loop(
            _extension(),
            queues=queues or None,
            concurrency=concurrency,
            burst=burst,
            max_tasks=max_tasks,
            max_memory_mb=max_memory,
        )
    except PgTqError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        logger.setLevel(level)
        if added is not None:
            logger.removeHandler(added)
    if code == worker.EXIT_RESTART:
        worker.restart_process()
    sys.exit(code)
