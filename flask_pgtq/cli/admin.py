"""``flask pgtq status|tasks|show|retry|cancel|delete|purge|workers``: thin
commands over :class:`flask_pgtq.admin.Admin`.

Tables for people, ``--json`` for scripts.  Every error (an unknown id, an
action the task's state does not allow, an unreachable database) exits with
status 1 and a one-line message.

Task data (names, errors, arguments, results) is stored text anyone who can
push a task controls, so everything printed goes through
:func:`~flask_pgtq.formatting.printable`: control characters come out as
escapes (``\\x1b``), never as bytes that drive the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from ..admin import (
    FILTER_STATES,
    FINAL_STATES,
    MAX_PAGE,
    Admin,
)
from ..exceptions import PgTqError
from ..formatting import (
    dumps,
    error_summary,
    format_age,
    format_time,
    history_label,
    jsonable,
    parse_duration,
    printable,
    printable_json,
    task_as_json,
)
from .common import current_extension

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@contextmanager
def _admin() -> Iterator[Admin]:
    """The app's :class:`Admin`; library errors become one-line CLI errors."""
    try:
        yield current_extension().admin
    except (PgTqError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def echo_json(value: Any) -> None:
    click.echo(printable_json(json.dumps(jsonable(value), indent=2, ensure_ascii=False)))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned columns under *headers*; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _cell(value: Any) -> str:
    """One table cell or field value, on one line and safe to print."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    return printable(str(value))


def _clip(text: str | None, width: int = 60) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


@click.command("status")
@json_option
def status_command(as_json: bool) -> None:
    """Per queue: tasks by state, the oldest waiting task's age, live workers."""
    with _admin() as admin:
        queues = admin.status()
        workers = admin.workers()
        pauses = current_extension().pauses()
    live = sum(1 for w in workers if w.alive and w.concurrency)
    if as_json:
        echo_json(
            {
                "queues": [q.as_json() for q in queues],
                "live_workers": live,
                "pauses": [p.as_json() for p in pauses],
            }
        )
        return
    for pause in pauses:
        until = f"until {format_time(pause.until)}" if pause.until else "until resumed"
        reason = f": {printable(pause.reason)}" if pause.reason else ""
        click.echo(
            f"paused {pause.kind} {printable(pause.target)} by "
            f"{printable(pause.paused_by or '?')} {until}{reason}"
        )
    if not queues:
        click.echo("no tasks and no workers yet")
        return
    headers = [
        "QUEUE",
        "WAITING",
        "READY",
        "SCHEDULED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
    ]
    rows = [
        [
            q.queue,
            *(q.counts[s] for s in ("waiting", "ready", "scheduled", "running", *FINAL_STATES)),
            format_age(q.oldest_wait) if q.oldest_wait is not None else "-",
            q.workers,
        ]
        for q in queues
    ]
    click.echo(format_table([*headers, "OLDEST WAITING", "WORKERS"], rows))
    click.echo(f"\n{live} live worker{'s' if live != 1 else ''}")


@click.command("tasks")
@click.option("--state", type=click.Choice(FILTER_STATES), help="Only tasks in this state.")
@click.option("--queue", "-q", help="Only tasks of this queue.")
@click.option("--name", "-n", help="Only tasks of this name.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only tasks with this tag; repeat it for tasks with every tag given.",
)
@click.option(
    "--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Most rows."
)
@click.option("--before", type=int, metavar="ID", help="Only tasks older than this id (paging).")
@json_option
def tasks_command(
    state: str | None,
    queue: str | None,
    name: str | None,
    tags: tuple[str, ...],
    limit: int,
    before: int | None,
    as_json: bool,
) -> None:
    """List tasks, newest first."""
    with _admin() as admin:
        page = admin.tasks(
            state=state, queue=queue, name=name, tag=tags or None, limit=limit, before=before
        )
    if as_json:
        echo_json(
            {"tasks": [t.as_json() for t in page.tasks], "total": page.total, "older": page.older}
        )
        return
    if not page.tasks:
        click.echo("no tasks match")
        return
    rows = [
        [
            t.id,
            t.name,
            t.queue,
            "scheduled" if t.scheduled else t.state,
            f"{t.attempts}/{t.max_attempts}",
            t.created_at,
            t.finished_at if t.finished_at else (t.run_at if t.state == "queued" else None),
            _clip(t.error_line),
        ]
        for t in page.tasks
    ]
    headers = ["ID", "NAME", "QUEUE", "STATE", "ATTEMPTS", "CREATED", "ENDED/RUNS AT", "ERROR"]
    click.echo(format_table(headers, rows))
    shown = f"\n{len(page.tasks)} of {page.total} matching"
    if page.older is not None:
        shown += f"; older ones: --before {page.older}"
    click.echo(shown)


@click.command("show")
@click.argument("task_id", type=int)
@click.option(
    "--traceback",
    "full",
    is_flag=True,
    help="Print every attempt's error in full (the history table shows one line each).",
)
@json_option
def show_command(task_id: int, full: bool, as_json: bool) -> None:
    """Everything about one task: arguments, result, error, attempt history."""
    with _admin() as admin:
        task = admin.get(task_id)
        relatives = admin.relatives(task_id)
    if as_json:
        echo_json({**task_as_json(task), "relatives": [r.as_json() for r in relatives]})
        return
    fields: list[tuple[str, Any]] = [
        ("id", task.id),
        ("name", task.name),
        ("queue", task.queue),
        ("state", task.state.value),
        ("priority", task.priority),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("created", task.created_at),
        ("run at", task.run_at),
        ("started", task.started_at),
        ("finished", task.finished_at),
        ("worker", task.locked_by),
    ]
    if task.cancel_requested_at is not None:
        fields.append(("cancel requested", task.cancel_requested_at))
    if task.workflow_id is not None:
        fields.append(("workflow", task.workflow_id))
    if task.tags:
        fields.append(("tags", ", ".join(task.tags)))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {_cell(value)}")
    sections: list[tuple[str, str | None]] = [
        ("args", dumps(task.args)),
        ("kwargs", dumps(task.kwargs)),
        ("result", dumps(task.result) if task.state.value == "succeeded" else None),
        ("progress", dumps(task.progress) if task.progress is not None else None),
        ("error", task.error),
    ]
    for title, text in sections:
        if text is not None:
            click.echo(f"\n{title}:\n{_indent(printable(text, multiline=True))}")
    if task.history:
        rows = [
            [
                h.get("attempt"),
                history_label(h.get("state")),
                _short(h.get("worker")),
                _iso(h.get("started_at")),
                _iso(h.get("finished_at")),
                _clip(_last(h.get("error"))),
            ]
            for h in task.history
        ]
        headers = ["ATTEMPT", "OUTCOME", "WORKER", "STARTED", "ENDED", "ERROR"]
        click.echo("\nhistory:\n" + _indent(format_table(headers, rows)))
        if full:
            for h in task.history:
                if h.get("error"):
                    title = f"attempt {h.get('attempt')} ({history_label(h.get('state'))})"
                    text = printable(str(h["error"]), multiline=True)
                    click.echo(f"\n{_cell(title)}:\n{_indent(text)}")
    for kind, title in (("parent", "parents"), ("child", "dependents")):
        mine = [[r.id, r.name, r.queue, r.state] for r in relatives if r.kind == kind]
        if mine:
            table = format_table(["ID", "NAME", "QUEUE", "STATE"], mine)
            click.echo(f"\n{title}:\n" + _indent(table))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _short(worker: str | None) -> str | None:
    return worker[:8] if worker else None


def _iso(value: str | None) -> str | None:
    return format_time(value) if value else None


def _last(text: str | None) -> str | None:
    return error_summary(text)


def _action(fn: Callable[[Admin], str]) -> None:
    with _admin() as admin:
        message = fn(admin)
    click.echo(message)


@click.command("retry")
@click.argument("task_id", type=int, required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed task.")
@click.option("--queue", "-q", help="With --failed: only tasks of this queue.")
def retry_command(task_id: int | None, all_failed: bool, queue: str | None) -> None:
    """Put a failed or cancelled task (or, with --failed, every failed task)
    back in the queue with fresh attempts; its history is kept."""
    if (task_id is None) == (not all_failed):
        raise click.UsageError("give a task id or --failed (not both)")
    if queue is not None and not all_failed:
        raise click.UsageError("--queue goes with --failed")
    if task_id is not None:
        _action(
            lambda a: (
                f"task {task_id} queued again ({a.retry(task_id).max_attempts} fresh attempts)"
            )
        )
        return

    def retry_all(admin: Admin) -> str:
        ids = admin.retry_all(queue=queue)
        return f"{len(ids)} failed task{'s' if len(ids) != 1 else ''} queued again"

    _action(retry_all)


@click.command("cancel")
@click.argument("task_id", type=int, required=False)
@click.option(
    "--workflow", "workflow_id", type=int, metavar="ID", help="Cancel every task of a workflow."
)
def cancel_command(task_id: int | None, workflow_id: int | None) -> None:
    """Cancel a waiting or queued task, or ask the worker running it to stop;
    with --workflow, every task of a workflow."""
    if (task_id is None) == (workflow_id is None):
        raise click.UsageError("give a task id or --workflow ID")

    def cancel(admin: Admin) -> str:
        assert task_id is not None
        if admin.cancel(task_id).cancelled:
            return f"task {task_id} cancelled"
        return f"task {task_id} is running: cancel requested, its worker stops it"

    def cancel_workflow(admin: Admin) -> str:
        assert workflow_id is not None
        cancelled, asked = admin.cancel_workflow(workflow_id)
        return (
            f"workflow {workflow_id}: {cancelled} task{'s' if cancelled != 1 else ''} "
            f"cancelled, {asked} running asked to stop"
        )

    _action(cancel if workflow_id is None else cancel_workflow)


@click.command("workflows")
@click.option(
    "--state", type=click.Choice(["running", "finished"]), help="Only running or finished ones."
)
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True)
@json_option
def workflows_command(state: str | None, limit: int, as_json: bool) -> None:
    """Workflows (chains, groups, chords), newest first, with their progress."""
    with _admin() as admin:
        workflows = admin.workflows(state=state, limit=limit)
    if as_json:
        echo_json([w.as_json() for w in workflows])
        return
    if not workflows:
        click.echo("no workflows")
        return
    rows = [
        [
            w.id,
            w.kind,
            w.state,
            f"{w.total - w.pending}/{w.total}",
            w.counts.get("failed", 0),
            w.counts.get("cancelled", 0),
            w.created_at,
        ]
        for w in workflows
    ]
    headers = ["ID", "KIND", "STATE", "ENDED", "FAILED", "CANCELLED", "CREATED"]
    click.echo(format_table(headers, rows))


@click.command("delete")
@click.argument("task_id", type=int)
def delete_command(task_id: int) -> None:
    """Delete a finished task."""

    def delete(admin: Admin) -> str:
        admin.delete(task_id)
        return f"task {task_id} deleted"

    _action(delete)


@click.command("purge")
@click.option(
    "--state",
    "states",
    type=click.Choice(FINAL_STATES),
    multiple=True,
    required=True,
    help="Delete finished tasks in this state (repeatable).",
)
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Only tasks that ended longer ago than this: seconds, or 30m, 12h, 7d, 2w.",
)
@click.option("--queue", "-q", help="Only tasks of this queue.")
@click.option("--dry-run", is_flag=True, help="Count, delete nothing.")
def purge_command(
    states: tuple[str, ...], older_than: str, queue: str | None, dry_run: bool
) -> None:
    """Delete finished tasks that ended long ago."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc

    def purge(admin: Admin) -> str:
        count = admin.purge(states=states, older_than=seconds, queue=queue, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        return f"{verb} {count} task{'s' if count != 1 else ''}"

    _action(purge)


@click.command("workers")
@json_option
def workers_command(as_json: bool) -> None:
    """Registered workers: heartbeat age and the tasks they run."""
    with _admin() as admin:
        workers = admin.workers()
    if as_json:
        echo_json([w.as_json() for w in workers])
        return
    if not workers:
        click.echo("no workers registered")
        return
    rows = [
        [
            w.id[:8],
            w.hostname,
            w.pid,
            ",".join(w.queues) or "(pop)",
            w.concurrency,
            format_age(w.heartbeat_age),
            ("stopping" if w.stopping_since else "alive") if w.alive else "lease expired",
            ", ".join(f"{t['id']} {t['name']}" for t in w.tasks) or "-",
        ]
        for w in workers
    ]
    headers = ["ID", "HOST", "PID", "QUEUES", "THREADS", "HEARTBEAT", "STATE", "RUNNING"]
    click.echo(format_table(headers, rows))


#: The commands of this module, for the ``flask pgtq`` group.
COMMANDS = [
    status_command,
    tasks_command,
    show_command,
    retry_command,
    cancel_command,
    workflows_command,
    delete_command,
    purge_command,
    workers_command,
]
