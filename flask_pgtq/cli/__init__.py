"""``flask pgtq ...`` commands.  Each is a thin shell over importable code:
it gets the extension from ``current_app``, makes one call, and turns
library errors into :class:`click.ClickException`.

- :mod:`.core`: ``init-db`` and ``worker``;
- :mod:`.admin`: inspection and operator actions (``status``, ``tasks``,
  ``show``, ``retry``, ``cancel``, ``delete``, ``purge``, ``workers``).

The extension adds :data:`pgtq_cli` to each app's CLI.
"""

from __future__ import annotations

import click
from flask.cli import AppGroup, with_appcontext

from . import admin, control, core

#: The ``flask pgtq`` command group.
pgtq_cli = AppGroup("pgtq", help="The flask_pgtq task queue.")


def _in_app_context(command: click.Command) -> click.Command:
    """As AppGroup.command() would: the command (and a group's
    subcommands) run in the app context."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _in_app_context(sub)
    elif command.callback is not None:
        command.callback = with_appcontext(command.callback)
    return command


for _command in (*core.COMMANDS, *admin.COMMANDS, *control.COMMANDS):
    pgtq_cli.add_command(_in_app_context(_command))
