"""Numbered, forward-only migrations.

Migrations live in ``sql/migrations/NNNN_description.sql``.  :func:`upgrade`
applies the missing ones in a single transaction under an advisory lock, so
any number of processes may run it at once; the applied versions are recorded
in ``pgtq_schema_version``.  A released migration is never edited.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from . import queries
from .exceptions import PgTqError

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """All migrations shipped with this version, oldest first."""
    folder = resources.files("flask_pgtq").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    # Numbers may leave gaps (branches number their migrations apart, e.g.
    # 0005 may ship before 0004); each number is used once.
    for before, after in itertools.pairwise(found):
        if before.version == after.version:
            raise PgTqError(f"two migrations are numbered {after.version:04d}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this code needs."""
    return migrations()[-1].version


def current_version(conn: Any) -> int:
    """The version the database of *conn* is at; 0 when there is none.

    That is the highest shipped version up to which every shipped migration
    is applied: a database with 0005 applied but not 0004 (numbers may leave
    gaps, filled later) is at version 3 for code that ships 0004.  When every
    shipped migration is applied, the highest version recorded.

    Runs read-only statements and leaves the transaction state as found on
    an autocommit connection.
    """
    with conn.cursor() as cur:
        cur.execute(queries.get("version_table_exists"))
        if not cur.fetchone()[0]:
            return 0
        cur.execute(queries.get("applied_versions"))
        applied = {int(row[0]) for row in cur.fetchall()}
    current = 0
    for migration in migrations():
        if migration.version not in applied:
            return current
        current = migration.version
    return max(applied, default=0)


def upgrade(conn: Any, target: int | None = None) -> list[int]:
    """Apply every missing migration on *conn* (a psycopg2 connection).

    Safe to run concurrently: the first caller takes an advisory transaction
    lock, the others wait and then find nothing to do.

    :param target: apply the missing migrations up to this version only,
        leaving the database at an earlier schema (the tests build one to
        upgrade it with rows in it); ``None``: every migration.
    :return: the versions applied by this call (empty when up to date).
    :raises PgTqError: *target* is not the number of a shipped migration.
    """
    if target is not None and target not in {m.version for m in migrations()}:
        raise PgTqError(f"no migration is numbered {target:04d}")
    autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(queries.get("migration_lock"))
            cur.execute(queries.get("create_version_table"))
            cur.execute(queries.get("applied_versions"))
            applied = {row[0] for row in cur.fetchall()}
            done = []
            for migration in migrations():
                if target is not None and migration.version > target:
                    break
                if migration.version in applied:
                    continue
                cur.execute(migration.sql)
                cur.execute(
                    queries.get("record_version"),
                    {"version": migration.version, "name": migration.name},
                )
                done.append(migration.version)
        conn.commit()
        return done
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = autocommit
