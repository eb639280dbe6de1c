"""What the ``flask pgtq`` commands share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from flask import current_app

if TYPE_CHECKING:
    from ..extension import PgTq


def current_extension() -> PgTq:
    """The current app's :class:`~flask_pgtq.PgTq`, or a click error."""
    extension = current_app.extensions.get("pgtq")
    if extension is None:
        raise click.ClickException("this app has no PgTq extension: call PgTq(app)")
    return extension  # type: ignore[no-any-return]
