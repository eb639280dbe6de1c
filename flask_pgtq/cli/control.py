"""``flask pgtq pause``, ``resume`` and ``schedules ...``: run-time control."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..exceptions import PgTqError
from ..formatting import format_time, parse_duration, printable
from .admin import echo_json, format_table, json_option
from .common import current_extension

if TYPE_CHECKING:
    from ..extension import PgTq


F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def _queue() -> Iterator[PgTq]:
    """The app's extension; library errors become one-line CLI errors."""
    try:
        yield current_extension()
    except (PgTqError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("pause")
@click.argument("queue", required=False)
@click.option("--handler", help="Pause this handler (task name) instead of a queue.")
@click.option("--for", "for_", metavar="DURATION", help="End by itself after e.g. 10m, 2h.")
@click.option("--reason", help="Shown by 'flask pgtq status' and the dashboard.")
def pause_command(
    queue: str | None, handler: str | None, for_: str | None, reason: str | None
) -> None:
    """Pause QUEUE (or --handler NAME): no worker claims its tasks until it
    is resumed or --for runs out.  Running tasks finish; pushes wait."""
    with _queue() as q:
        until = None if for_ is None else parse_duration(for_)
        pause = q.pause(queue, handler=handler, until=until, reason=reason)
    end = f" until {format_time(pause.until)}" if pause.until else " until resumed"
    click.echo(f"paused {pause.kind} {printable(pause.target)}{end}")


@click.command("resume")
@click.argument("queue", required=False)
@click.option("--handler", help="Resume this handler (task name) instead of a queue.")
def resume_command(queue: str | None, handler: str | None) -> None:
    """Resume QUEUE (or --handler NAME); listening workers claim at once."""
    with _queue() as q:
        done = q.resume(queue, handler=handler)
    what = f"handler {printable(handler)}" if handler else f"queue {printable(queue or '')}"
    if not done:
        raise click.ClickException(f"{what} was not paused")
    click.echo(f"resumed {what}")


@click.group("schedules")
def schedules_group() -> None:
    """Cron schedules: list them; add, change or remove stored ones."""


def _json_option(name: str) -> Callable[[F], F]:
    example = """'[1, "a"]'""" if name == "args" else """'{"key": 1}'"""
    return click.option(f"--{name}", help=f"JSON {name} of each task, e.g. {example}")


def _loads(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"--{what} is not JSON: {exc}") from None


@schedules_group.command("list")
@json_option
def schedules_list(as_json: bool) -> None:
    """Every schedule, code and stored, with its next fire time."""
    with _queue() as q:
        infos = q.schedules.list()
    if as_json:
        echo_json([info.as_json() for info in infos])
        return
    if not infos:
        click.echo("no schedules")
        return
    rows = [
        [
            printable(i.name),
            i.source,
            printable(i.handler),
            i.cron,
            i.tz,
            "yes" if i.enabled else "no",
            format_time(i.next_fire) if i.next_fire else "-",
            i.last_task_id if i.last_task_id is not None else "-",
        ]
        for i in infos
    ]
    headers = ["NAME", "SOURCE", "HANDLER", "CRON", "TZ", "ENABLED", "NEXT", "LAST TASK"]
    click.echo(format_table(headers, rows))


@schedules_group.command("add")
@click.argument("name")
@click.argument("cron")
@click.argument("handler")
@_json_option("args")
@_json_option("kwargs")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone.")
def schedules_add(
    name: str, cron: str, handler: str, args: str | None, kwargs: str | None, tz: str
) -> None:
    """Store schedule NAME: run HANDLER on CRON (five fields, or six with seconds)."""
    with _queue() as q:
        info = q.schedules.add(
            name, cron, handler, _loads(args, "args") or (), _loads(kwargs, "kwargs"), tz
        )
    click.echo(f"added {printable(info.name)}: next at {format_time(info.next_fire)}")


@schedules_group.command("update")
@click.argument("name")
@click.option("--cron")
@click.option("--handler")
@_json_option("args")
@_json_option("kwargs")
@click.option("--tz")
def schedules_update(
    name: str,
    cron: str | None,
    handler: str | None,
    args: str | None,
    kwargs: str | None,
    tz: str | None,
) -> None:
    """Change stored schedule NAME; what is not given stays."""
    with _queue() as q:
        info = q.schedules.update(
            name,
            cron=cron,
            handler_name=handler,
            args=_loads(args, "args"),
            kwargs=_loads(kwargs, "kwargs"),
            tz=tz,
        )
    click.echo(f"updated {printable(info.name)}")


def _simple(action: str, help_text: str) -> click.Command:
    @schedules_group.command(action, help=help_text)
    @click.argument("name")
    def command(name: str) -> None:
        with _queue() as q:
            result = getattr(q.schedules, action.replace("run", "run_now"))(name)
        if action == "run":
            click.echo(f"pushed task {result.id}")
        else:
            click.echo(f"{action}d {printable(name)}")

    return command


_simple("disable", "Stop firing stored schedule NAME (kept).")
_simple("enable", "Fire stored schedule NAME again.")
_simple("remove", "Delete stored schedule NAME.")
_simple("run", "Push the task of schedule NAME now.")


#: The commands of this module, for the ``flask pgtq`` group.
COMMANDS = [pause_command, resume_command, schedules_group]
