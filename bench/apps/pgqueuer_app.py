"""pgqueuer: async entrypoints on an asyncpg connection (its default driver).

Worker: ``python -m pgqueuer run bench.apps.pgqueuer_app:create``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from . import body
from .stamp import record

DSN = os.environ.get("BENCH_PGQUEUER_DSN", "postgresql://postgres@127.0.0.1:5432/bench_pgqueuer")


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    conn = await asyncpg.connect(DSN)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        body.run()

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        record(float((job.payload or b"0").decode()))

    try:
        yield pgq
    finally:
        await conn.close()
