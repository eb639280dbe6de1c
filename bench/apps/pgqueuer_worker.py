"""Run a pgqueuer worker exactly as ``pgq run bench.apps.pgqueuer_app:create`` does.

pgqueuer 1.6.0's ``pgq run`` fails at start with typer 0.29 (its ``--log-level``
parser hands a ``str`` where an enum is expected), so this calls the same
code the command calls: ``supervisor.run`` on pgqueuer's own event loop
runner (uvloop when installed, which pgqueuer depends on), with pgqueuer's
logging set up at its default level, INFO.

    python -m bench.apps.pgqueuer_worker [--batch-size N]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from pgqueuer.adapters.cli import supervisor
from pgqueuer.adapters.cli.cli import asyncio_run
from pgqueuer.core import logconfig

from .pgqueuer_app import create


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--dequeue-timeout", type=float, default=30.0)
    opts = parser.parse_args()
    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)
    asyncio_run(
        supervisor.run(
            create,
            batch_size=opts.batch_size,
            dequeue_timeout=timedelta(seconds=opts.dequeue_timeout),
        )
    )


if __name__ == "__main__":
    main()
