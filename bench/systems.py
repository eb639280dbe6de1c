"""One adapter per queue: how to reset it, push to it, fill it, watch it, run its workers.

Every adapter gives the harness the same verbs; each verb uses the system's own
public API in its usual style (``push``, ``defer``, ``enqueue``, ``delay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from . import harness
from .harness import python, venv_script

BATCH_SIZE = 1000


@dataclass
class WorkerConfig:
    """How to run a system's workers for one drain measurement."""

    name: str
    description: str
    argvs: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def processes(self) -> int:
        return len(self.argvs)


class System:
    name = ""
    backend = "postgres"
    #: Worker configurations tried by ``--measure sweep`` (2 cores each).
    sweep: tuple[str, ...] = ()
    #: Names of the worker configurations used for the two drain rows.
    one_process = "1proc"
    two_cores = "2cores"

    def __init__(self) -> None:
        self.expected = 0

    # The verbs every adapter implements.
    def versions(self) -> dict[str, str]:
        raise NotImplementedError

    def reset(self) -> None:
        """Empty queue, fresh schema, open client."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def push_single(self, n: int) -> float:
        """Push *n* no-op tasks one call each; return the seconds taken."""
        raise NotImplementedError

    def batch_api(self) -> str | None:
        """What the batch push uses, or None when the system has none."""
        return None

    def push_batch(self, n: int, size: int) -> float:
        raise NotImplementedError

    def prefill(self, n: int) -> None:
        raise NotImplementedError

    def remaining(self) -> int:
        """Tasks not finished yet (queued or running), as the queue says."""
        raise NotImplementedError

    def busy(self) -> bool:
        """A cheap "anything left?" for polling while workers drain."""
        return self.remaining() > 0

    def failed(self) -> int:
        return 0

    def push_stamp(self, sent: float) -> None:
        raise NotImplementedError

    def worker_configs(self) -> dict[str, WorkerConfig]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# -- PostgreSQL-based ------------------------------------------------------------


class PostgresSystem(System):
    dbname = ""

    def __init__(self) -> None:
        super().__init__()
        self.probe: harness.SqlProbe | None = None

    def _probe(self) -> harness.SqlProbe:
        if self.probe is None:
            self.probe = harness.SqlProbe(self.dbname)
        return self.probe

    def _close_probe(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def env(self) -> dict[str, str]:
        return {}


class FlaskPgtq(PostgresSystem):
    name = "flask_pgtq"
    dbname = "bench_flask_pgtq"
    sweep = ("2x1", "2x4", "2x32", "2x256", "1x256", "2xp200", "2xp1000", "2xp2000")

    def __init__(self) -> None:
        super().__init__()
        self.app: Any = None
        self.ctx: Any = None
        self.q: Any = None
        self.handlers: dict[str, Any] = {}

    def versions(self) -> dict[str, str]:
        import subprocess

        import flask_pgtq

        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=harness.ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "flask_pgtq"],
            cwd=harness.ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return {
            "flask_pgtq": f"{flask_pgtq.__version__} (git {commit}"
            + (", uncommitted changes in flask_pgtq/" if dirty else "")
            + ")",
            "flask_pgtq path": str(flask_pgtq.__file__),
            "psycopg2": _version("psycopg2-binary"),
            "Flask": _version("Flask"),
        }

    def env(self) -> dict[str, str]:
        return {"BENCH_PGTQ_DSN": harness.libpq_dsn(self.dbname)}

    def _open_client(self) -> None:
        from .apps.pgtq_app import create_app

        self.app, self.q, self.handlers = create_app(harness.libpq_dsn(self.dbname))
        self.ctx = self.app.app_context()
        self.ctx.push()

    def close(self) -> None:
        self._close_probe()
        if self.ctx is not None:
            with contextlib.suppress(Exception):
                self.q.close()  # best effort: a private handle
            self.ctx.pop()
            self.ctx = None
        self.app = self.q = None

    def reset(self) -> None:
        self.close()
        harness.recreate_database(self.dbname)
        self._open_client()
        self.q.init_db()
        self.expected = 0

    def batch_api(self) -> str | None:
        return "handler.push_many([(i,), ...])"

    def push_single(self, n: int) -> float:
        noop = self.handlers["noop"]
        start = time.perf_counter()
        for i in range(n):
            noop.push(i)
        return time.perf_counter() - start

    def push_batch(self, n: int, size: int) -> float:
        chunks = [[(i,) for i in range(lo, min(n, lo + size))] for lo in range(0, n, size)]
        push_many = self.handlers["noop"].push_many
        start = time.perf_counter()
        for chunk in chunks:
            push_many(chunk)
        return time.perf_counter() - start

    def prefill(self, n: int) -> None:
        self.push_batch(n, BATCH_SIZE)
        self.expected += n

    def remaining(self) -> int:
        return int(
            self._probe().value(
                "SELECT count(*) FROM pgtq_tasks WHERE state IN ('queued', 'running')"
            )
        )

    def busy(self) -> bool:
        return bool(
            self._probe().value(
                "SELECT EXISTS (SELECT 1 FROM pgtq_tasks WHERE state = 'queued' AND NOT limited)"
                " OR EXISTS (SELECT 1 FROM pgtq_tasks WHERE state = 'queued' AND limited)"
                " OR EXISTS (SELECT 1 FROM pgtq_tasks WHERE state = 'running')"
            )
        )

    def failed(self) -> int:
        return int(
            self._probe().value(
                "SELECT count(*) FROM pgtq_tasks WHERE state IN ('failed', 'cancelled')"
            )
        )

    def push_stamp(self, sent: float) -> None:
        self.handlers["stamp"].push(sent)

    def worker_configs(self) -> dict[str, WorkerConfig]:
        def argv(*extra: str) -> list[str]:
            return [
                python(),
                "-m",
                "flask",
                "--app",
                "bench.apps.pgtq_app",
                "pgtq",
                "worker",
                "--log-level",
                "WARNING",
                *extra,
            ]

        configs = {
            "1proc": WorkerConfig(
                "1proc", "1 process, default settings (concurrency 1)", [argv()], self.env()
            ),
            "2cores": WorkerConfig(
                "2cores", "2 processes, default settings (concurrency 1)", [argv()] * 2, self.env()
            ),
        }
        for c in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            configs[f"2x{c}"] = WorkerConfig(
                f"2x{c}", f"2 processes x --concurrency {c}", [argv("-c", str(c))] * 2, self.env()
            )
            configs[f"1x{c}"] = WorkerConfig(
                f"1x{c}", f"1 process x --concurrency {c}", [argv("-c", str(c))], self.env()
            )
        for p in (200, 1000, 2000):
            # PGTQ_PREFETCH through the environment (bench/apps/pgtq_app.py).
            configs[f"2xp{p}"] = WorkerConfig(
                f"2xp{p}",
                f"2 processes x --concurrency 1, PGTQ_PREFETCH={p}",
                [argv()] * 2,
                {**self.env(), "BENCH_PGTQ_PREFETCH": str(p)},
            )
        return configs

    def settings(self) -> dict[str, Any]:
        return {
            "client": "Flask app context, handler.push(i) (one INSERT + commit each)",
            "batch": "handler.push_many([(i,), ...])",
            "prefill": "handler.push_many",
            "worker": "python -m flask --app bench.apps.pgtq_app pgtq worker",
            "task": "sync def noop(i): body.run()",
            "queue empty when": "no task is queued or running",
        }


class Procrastinate(PostgresSystem):
    name = "procrastinate"
    dbname = "bench_procrastinate"
    sweep = ("2x1", "2x4", "2x10", "2x50")

    def __init__(self) -> None:
        super().__init__()
        self.module: Any = None
        self.opened = False

    def versions(self) -> dict[str, str]:
        return {"procrastinate": _version("procrastinate"), "psycopg": _version("psycopg")}

    def env(self) -> dict[str, str]:
        return {"BENCH_PROCRASTINATE_DSN": harness.libpq_dsn(self.dbname)}

    def _app(self) -> Any:
        if self.module is None:
            import os

            os.environ["BENCH_PROCRASTINATE_DSN"] = harness.libpq_dsn(self.dbname)
            from .apps import procrastinate_app

            self.module = procrastinate_app
        return self.module.app

    def close(self) -> None:
        self._close_probe()
        if self.opened:
            with contextlib.suppress(Exception):
                self._app().close()
            self.opened = False

    def reset(self) -> None:
        self.close()
        harness.recreate_database(self.dbname)
        app = self._app()
        app.open()
        self.opened = True
        app.schema_manager.apply_schema()
        self.expected = 0

    def push_single(self, n: int) -> float:
        noop = self.module.noop
        start = time.perf_counter()
        for i in range(n):
            noop.defer(i=i)
        return time.perf_counter() - start

    def batch_api(self) -> str | None:
        return "task.batch_defer(*kwargs) per chunk"

    def push_batch(self, n: int, size: int) -> float:
        chunks = [[{"i": i} for i in range(lo, min(n, lo + size))] for lo in range(0, n, size)]
        noop = self.module.noop
        start = time.perf_counter()
        for chunk in chunks:
            noop.batch_defer(*chunk)
        return time.perf_counter() - start

    def prefill(self, n: int) -> None:
        self.push_batch(n, BATCH_SIZE)
        self.expected += n

    def remaining(self) -> int:
        return int(
            self._probe().value(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
        )

    def busy(self) -> bool:
        return bool(
            self._probe().value(
                "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status = 'todo')"
                " OR EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status = 'doing')"
            )
        )

    def failed(self) -> int:
        return int(
            self._probe().value(
                "SELECT count(*) FROM procrastinate_jobs WHERE status NOT IN"
                " ('todo', 'doing', 'succeeded')"
            )
        )

    def push_stamp(self, sent: float) -> None:
        self.module.stamp.defer(sent=sent)

    def worker_configs(self) -> dict[str, WorkerConfig]:
        def argv(*extra: str) -> list[str]:
            return [
                python(),
                "-m",
                "procrastinate",
                "--app",
                "bench.apps.procrastinate_app.app",
                "worker",
                *extra,
            ]

        configs = {
            "1proc": WorkerConfig(
                "1proc", "1 process, default settings (concurrency 1)", [argv()], self.env()
            ),
            "2cores": WorkerConfig(
                "2cores", "2 processes x --concurrency 10", [argv("-c", "10")] * 2, self.env()
            ),
        }
        for c in (1, 4, 10, 20, 50):
            configs[f"2x{c}"] = WorkerConfig(
                f"2x{c}", f"2 processes x --concurrency {c}", [argv("-c", str(c))] * 2, self.env()
            )
        return configs

    def settings(self) -> dict[str, Any]:
        return {
            "client": "sync task.defer(i=i) inside app.open() (psycopg 3 sync pool)",
            "batch": "task.batch_defer(*[{'i': i}, ...]), 1000 per call",
            "worker": "python -m procrastinate --app bench.apps.procrastinate_app.app worker",
            "task": "async def noop(i): body.run()",
            "queue empty when": "no job is todo or doing",
        }


class PgQueuer(PostgresSystem):
    name = "pgqueuer"
    dbname = "bench_pgqueuer"
    sweep = ("2xb10", "2xb20", "2xb50", "2xb100", "2xb200", "2xb500", "2xb1000", "2xb2000")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: Any = None
        self.queries: Any = None

    def versions(self) -> dict[str, str]:
        return {"pgqueuer": _version("pgqueuer"), "asyncpg": _version("asyncpg")}

    def env(self) -> dict[str, str]:
        return {"BENCH_PGQUEUER_DSN": harness.uri_dsn(self.dbname)}

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self._close_probe()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self._run(self.conn.close())
            self.conn = None

    def reset(self) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.close()
        harness.recreate_database(self.dbname)
        self.conn = self._run(asyncpg.connect(harness.uri_dsn(self.dbname)))
        self.queries = Queries(AsyncpgDriver(self.conn))
        self._run(self.queries.install())
        self.expected = 0

    def push_single(self, n: int) -> float:
        async def go() -> float:
            enqueue = self.queries.enqueue
            start = time.perf_counter()
            for i in range(n):
                await enqueue("noop", str(i).encode(), 0)
            return time.perf_counter() - start

        return float(self._run(go()))

    def batch_api(self) -> str | None:
        return "queries.enqueue([entrypoints], [payloads], [priorities]) per chunk"

    def push_batch(self, n: int, size: int) -> float:
        chunks = [list(range(lo, min(n, lo + size))) for lo in range(0, n, size)]

        async def go() -> float:
            enqueue = self.queries.enqueue
            start = time.perf_counter()
            for chunk in chunks:
                await enqueue(
                    ["noop"] * len(chunk), [str(i).encode() for i in chunk], [0] * len(chunk)
                )
            return time.perf_counter() - start

        return float(self._run(go()))

    def prefill(self, n: int) -> None:
        self.push_batch(n, BATCH_SIZE)
        self.expected += n

    def remaining(self) -> int:
        return int(self._probe().value("SELECT count(*) FROM pgqueuer"))

    def busy(self) -> bool:
        return bool(self._probe().value("SELECT EXISTS (SELECT 1 FROM pgqueuer)"))

    def failed(self) -> int:
        return int(
            self._probe().value(
                "SELECT count(*) FROM pgqueuer_log WHERE status::text NOT IN"
                " ('queued', 'picked', 'successful')"
            )
        )

    def push_stamp(self, sent: float) -> None:
        self._run(self.queries.enqueue("stamp", repr(sent).encode(), 0))

    def worker_configs(self) -> dict[str, WorkerConfig]:
        def argv(*extra: str) -> list[str]:
            return [python(), "-m", "bench.apps.pgqueuer_worker", *extra]

        configs = {
            "1proc": WorkerConfig(
                "1proc", "1 process, default settings (batch size 10)", [argv()], self.env()
            ),
            "2cores": WorkerConfig(
                "2cores",
                "2 processes x --batch-size 2000",
                [argv("--batch-size", "2000")] * 2,
                self.env(),
            ),
        }
        for b in (10, 20, 50, 100, 200, 500, 1000, 2000):
            configs[f"2xb{b}"] = WorkerConfig(
                f"2xb{b}",
                f"2 processes x --batch-size {b}",
                [argv("--batch-size", str(b))] * 2,
                self.env(),
            )
        return configs

    def settings(self) -> dict[str, Any]:
        return {
            "client": "asyncpg connection, await queries.enqueue('noop', payload, 0)",
            "batch": "queries.enqueue(lists of 1000)",
            "worker": "python -m bench.apps.pgqueuer_worker (= pgq run"
            " bench.apps.pgqueuer_app:create; see that module for why)",
            "task": "async def noop(job): body.run()",
            "queue empty when": "the pgqueuer table is empty (a job's row is deleted when its"
            " outcome is flushed to pgqueuer_log, after its body ran)",
        }


# -- Redis-based -------------------------------------------------------------------


class RedisSystem(System):
    backend = "redis"
    redis_db = 0

    def __init__(self) -> None:
        super().__init__()
        self.redis: Any = None

    @property
    def url(self) -> str:
        return f"{harness.REDIS_URL}/{self.redis_db}"

    def _connect(self) -> Any:
        import redis

        if self.redis is None:
            self.redis = redis.Redis.from_url(self.url)
        return self.redis

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
            self.redis = None

    def reset(self) -> None:
        self._connect().flushdb()
        self.expected = 0


class RQ(RedisSystem):
    name = "rq"
    redis_db = 14
    sweep = ("1proc", "2cores")

    def __init__(self) -> None:
        super().__init__()
        self.queue: Any = None

    def versions(self) -> dict[str, str]:
        return {"rq": _version("rq"), "redis-py": _version("redis")}

    def reset(self) -> None:
        from rq import Queue

        super().reset()
        self.queue = Queue("default", connection=self._connect())
        self.finished_key = self.queue.finished_job_registry.key
        self.failed_key = self.queue.failed_job_registry.key

    def push_single(self, n: int) -> float:
        from .apps.rq_tasks import noop

        enqueue = self.queue.enqueue
        start = time.perf_counter()
        for i in range(n):
            enqueue(noop, i)
        return time.perf_counter() - start

    def batch_api(self) -> str | None:
        return "queue.enqueue_many([Queue.prepare_data(...)]) per chunk (one pipeline)"

    def push_batch(self, n: int, size: int) -> float:
        from rq import Queue

        from .apps.rq_tasks import noop

        start = time.perf_counter()
        for lo in range(0, n, size):
            self.queue.enqueue_many(
                [Queue.prepare_data(noop, (i,)) for i in range(lo, min(n, lo + size))]
            )
        return time.perf_counter() - start

    def prefill(self, n: int) -> None:
        self.push_batch(n, BATCH_SIZE)
        self.expected += n

    def remaining(self) -> int:
        r = self._connect()
        return self.expected - int(r.zcard(self.finished_key)) - int(r.zcard(self.failed_key))

    def failed(self) -> int:
        return int(self._connect().zcard(self.failed_key))

    def push_stamp(self, sent: float) -> None:
        from .apps.rq_tasks import stamp

        self.queue.enqueue(stamp, sent)

    def worker_configs(self) -> dict[str, WorkerConfig]:
        def argv(*extra: str) -> list[str]:
            return [venv_script("rq"), "worker", "-u", self.url, *extra, "default"]

        simple = ("-w", "rq.worker.SimpleWorker")
        return {
            "1proc": WorkerConfig(
                "1proc",
                "1 SimpleWorker process (no fork per job), default settings",
                [argv(*simple)],
            ),
            "2cores": WorkerConfig(
                "2cores", "2 SimpleWorker processes, --quiet", [argv(*simple, "--quiet")] * 2
            ),
            "fork": WorkerConfig("fork", "1 default Worker (forks a work horse per job)", [argv()]),
        }

    def settings(self) -> dict[str, Any]:
        return {
            "client": "queue.enqueue(noop, i)",
            "batch": "queue.enqueue_many(prepare_data x 1000) (one Redis pipeline)",
            "worker": "rq worker -w rq.worker.SimpleWorker default",
            "task": "def noop(i): body.run() (result kept for the default 500 s)",
            "queue empty when": "finished + failed registries hold every job",
            "redis db": self.redis_db,
        }


class Celery(RedisSystem):
    name = "celery"
    redis_db = 15
    sweep = ("2cores", "prefork2", "default")

    def versions(self) -> dict[str, str]:
        return {
            "celery": _version("celery"),
            "kombu": _version("kombu"),
            "redis-py": _version("redis"),
        }

    def _module(self) -> Any:
        import os

        os.environ["BENCH_CELERY_BROKER"] = self.url
        from .apps import celery_app

        return celery_app

    def close(self) -> None:
        super().close()

    def reset(self) -> None:
        super().reset()
        self._module()

    def push_single(self, n: int) -> float:
        noop = self._module().noop
        start = time.perf_counter()
        for i in range(n):
            noop.delay(i)
        return time.perf_counter() - start

    def batch_api(self) -> str | None:
        return "group(noop.s(i) ...).apply_async() per chunk (one producer)"

    def push_batch(self, n: int, size: int) -> float:
        from celery import group

        noop = self._module().noop
        start = time.perf_counter()
        for lo in range(0, n, size):
            group(noop.s(i) for i in range(lo, min(n, lo + size))).apply_async()
        return time.perf_counter() - start

    def prefill(self, n: int) -> None:
        self.push_batch(n, BATCH_SIZE)
        self.expected += n

    def remaining(self) -> int:
        r = self._connect()
        return int(r.llen("celery")) + int(r.hlen("unacked"))

    def push_stamp(self, sent: float) -> None:
        self._module().stamp.delay(sent)

    def worker_configs(self) -> dict[str, WorkerConfig]:
        env = {"BENCH_CELERY_BROKER": self.url}

        def argv(*extra: str) -> list[str]:
            return [python(), "-m", "celery", "-A", "bench.apps.celery_app", "worker", *extra]

        return {
            "1proc": WorkerConfig(
                "1proc", "1 process: -P solo, default settings", [argv("-P", "solo")], env
            ),
            "2cores": WorkerConfig(
                "2cores",
                "2 processes x -P solo, --without-mingle --without-gossip",
                [
                    argv("-P", "solo", "--without-mingle", "--without-gossip", "-n", f"w{k}@%h")
                    for k in (1, 2)
                ],
                env,
            ),
            "prefork2": WorkerConfig(
                "prefork2",
                "1 worker -P prefork -c 2 (3 processes)",
                [argv("-P", "prefork", "-c", "2")],
                env,
            ),
            "default": WorkerConfig(
                "default", "celery worker with no options (prefork, -c = CPUs)", [argv()], env
            ),
        }

    def settings(self) -> dict[str, Any]:
        return {
            "client": "noop.delay(i)",
            "batch": "group(noop.s(i) x 1000).apply_async()",
            "worker": "python -m celery -A bench.apps.celery_app worker -P solo",
            "task": "def noop(i): body.run(), task_ignore_result=True, no result backend",
            "queue empty when": "the 'celery' list and the 'unacked' hash are empty (the last"
            " prefetched tasks are acked when they start, so this comes before the last"
            " bodies by up to one no-op per process)",
            "redis db": self.redis_db,
        }


ALL: dict[str, type[System]] = {
    "flask_pgtq": FlaskPgtq,
    "procrastinate": Procrastinate,
    "pgqueuer": PgQueuer,
    "rq": RQ,
    "celery": Celery,
}
