"""Celery with a Redis broker and results disabled.

Worker: ``python -m celery -A bench.apps.celery_app worker -P solo``.
"""

from __future__ import annotations

import os

from celery import Celery

from . import body
from .stamp import record

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(i: int = 0) -> None:
    body.run()


@app.task(name="stamp")
def stamp(sent: float) -> None:
    record(sent)
