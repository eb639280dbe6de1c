"""The named SQL, read without a database."""

from __future__ import annotations

import re
from importlib import resources

from flask_pgtq import queries


def test_every_notify_channel_is_a_named_constant() -> None:
    folder = resources.files("flask_pgtq").joinpath("sql")
    used = set()
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            used |= set(re.findall(r"pg_notify\('(\w+)'", entry.read_text("utf-8")))
    assert used == set(queries.CHANNELS)


def test_listen_quotes_channel_names() -> None:
    statement = queries.listen(['pgtq"; DROP TABLE x; --'])
    assert repr(statement).count("Identifier") == 1


def test_prepared_statements_number_parameters_in_order_of_use() -> None:
    prepare, execute = queries.prepared("push_task")
    assert prepare.startswith("PREPARE pgtq_push_task AS ")
    assert "INSERT INTO pgtq_tasks" in prepare
    assert "$1" in prepare and "%(" not in prepare
    # A parameter used twice (the queue, also the NOTIFY's payload) is one $n.
    assert "pg_notify('pgtq', $1)" in prepare
    assert execute.startswith("EXECUTE pgtq_push_task(%(queue)s, %(name)s, %(args)s")
