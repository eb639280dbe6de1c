"""flask_pgtq: a Flask app with the two benchmark handlers, default settings.

Worker: ``python -m flask --app bench.apps.pgtq_app pgtq worker``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from flask_pgtq import PgTq

from . import body
from .stamp import record

DSN = os.environ.get("BENCH_PGTQ_DSN", "dbname=bench_flask_pgtq user=postgres host=127.0.0.1")


def create_app(dsn: str = DSN) -> tuple[Flask, PgTq, dict[str, Any]]:
    """A fresh app, extension and handlers (the harness makes one per fresh database)."""
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    prefetch = os.environ.get("BENCH_PGTQ_PREFETCH")
    if prefetch is not None:  # a sweep configuration; the default otherwise
        app.config["PGTQ_PREFETCH"] = int(prefetch)
    q = PgTq(app)

    @q.handler()
    def noop(i: int = 0) -> None:
        body.run()

    @q.handler()
    def stamp(sent: float) -> None:
        record(sent)

    return app, q, {"noop": noop, "stamp": stamp}


app, q, handlers = create_app()
