"""Migrations: applied once, recorded, safe to run concurrently, same as a fresh install."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from flask import Flask

from flask_pgtq import PgTq, PgTqError, SchemaNotReady, queries, schema
from tests.helpers import poll_until, sql_all, sql_one

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_db(empty_dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection to a database without any table."""
    conn = psycopg2.connect(empty_dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def all_versions() -> list[int]:
    return [m.version for m in schema.migrations()]


# -- upgrade ------------------------------------------------------------------------


def test_migrations_are_numbered_from_one_in_order_each_number_once() -> None:
    # Gaps are allowed: branches number their migrations apart (0005 may
    # ship before 0004), and upgrade applies whichever are missing.
    assert all_versions()[0] == 1
    assert all_versions() == sorted(set(all_versions()))
    assert schema.latest_version() == all_versions()[-1]


def test_a_database_missing_a_lower_migration_is_behind(
    empty_db: psycopg2.extensions.connection, empty_dsn: str
) -> None:
    schema.upgrade(empty_db)
    skipped = all_versions()[-2]
    sql_all(empty_dsn, f"DELETE FROM pgtq_schema_version WHERE version = {skipped} RETURNING 1")
    assert schema.current_version(empty_db) == all_versions()[-3]


def test_upgrade_applies_every_migration_once(
    empty_db: psycopg2.extensions.connection, empty_dsn: str
) -> None:
    assert schema.current_version(empty_db) == 0
    assert schema.upgrade(empty_db) == all_versions()
    assert schema.current_version(empty_db) == schema.latest_version()
    assert schema.upgrade(empty_db) == []
    assert schema.current_version(empty_db) == schema.latest_version()
    assert sql_all(empty_dsn, "SELECT version, name FROM pgtq_schema_version ORDER BY 1") == [
        (m.version, m.name) for m in schema.migrations()
    ]
    assert sql_one(empty_dsn, "SELECT to_regclass('pgtq_tasks') IS NOT NULL") == (True,)


def test_upgrade_to_a_target_stops_there_and_a_later_upgrade_goes_on(
    empty_db: psycopg2.extensions.connection,
) -> None:
    middle = all_versions()[len(all_versions()) // 2]
    assert schema.upgrade(empty_db, target=middle) == [v for v in all_versions() if v <= middle]
    assert schema.current_version(empty_db) == middle
    assert schema.upgrade(empty_db, target=middle) == []
    assert schema.upgrade(empty_db) == [v for v in all_versions() if v > middle]
    assert schema.current_version(empty_db) == schema.latest_version()


def test_upgrade_to_a_version_never_shipped_is_refused(
    empty_db: psycopg2.extensions.connection,
) -> None:
    with pytest.raises(PgTqError, match="no migration is numbered 9999"):
        schema.upgrade(empty_db, target=9999)
    assert schema.current_version(empty_db) == 0


def test_the_task_table_is_vacuumed_early_and_unthrottled(
    empty_db: psycopg2.extensions.connection, empty_dsn: str
) -> None:
    schema.upgrade(empty_db)
    (options,) = sql_one(
        empty_dsn, "SELECT reloptions FROM pg_class WHERE oid = 'pgtq_tasks'::regclass"
    )
    settings = dict(option.split("=") for option in options)
    assert float(settings["autovacuum_vacuum_scale_factor"]) <= 0.01
    assert float(settings["autovacuum_vacuum_insert_scale_factor"]) <= 0.01
    assert float(settings["autovacuum_vacuum_cost_delay"]) == 0


def test_upgrade_keeps_the_connections_autocommit(
    empty_db: psycopg2.extensions.connection,
) -> None:
    schema.upgrade(empty_db)
    assert empty_db.autocommit is True
    assert empty_db.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_init_db_through_the_extension(empty_dsn: str) -> None:
    q = PgTq(dsn=empty_dsn)
    assert q.init_db() == all_versions()
    assert q.init_db() == []


# -- using the queue before init-db ------------------------------------------------------


@pytest.fixture
def unmigrated(empty_dsn: str) -> Iterator[PgTq]:
    app = Flask(__name__)
    app.config["PGTQ_DSN"] = empty_dsn
    q = PgTq(app)

    @q.handler()
    def job() -> None:
        pass

    with app.app_context():
        yield q


@pytest.mark.parametrize(
    "use",
    [
        lambda q: q.handlers["job"].push(),
        lambda q: q.push("job"),
        lambda q: q.pop(),
        lambda q: q.get_task(1),
    ],
    ids=["handler.push", "push", "pop", "get_task"],
)
def test_queue_before_init_db_says_to_run_it(unmigrated: PgTq, use: Any) -> None:
    with pytest.raises(SchemaNotReady) as info:
        use(unmigrated)
    assert "flask pgtq init-db" in str(info.value)
    assert "\n" not in str(info.value), "one line, not the statement excerpt below it"
    assert "does not exist" in str(info.value)


def test_cli_before_init_db_prints_one_line(unmigrated: PgTq) -> None:
    from flask import current_app

    result = current_app.test_cli_runner().invoke(args=["pgtq", "status"])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith("Error: the flask_pgtq tables are missing")
    assert line.endswith("run 'flask pgtq init-db' (or PgTq.init_db())")


# -- concurrent init-db -----------------------------------------------------------------


def test_concurrent_init_db_applies_each_migration_once(
    empty_db: psycopg2.extensions.connection, empty_dsn: str
) -> None:
    # Hold the migration lock so that all four processes queue up on it,
    # then let them go at once.
    holder = psycopg2.connect(empty_dsn)
    processes: list[subprocess.Popen[str]] = []
    try:
        with holder.cursor() as cur:
            cur.execute(queries.get("migration_lock"))
        env = {**os.environ, "PGTQ_TEST_APP_DSN": empty_dsn}
        env.pop("PGTQ_TEST_APP_SETTINGS", None)
        for _ in range(4):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "flask", "--app", "tests.worker_app", "pgtq", "init-db"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )

        def all_waiting_or_one_exited() -> bool:
            if any(p.poll() is not None for p in processes):
                return True
            row = sql_one(
                empty_dsn,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database"
                "                 WHERE datname = current_database())",
            )
            return row is not None and row[0] == len(processes)

        poll_until(all_waiting_or_one_exited, timeout=30, message="4 processes waiting")
        assert not any(p.poll() is not None for p in processes), [
            p.communicate() for p in processes if p.poll() is not None
        ]
        holder.commit()  # releases the lock
        outputs = [p.communicate(timeout=30) for p in processes]
    finally:
        holder.close()
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, f"exit {p.returncode}: {out}{err}"
    said = sorted(out.strip() for out, _ in outputs)
    applied = f"applied migrations: {', '.join(map(str, all_versions()))}"
    assert said == sorted([applied] + ["schema is up to date"] * 3)
    assert schema.current_version(empty_db) == schema.latest_version()
    assert sql_all(
        empty_dsn, "SELECT version, count(*) FROM pgtq_schema_version GROUP BY 1 ORDER BY 1"
    ) == [(v, 1) for v in all_versions()]


# -- fresh install equals the upgrade path ---------------------------------------------

CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, is_nullable,
               column_default, is_identity, identity_generation
        FROM information_schema.columns
        WHERE table_schema = 'public'
        ORDER BY table_name, ordinal_position
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef
        FROM pg_indexes
        WHERE schemaname = 'public'
        ORDER BY tablename, indexname
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2
    """,
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger
        WHERE NOT tgisinternal
        ORDER BY 1, 2
    """,
    "functions": """
        SELECT proname, pg_get_functiondef(oid)
        FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace
        ORDER BY 1
    """,
    "versions": "SELECT version, name FROM pgtq_schema_version ORDER BY version",
}


def catalog(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    return {what: sql_all(dsn, query) for what, query in CATALOG_QUERIES.items()}


def test_fresh_install_equals_the_upgrade_path(
    dsn: str, empty_db: psycopg2.extensions.connection, empty_dsn: str
) -> None:
    schema.upgrade(empty_db)
    installed, upgraded = catalog(dsn), catalog(empty_dsn)
    assert installed["columns"], "the fresh install has tables"
    assert installed["indexes"]
    for what in CATALOG_QUERIES:
        assert installed[what] == upgraded[what], what
