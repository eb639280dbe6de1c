"""``flask pgtq ...`` commands.  Each is a thin shell over importable code:
it gets the extension from ``current_app``, makes one call, and turns
library errors into :class:`click.ClickException`.

- :mod:`.core`: ``init-db`` and ``worker``;
- :mod:`.admin`: inspection and operator actions (``status``, ``tasks``,
  ``show``, ``retry``, ``cancel``, ``delete``, ``purge``, ``workers``).

The extension adds :data:`pgtq_cli` to each app's CLI.
"""

from __future__ import annotations

from flask.cli import AppGroup, with_appcontext

from . import admin, core

#: The ``flask pgtq`` command group.
pgtq_cli = AppGroup("pgtq", help="The flask_pgtq task queue.")
for _command in (*core.COMMANDS, *admin.COMMANDS):
    # As AppGroup.command() would: each command runs in the app context.
    assert _command.callback is not None
    _command.callback = with_appcontext(_command.callback)
    pgtq_cli.add_command(_command)
