"""flask_pgtq with settings from the environment, for bench/backlog.py,
bench/scaleout.py and bench/concurrency.py.

Worker: ``python -m flask --app bench.apps.pgtq_tuned_app pgtq worker``.

``BENCH_PGTQ_DSN`` is the database; every ``BENCHCFG_PGTQ_<KEY>`` variable
sets ``PGTQ_<KEY>`` (the value is read as JSON when it parses, e.g.
``BENCHCFG_PGTQ_KEEP_SUCCEEDED=5``).  Nothing set: every default, as in
``pgtq_app``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

from flask_pgtq import PgTq

DSN = os.environ.get("BENCH_PGTQ_DSN", "dbname=bench_backlog user=postgres host=127.0.0.1")


def create_app(dsn: str = DSN, **config: Any) -> tuple[Flask, PgTq, dict[str, Any]]:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = dsn
    app.config.from_prefixed_env("BENCHCFG")
    app.config.update(config)
    q = PgTq(app)

    @q.handler()
    def noop(i: int = 0) -> None:
        return None

    @q.handler()
    def sleep_ms(ms: float = 10.0) -> None:
        """I/O-bound: waits without holding the GIL."""
        time.sleep(ms / 1000)

    @q.handler()
    def spin_ms(ms: float = 5.0) -> int:
        """CPU-bound: a pure-Python loop for about *ms* of CPU time."""
        end = time.thread_time() + ms / 1000
        n = 0
        while time.thread_time() < end:
            for _ in range(200):
                n += 1
        return n

    return app, q, {"noop": noop, "sleep_ms": sleep_ms, "spin_ms": spin_ms}


app, q, handlers = create_app()
