"""The dashboard's search, bulk actions, handler table and live updates,
through Flask's test client (CSRF, read-only and cross-site refusals of the
bulk actions are pinned with the other actions in ``test_dashboard.py``)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_pgtq import InvalidRequest, PgTq
from flask_pgtq.admin import BULK_ACTIONS
from flask_pgtq.dashboard import CSRF_COOKIE, LIVE_HEADER
from tests.helpers import sql_all, sql_one
from tests.test_dashboard import csrf_token, make_app, text

STATES = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
#: What ``states`` gives for ``one_of_each``'s tasks when nothing touched them.
UNCHANGED = {state: state for state in STATES}


@pytest.fixture
def app_q(dsn: str) -> tuple[Flask, PgTq]:
    return make_app(dsn)


@pytest.fixture
def q(app_q: tuple[Flask, PgTq]) -> PgTq:
    return app_q[1]


@pytest.fixture
def client(app_q: tuple[Flask, PgTq]) -> FlaskClient:
    client = app_q[0].test_client()
    client.environ_base["HTTP_X_OPS"] = "yes"
    return client


def insert(dsn: str, name: str, state: str, args: str = "[]", kwargs: str = "{}") -> int:
    """A task row in *state*, as the queue would leave it."""
    finished = state in ("succeeded", "failed", "cancelled")
    row = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, state, args, kwargs, started_at, finished_at)"
        " VALUES ('default', %s, %s, %s, %s,"
        " CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END) RETURNING id",
        (name, state, args, kwargs, state in ("running", *BULK_ACTIONS["delete"]), finished),
    )
    assert row is not None
    return int(row[0])


def one_of_each(dsn: str, name: str) -> dict[str, int]:
    return {state: insert(dsn, name, state) for state in STATES}


def states(dsn: str, ids: dict[str, int]) -> dict[str, str | None]:
    found = dict(
        sql_all(dsn, "SELECT id, state FROM pgtq_tasks WHERE id = ANY(%s)", (list(ids.values()),))
    )
    return {key: found.get(task_id) for key, task_id in ids.items()}


def listed(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-task-id="(\d+)"', page)]


# -- search ------------------------------------------------------------------------------------


def test_search_by_id_name_and_argument_text(client: FlaskClient, dsn: str) -> None:
    report = insert(dsn, "build_report", "queued", '["Customer ACME", 42]')
    invoice = insert(dsn, "send_invoice", "failed", "[]", '{"to": "ops@acme.example"}')
    percent = insert(dsn, "resize", "succeeded", '["100% done", "a_b"]')
    plain = insert(dsn, "resize", "succeeded", '["100 done", "axb"]')

    assert listed(text(client.get(f"/pgtq/tasks?q={invoice}"))) == [invoice]  # a number: the id
    assert listed(text(client.get("/pgtq/tasks?q=acme"))) == [invoice, report]  # any case
    assert listed(text(client.get("/pgtq/tasks?q=invoice"))) == [invoice]  # the name
    assert listed(text(client.get("/pgtq/tasks?q=customer+acme"))) == [report]
    # % and _ are what they are, not wildcards.
    assert listed(text(client.get("/pgtq/tasks?q=100%25"))) == [percent]
    assert listed(text(client.get("/pgtq/tasks?q=a_b"))) == [percent]
    assert listed(text(client.get("/pgtq/tasks?q=resize"))) == [plain, percent]
    # With the other filters, and kept by them.
    page = text(client.get("/pgtq/tasks?q=acme&state=failed"))
    assert listed(page) == [invoice]
    assert "1 task matches" in page and 'value="acme"' in page
    assert listed(text(client.get("/pgtq/tasks?q=nowhere"))) == []


def test_a_search_is_paged_and_bounded(client: FlaskClient, q: PgTq, dsn: str) -> None:
    sql_all(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, args) "
        "SELECT 'default', 'add', jsonb_build_array('order-' || i) FROM generate_series(1, 60) i",
    )
    page = text(client.get("/pgtq/tasks?q=order-"))
    assert len(listed(page)) == 50 and "60 tasks match" in page
    older = re.search(r'href="([^"]*before=\d+[^"]*)"', page)
    assert older and "q=order-" in older.group(1)
    assert len(listed(text(client.get(older.group(1).replace("&amp;", "&"))))) == 10
    too_long = client.get("/pgtq/tasks?q=" + "x" * 201)
    assert too_long.status_code == 400 and "at most 200 characters" in text(too_long)
    injected = text(client.get("/pgtq/tasks?q=%27%29%3B+DROP+TABLE+pgtq_tasks%3B--"))
    assert "No tasks match" in injected
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (60,)


# -- bulk actions ------------------------------------------------------------------------------


def test_the_list_shows_what_each_bulk_action_would_touch(client: FlaskClient, dsn: str) -> None:
    one_of_each(dsn, "a")
    one_of_each(dsn, "b")
    page = text(client.get("/pgtq/tasks?name=a"))
    assert "6 tasks match" in page
    assert "Retry 2 failed or cancelled" in page
    assert "Cancel 3 waiting, queued or running" in page
    assert "Delete 3 succeeded, failed or cancelled" in page
    confirm = re.search(r'id="bulk-delete"\s+data-confirm="([^"]+)"', page)
    assert confirm and confirm.group(1) == (
        "Delete all 3 succeeded, failed or cancelled tasks matching this filter for good?"
    )
    assert 'name="name" value="a"' in page  # the form carries the filter
    only_running = text(client.get("/pgtq/tasks?name=a&state=running"))
    assert "Cancel 1 running" in only_running
    assert 'id="bulk-retry"' not in only_running and 'id="bulk-delete"' not in only_running


def bulk(client: FlaskClient, action: str, **filters: str) -> Any:
    token = csrf_token(text(client.get("/pgtq/tasks")))
    return client.post(f"/pgtq/tasks/{action}", data={"csrf_token": token, **filters})


def test_bulk_retry_takes_failed_and_cancelled_tasks_of_the_filter(
    client: FlaskClient, dsn: str
) -> None:
    mine, other = one_of_each(dsn, "a"), one_of_each(dsn, "b")
    response = bulk(client, "retry", name="a")
    assert response.status_code == 303
    assert "done=bulk-retry" in response.headers["Location"]
    assert "name=a" in response.headers["Location"]
    assert states(dsn, mine) == {
        **UNCHANGED,
        "failed": "queued",
        "cancelled": "queued",
    }
    assert states(dsn, other) == UNCHANGED
    assert "2 tasks queued again" in text(client.get(response.headers["Location"]))
    history = sql_one(dsn, "SELECT history FROM pgtq_tasks WHERE id = %s", (mine["failed"],))
    assert history and history[0][-1]["state"] == "manual_retry"


def test_bulk_cancel_cancels_waiting_and_queued_and_asks_running_to_stop(
    client: FlaskClient, dsn: str
) -> None:
    mine, other = one_of_each(dsn, "a"), one_of_each(dsn, "b")
    response = bulk(client, "cancel", name="a")
    assert response.status_code == 303
    after = states(dsn, mine)
    assert after == {**UNCHANGED, "waiting": "cancelled", "queued": "cancelled"}
    requested = sql_one(
        dsn,
        "SELECT cancel_requested_at IS NOT NULL FROM pgtq_tasks WHERE id = %s",
        (mine["running"],),
    )
    assert requested == (True,)
    assert states(dsn, other) == UNCHANGED
    done = text(client.get(response.headers["Location"]))
    assert "3 tasks cancelled (1 of them running" in done


def test_bulk_delete_deletes_finished_tasks_of_the_search_only(
    client: FlaskClient, dsn: str
) -> None:
    mine = {state: insert(dsn, "x", state, '["needle"]') for state in STATES}
    other = one_of_each(dsn, "x")
    response = bulk(client, "delete", q="needle")
    assert response.status_code == 303
    assert states(dsn, mine) == {
        **UNCHANGED,
        "succeeded": None,
        "failed": None,
        "cancelled": None,
    }
    assert states(dsn, other) == UNCHANGED
    assert "3 tasks deleted" in text(client.get(response.headers["Location"]))


@pytest.mark.parametrize(
    ("action", "state"), [("retry", "succeeded"), ("cancel", "failed"), ("delete", "queued")]
)
def test_a_bulk_action_on_a_state_it_does_not_apply_to_is_a_400(
    client: FlaskClient, dsn: str, action: str, state: str
) -> None:
    ids = one_of_each(dsn, "a")
    response = bulk(client, action, state=state)
    assert response.status_code == 400
    assert f"{action} applies to" in text(response)
    assert states(dsn, ids) == UNCHANGED


def test_bulk_actions_work_in_batches(app_q: tuple[Flask, PgTq], dsn: str) -> None:
    app, q = app_q
    ids = [insert(dsn, "a", "failed") for _ in range(7)]
    insert(dsn, "a", "succeeded")
    with app.app_context():
        result = q.admin.bulk("retry", name="a", batch=3)
        assert result.ids == ids
        assert q.admin.bulk("cancel", name="a", batch=3).ids == ids
        assert len(q.admin.bulk("delete", batch=2).ids) == 8
        with pytest.raises(InvalidRequest, match="unknown action"):
            q.admin.bulk("explode")
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (0,)


def test_bulk_actions_need_a_token_and_a_writable_dashboard(client: FlaskClient, dsn: str) -> None:
    ids = one_of_each(dsn, "a")
    assert client.post("/pgtq/tasks/delete", data={"name": "a"}).status_code == 403
    read_only, _ = make_app(dsn, PGTQ_DASHBOARD_READ_ONLY=True)
    viewer = read_only.test_client()
    viewer.environ_base["HTTP_X_OPS"] = "yes"
    token = csrf_token(text(client.get("/pgtq/tasks")))
    cookie = client.get_cookie(CSRF_COOKIE, path="/pgtq/")
    assert cookie is not None
    viewer.set_cookie(CSRF_COOKIE, cookie.value, path="/pgtq/")
    assert 'id="bulk' not in text(viewer.get("/pgtq/tasks"))
    refused = viewer.post("/pgtq/tasks/delete", data={"csrf_token": token, "name": "a"})
    assert refused.status_code == 403 and "read-only" in text(refused)
    assert states(dsn, ids) == UNCHANGED


# -- handlers ----------------------------------------------------------------------------------


def test_handler_table_shows_percentiles_and_failure_rate_of_the_last_hour(
    client: FlaskClient, q: PgTq, app_q: tuple[Flask, PgTq], dsn: str
) -> None:
    # resize: 100 tasks ran 1..100 s, the last 10 of them failed; one from
    # two hours ago (1000 s) and a cancelled one are left out of the times.
    sql_all(
        dsn,
        """
        INSERT INTO pgtq_tasks (queue, name, state, started_at, finished_at)
        SELECT 'default', 'resize', CASE WHEN i > 90 THEN 'failed' ELSE 'succeeded' END,
               now() - i * interval '1 second', now()
        FROM generate_series(1, 100) i;
        INSERT INTO pgtq_tasks (queue, name, state, started_at, finished_at) VALUES
            ('default', 'resize', 'succeeded', now() - interval '3 hours',
             now() - interval '2 hours'),
            ('default', 'resize', 'cancelled', NULL, now()),
            ('default', 'email', 'succeeded', now() - interval '0.25 seconds', now()),
            ('default', 'email', 'queued', NULL, NULL);
        """,
    )
    with app_q[0].app_context():
        email, resize = q.admin.handler_stats(3600)
    assert (resize.name, resize.succeeded, resize.failed, resize.cancelled) == ("resize", 90, 10, 1)
    assert resize.p50 == pytest.approx(50.5, abs=0.01)
    assert resize.p95 == pytest.approx(95.05, abs=0.01)
    assert resize.p99 == pytest.approx(99.01, abs=0.01)
    assert resize.failure_rate == pytest.approx(0.1)
    assert (email.name, email.succeeded, email.failure_rate) == ("email", 1, 0.0)
    assert email.p50 == pytest.approx(0.25, abs=0.01)

    page = text(client.get("/pgtq/"))
    row = re.search(r'<tr data-handler="resize">(.*?)</tr>', page, re.S)
    assert row
    assert '<td class="n rate warn">10.0%</td>' in row.group(1)
    assert '<td class="n p50">50.50s</td>' in row.group(1)
    assert '<td class="n p99">1m 39s</td>' in row.group(1)
    assert 'href="/pgtq/tasks?name=resize&amp;state=failed"' in row.group(1)
    assert '<td class="n p50">250ms</td>' in page


def test_no_handler_table_rows_without_recent_tasks(client: FlaskClient) -> None:
    assert "No task ended in the last hour" in text(client.get("/pgtq/"))


# -- live updates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/pgtq/", 'id="queues"'),
        ("/pgtq/tasks?state=failed", 'id="tasks"'),
        ("/pgtq/workers", "No worker is registered"),
        ("/pgtq/tasks/1", 'id="fields"'),
    ],
)
def test_the_live_header_gets_the_live_part_of_the_page_only(
    client: FlaskClient, dsn: str, path: str, inside: str
) -> None:
    insert(dsn, "a", "failed")
    full = client.get(path)
    assert f'id="pgtq-live" data-live-url="{path}" data-live-interval="1"' in text(full)
    assert "<script src=" in text(full) and "<script>" not in text(full)
    live = client.get(path, headers={LIVE_HEADER: "1"})
    assert live.status_code == 200
    assert LIVE_HEADER in live.headers["Vary"]
    assert "default-src 'none'" in live.headers["Content-Security-Policy"]
    part = text(live)
    assert "<html" not in part and 'id="pgtq-live"' not in part and 'id="filters"' not in part
    assert inside in part


def test_the_live_part_of_the_task_list_is_its_table(client: FlaskClient, dsn: str) -> None:
    first = insert(dsn, "a", "failed")
    before = text(client.get("/pgtq/tasks", headers={LIVE_HEADER: "1"}))
    assert listed(before) == [first] and "1 task matches" in before
    assert 'id="bulk-retry"' in before and 'name="csrf_token"' in before
    second = insert(dsn, "a", "queued")
    after = text(client.get("/pgtq/tasks", headers={LIVE_HEADER: "1"}))
    assert listed(after) == [second, first] and "2 tasks match" in after


def test_the_live_part_needs_the_access_check(app_q: tuple[Flask, PgTq]) -> None:
    response = app_q[0].test_client().get("/pgtq/tasks", headers={LIVE_HEADER: "1"})
    assert response.status_code == 403


def test_a_task_page_answering_a_post_updates_from_its_own_url(
    client: FlaskClient, dsn: str
) -> None:
    task_id = insert(dsn, "a", "succeeded")
    page = text(client.get(f"/pgtq/tasks/{task_id}"))
    # Retrying a succeeded task answers the POST with the task's page (409).
    refused = client.post(f"/pgtq/tasks/{task_id}/retry", data={"csrf_token": csrf_token(page)})
    assert refused.status_code == 409
    assert f'data-live-url="/pgtq/tasks/{task_id}"' in text(refused)
    assert 'data-live-url="/pgtq/tasks?state=failed"' in text(
        client.get("/pgtq/tasks?state=failed")
    )


def test_the_task_list_filters_by_tag_and_bulk_actions_follow_it(
    client: FlaskClient, app_q: tuple[Flask, PgTq], q: PgTq, dsn: str
) -> None:
    with app_q[0].app_context():
        tagged = [q.handlers["add"].options(tags=["tenant:42"]).push(i, i).id for i in range(3)]
        other = q.handlers["add"].options(tags=["tenant:7"]).push(0, 0).id
    page = text(client.get("/pgtq/tasks?tag=tenant:42"))
    shown = {int(i) for i in re.findall(r'data-task="(\d+)"', page)} or {
        int(i) for i in re.findall(r"/pgtq/tasks/(\d+)\"", page)
    }
    assert set(tagged) <= shown and other not in shown
    token = csrf_token(page)
    response = client.post(
        "/pgtq/tasks/cancel",
        data={"csrf_token": token, "tag": "tenant:42", "state": "queued"},
    )
    assert response.status_code == 303, text(response)
    assert {
        sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (i,))[0] for i in tagged
    } == {"cancelled"}
    assert sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (other,))[0] == "queued"
