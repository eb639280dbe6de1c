"""procrastinate: async tasks (its native style), psycopg 3 connector.

Worker: ``python -m procrastinate --app bench.apps.procrastinate_app.app worker``.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from . import body
from .stamp import record

DSN = os.environ.get(
    "BENCH_PROCRASTINATE_DSN", "dbname=bench_procrastinate user=postgres host=127.0.0.1"
)
app = App(connector=PsycopgConnector(conninfo=DSN))


@app.task(name="noop")
async def noop(i: int = 0) -> None:
    body.run()


@app.task(name="stamp")
async def stamp(sent: float) -> None:
    record(sent)
