"""Tags: ``options(tags=...)`` and ``@q.handler(tags=...)``, stored in
``pgtq_tasks.tags``, shown on ``Task.tags``, filtered by the admin and
``flask pgtq tasks --tag``, counted in metrics for ``PGTQ_METRICS_TAGS``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from flask_pgtq import ConfigurationError, InvalidRequest, PgTq, chain, queries
from flask_pgtq.admin import Admin
from tests.helpers import sql_one


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_METRICS_TAGS": ["import", "tenant:42"], "PGTQ_RETRY_BACKOFF": 0}


@pytest.fixture
def q(q: PgTq) -> PgTq:
    @q.handler(tags=["import"])
    def load(n: int) -> int:
        return n

    @q.handler()
    def plain(n: int) -> int:
        return n

    return q


def stored_tags(dsn: str, task_id: int) -> list[str]:
    row = sql_one(dsn, "SELECT tags FROM pgtq_tasks WHERE id = %s", (task_id,))
    assert row is not None
    return list(row[0])


def test_a_push_gets_the_handlers_tags_then_its_own(q: PgTq, dsn: str) -> None:
    task = q.handlers["load"].options(tags=["tenant:42", "import", "big batch"]).push(1)
    assert task.tags == ["import", "tenant:42", "big batch"]
    assert stored_tags(dsn, task.id) == ["import", "tenant:42", "big batch"]
    assert q.get_task(task.id).tags == ["import", "tenant:42", "big batch"]
    assert q.push("load", 2).tags == ["import"]
    untagged = q.push("plain", 3)
    assert untagged.tags == [] and stored_tags(dsn, untagged.id) == []


def test_a_claimed_task_carries_its_tags(q: PgTq) -> None:
    q.handlers["plain"].options(tags=["tenant:7"]).push(1)
    task = q.pop()
    assert task is not None and task.tags == ["tenant:7"]


def test_push_many_unique_and_workflows_store_tags(q: PgTq, dsn: str) -> None:
    ids = q.handlers["plain"].options(tags=["tenant:42"]).push_many([(1,), (2,)])
    assert [stored_tags(dsn, i) for i in ids] == [["tenant:42"], ["tenant:42"]]
    assert [stored_tags(dsn, i) for i in q.handlers["load"].push_many([(1,)])] == [["import"]]

    held = q.handlers["plain"].options(unique_key="k", tags=["a"]).push(1)
    replaced = (
        q.handlers["plain"].options(unique_key="k", on_conflict="replace", tags=["b"]).push(2)
    )
    assert replaced.id == held.id and stored_tags(dsn, held.id) == ["b"]

    flow = chain(
        q.handlers["load"].s(1), q.handlers["plain"].s().options(tags=["tenant:42"])
    ).push()
    assert [t.tags for t in flow.tasks] == [["import"], ["tenant:42"]]
    assert [stored_tags(dsn, t.id) for t in flow.tasks] == [["import"], ["tenant:42"]]


@pytest.mark.parametrize(
    "tags, message",
    [
        ("import", "must be a list of strings"),
        ([""], "must not be empty"),
        (["x" * 101], "longer than 100 characters"),
        (["tab\there"], "not printable"),
        (["nul\x00"], "not printable"),
        (["\ud800"], "not printable"),
        ([42], "must be a string"),
        ([f"t{i}" for i in range(21)], "at most 20 tags"),
    ],
)
def test_bad_tags_are_refused_before_anything_is_stored(
    q: PgTq, dsn: str, tags: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        q.handlers["plain"].options(tags=tags).push(1)
    with pytest.raises(ConfigurationError, match=message):
        q.handler(name="other", tags=tags)(lambda: None)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (0,)


def test_the_limit_counts_the_handlers_tags_and_repeats_once(q: PgTq) -> None:
    nineteen = [f"t{i}" for i in range(19)]
    assert len(q.handlers["load"].options(tags=nineteen).push(1).tags) == 20
    assert q.handlers["load"].options(tags=["import", "a", "a"]).push(1).tags == ["import", "a"]
    with pytest.raises(ConfigurationError, match="at most 20 tags"):
        q.handlers["load"].options(tags=[*nineteen, "one more"])


def test_admin_filters_by_every_tag_given_and_counts_the_same(q: PgTq) -> None:
    both = q.handlers["load"].options(tags=["tenant:42"]).push(1).id
    tenant = q.handlers["plain"].options(tags=["tenant:42"]).push(2).id
    q.handlers["plain"].options(tags=["tenant:43"]).push(3)
    q.push("plain", 4)

    page = q.admin.tasks(tag="tenant:42")
    assert [t.id for t in page.tasks] == [tenant, both] and page.total == 2
    assert page.tasks[1].tags == ["import", "tenant:42"]
    page = q.admin.tasks(tag=["tenant:42", "import"])
    assert [t.id for t in page.tasks] == [both] and page.total == 1
    assert q.admin.tasks(tag="nobody").total == 0
    with pytest.raises(InvalidRequest, match="must not be empty"):
        q.admin.tasks(tag="")


def test_cli_tasks_tag_filter_is_repeatable(app: Flask, q: PgTq) -> None:
    both = q.handlers["load"].options(tags=["tenant:42"]).push(1).id
    tenant = q.handlers["plain"].options(tags=["tenant:42"]).push(2).id
    runner = app.test_cli_runner()

    result = runner.invoke(args=["pgtq", "tasks", "--tag", "tenant:42", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [t["id"] for t in data["tasks"]] == [tenant, both] and data["total"] == 2
    assert data["tasks"][1]["tags"] == ["import", "tenant:42"]

    result = runner.invoke(args=["pgtq", "tasks", "--tag", "tenant:42", "--tag", "import"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 matching" in result.output and str(both) in result.output

    result = runner.invoke(args=["pgtq", "show", str(both)])
    assert "import, tenant:42" in result.output

    result = runner.invoke(args=["pgtq", "tasks", "--tag", "x" * 101])
    assert result.exit_code != 0 and "longer than 100 characters" in result.output


@pytest.mark.parametrize("statement", ["admin_list_tasks", "admin_count_tasks"])
def test_the_tag_filter_uses_the_gin_index(dsn: str, db: Any, statement: str) -> None:
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO pgtq_tasks (queue, name, tags) "
            "SELECT 'default', 'job', ARRAY['common', 'tenant:' || (s % 500)] "
            "FROM generate_series(1, 20000) AS s"
        )
        cur.execute("ANALYZE pgtq_tasks")
        params = {
            "state": None,
            "due": None,
            "queue": None,
            "name": None,
            "tags": ["tenant:7"],
            "states": None,
            "search_id": None,
            "pattern": None,
            "before": None,
            "after": None,
            "limit": 51,
        }
        cur.execute("EXPLAIN " + queries.get(statement), params)
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "pgtq_tasks_tags" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_tag_counts_and_metrics_cover_only_the_listed_tags(app: Flask, q: PgTq) -> None:
    from flask_pgtq.metrics import app_metrics
    from tests.test_metrics import sample

    q.handlers["plain"].options(tags=["tenant:42", "tenant:43"]).push(1)
    q.push("load", 2)
    q.push("load", 3)
    metrics = app_metrics(app)
    task = q.pop()
    assert task is not None
    task.run()

    body = metrics.exposition().decode()
    assert sample(body, "pgtq_tagged_tasks", tag="import", state="ready") == 2
    assert sample(body, "pgtq_tagged_tasks", tag="tenant:42", state="succeeded") == 1
    assert sample(body, "pgtq_tagged_tasks", tag="tenant:42", state="ready") == 0
    labels = {"queue": "default", "name": "plain", "outcome": "succeeded"}
    assert sample(body, "pgtq_tagged_task_outcomes_total", tag="tenant:42", **labels) == 1
    assert "tenant:43" not in body
    assert Admin(q.app_queue().db).tag_counts([]) == {}


def test_the_metrics_tags_setting_is_checked(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_METRICS_TAGS: a tag must not be empty"):
        PgTq(dsn=dsn, metrics_tags=[""])


def test_eager_tasks_carry_their_tags(dsn: str) -> None:
    q = PgTq(dsn=dsn, eager=True)

    @q.handler(tags=["import"])
    def tagged() -> list[str]:
        from flask_pgtq import current_task

        return list(current_task.tags)

    task = tagged.options(tags=["tenant:1"]).push()
    assert task.tags == ["import", "tenant:1"] and task.result == ["import", "tenant:1"]
    q.close()
