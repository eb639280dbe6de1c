"""Development mode: an embedded PostgreSQL server and an in-process worker.

For trying an app on a machine without a PostgreSQL server; never for
production.  Both are opt-in, with config keys:

``PGTQ_DEV_DATABASE = True``
    When ``PGTQ_DSN`` is not set, start a PostgreSQL server from the
    `pgserver <https://pypi.org/project/pgserver/>`_ package (``pip install
    "flask_pgtq[dev]"``, which ships the PostgreSQL binaries) with its data
    in the app's instance folder, create the queue's tables, and set
    ``PGTQ_DSN`` to it.  The next run reuses the server and its data.  The
    server stops when the last process using it exits.  With ``PGTQ_DSN``
    set, the setting does nothing.

``PGTQ_DEV_WORKER = True``
    The first request the app serves starts a worker in a thread of that
    process (serving the queues of all registered handlers), so ``flask run``
    alone runs tasks.  It stops, letting running tasks finish, when the
    process exits.  Only processes that serve requests run it: ``flask pgtq
    init-db`` and the reloader's watcher process do not.

This module does not import Flask: the extension passes the app in.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from flask import Flask

    from .app_queue import AppQueue
    from .extension import PgTq
    from .worker import Worker

log = logging.getLogger("flask_pgtq.devdb")

#: Name of the data directory inside the app's instance folder.
DATA_DIRECTORY = "pgtq-dev-db"
#: The system user pgserver runs PostgreSQL as when we are root.
ROOT_RUNS_AS = "pgserver"

_INSTALL_HINT = 'PGTQ_DEV_DATABASE needs the pgserver package: pip install "flask_pgtq[dev]"'


@dataclass
class DevDatabase:
    """A development PostgreSQL server started by :func:`start_dev_database`.

    :ivar datadir: its data directory.
    :ivar dsn: a libpq connection string (over a Unix socket) for the
        ``postgres`` database, as the ``postgres`` superuser.
    """

    datadir: Path
    dsn: str
    _server: Any = field(repr=False)

    def stop(self) -> None:
        """Let go of the server: it stops if no other process uses it.

        Also done at exit; calling it twice is harmless.
        """
        with contextlib.suppress(KeyError):  # pgserver's second call finds nothing
            self._server.cleanup()
        if _databases.get(self.datadir) is self:
            del _databases[self.datadir]

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return _running_in(self.datadir)


_databases: dict[Path, DevDatabase] = {}
_lock = threading.Lock()


def start_dev_database(directory: str | os.PathLike[str]) -> DevDatabase:
    """Start (or join) a development PostgreSQL server with its data in
    *directory*/``pgtq-dev-db``, and create or upgrade the queue's tables.

    The directory is created if needed.  A server already running there (from
    another process of the app, say a ``flask pgtq worker``) is reused, and
    the data of an earlier run is kept.  The server stops when the last
    process that started or joined it exits (or calls :meth:`DevDatabase.stop`).

    As root, PostgreSQL cannot run as root: pgserver runs it as the system
    user ``pgserver`` (creating it with ``useradd`` if needed), gives that
    user the data directory, and makes every directory above the data
    directory and above pgserver's binaries readable and searchable by all
    users (``chmod o+rx``).  A warning names the directories it changes.

    :raises ConfigurationError: pgserver is not installed.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns, at import, when XDG_RUNTIME_DIR is unset.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise ConfigurationError(_INSTALL_HINT) from None
    root = Path(directory).expanduser().resolve()
    datadir = root / DATA_DIRECTORY
    with _lock:
        database = _databases.get(datadir)
        if database is not None:
            if database.running:
                return database
            database.stop()  # it died: forget it, then start it again
        root.mkdir(parents=True, exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            _warn_as_root(datadir, Path(pgserver.__file__).parent / "pginstall" / "bin")
        with _pgserver_lock(pgserver):
            _forget_dead_processes(datadir)
        started = not _running_in(datadir)
        log.info("%s the development database in %s", "starting" if started else "joining", datadir)
        server = pgserver.get_server(datadir, cleanup_mode="stop")  # type: ignore[attr-defined]
        database = DevDatabase(datadir, _dsn(server), server)
        _databases[datadir] = database
    _migrate(database.dsn)
    return database


def _dsn(server: Any) -> str:
    from psycopg2.extensions import make_dsn

    info = server.get_postmaster_info()
    return make_dsn(
        host=str(info.socket_dir), port=info.port or 5432, user="postgres", dbname="postgres"
    )


def _migrate(dsn: str) -> None:
    import psycopg2

    from . import schema

    conn = psycopg2.connect(dsn)
    try:
        applied = schema.upgrade(conn)
    finally:
        conn.close()
    if applied:
        log.info("development database: applied migrations %s", applied)


# -- pgserver's bookkeeping -------------------------------------------------------


@contextlib.contextmanager
def _pgserver_lock(pgserver: Any) -> Iterator[None]:
    """pgserver's own inter-process lock, around changes to its pid list."""
    lock = getattr(pgserver.PostgresServer, "_lock", None)
    if lock is None:  # pragma: no cover - another pgserver version
        yield
        return
    with lock:
        yield


def _forget_dead_processes(datadir: Path) -> None:
    """Drop processes that died without saying so (SIGKILL) from the list of
    processes pgserver keeps; else the server never stops by itself."""
    handles = datadir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def _running_in(datadir: Path) -> bool:
    pid = _postmaster_pid(datadir)
    return pid is not None and _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _warn_as_root(datadir: Path, bindir: Path) -> None:
    """Say what pgserver is about to change on this machine."""
    opened = []
    for path in (datadir.parent, bindir):
        for directory in [path, *path.parents]:
            try:
                mode = directory.stat().st_mode
            except OSError:
                continue
            if (mode & (stat.S_IROTH | stat.S_IXOTH)) != (stat.S_IROTH | stat.S_IXOTH):
                opened.append(str(directory))
    import pwd

    try:
        pwd.getpwnam(ROOT_RUNS_AS)
        user, created = f"the system user {ROOT_RUNS_AS!r}", False
    except KeyError:
        user, created = f"a new system user {ROOT_RUNS_AS!r} (useradd)", True
    note = (
        f"; pgserver makes these directories readable by all users so that it can: "
        f"{', '.join(dict.fromkeys(opened))}"
        if opened
        else ""
    )
    # Only worth a warning when something on the machine changes.
    log.log(
        logging.WARNING if created or opened else logging.INFO,
        "running as root: the development database runs PostgreSQL as %s%s",
        user,
        note,
    )


# -- the in-process worker ----------------------------------------------------------


class DevWorker:
    """A worker in a thread of the web process (``PGTQ_DEV_WORKER``).

    :meth:`ensure_started` is registered to run before each request; the
    first one starts the thread.  :meth:`stop` runs at exit.
    """

    def __init__(self, extension: PgTq, bound: AppQueue) -> None:
        self.extension = extension
        self.bound = bound
        self.worker: Worker | None = None
        self.thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the worker thread unless it runs already."""
        if self.thread is not None:
            return
        with self._lock:
            if self.thread is not None or self._stopping:
                return
            _log_to_stderr()
            self.worker = self._build()
            self.thread = threading.Thread(target=self._run, name="pgtq-dev-worker", daemon=True)
            self.thread.start()
            # Registered after the dev database's own exit handler, so it runs
            # first: the worker stops before the server does.
            atexit.register(self.stop)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker: running tasks get ``PGTQ_SHUTDOWN_GRACE`` seconds,
        then go back to the queue.  Waits for the thread (at most *timeout*)."""
        with self._lock:
            self._stopping = True
            worker, thread = self.worker, self.thread
        if worker is None or thread is None:
            return
        if timeout is None:
            timeout = self.bound.config.shutdown_grace + 5
        if worker.busy:
            log.info(
                "development worker: running tasks get up to %ss to finish "
                "(interrupt again to put them back in the queue now)",
                self.bound.config.shutdown_grace,
            )
        worker.stop("the web process is stopping")
        try:
            thread.join(timeout)
        except KeyboardInterrupt:
            worker.stop("interrupted again")  # a second stop skips the grace period
            thread.join(5)
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)

    @property
    def queues(self) -> list[str]:
        """The default queue and those of every registered handler."""
        default = self.bound.config.queue
        names = {h.defaults.queue or default for h in self.extension.handlers.values()}
        return sorted(names | {default})

    def _build(self) -> Worker:
        from .worker import Worker

        return Worker(
            self.bound.runner,
            queues=self.queues,
            concurrency=self.bound.config.concurrency,
            schedules=self.extension.schedules.values(),
        )

    def _run(self) -> None:
        from .worker import EXIT_RESTART

        while True:
            assert self.worker is not None
            try:
                code = self.worker.run()
            except Exception:
                log.exception("the development worker stopped")
                return
            with self._lock:
                if code != EXIT_RESTART or self._stopping:
                    return
                log.warning("development worker: a handler is stuck; starting a fresh worker")
                self.worker = self._build()


_dev_workers: WeakKeyDictionary[Any, DevWorker] = WeakKeyDictionary()


def add_dev_worker(app: Flask, extension: PgTq, bound: AppQueue) -> DevWorker:
    """Run a :class:`~flask_pgtq.devdb.DevWorker` in *app*'s serving process
    from its first request."""
    dev = DevWorker(extension, bound)
    app.before_request(dev.ensure_started)
    _dev_workers[app] = dev
    return dev


def dev_worker(app: Any) -> DevWorker | None:
    """The :class:`~flask_pgtq.devdb.DevWorker` of *app*, or ``None``
    without ``PGTQ_DEV_WORKER``."""
    return _dev_workers.get(app)


def _log_to_stderr() -> None:
    """Show the worker's INFO lines, as ``flask pgtq worker`` does, unless
    logging is configured."""
    logger = logging.getLogger("flask_pgtq")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
