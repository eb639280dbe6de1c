"""The dashboard blueprint, through Flask's test client (the browser tests
are in ``test_dashboard_browser.py``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, Response
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner

from flask_pgtq import ConfigurationError, PgTq
from flask_pgtq.dashboard import CSRF_COOKIE, CSRF_MAX_AGE
from tests.helpers import sql_all, sql_one

PASSWORD = "canary-Pa55word"
SECRET = "test secret key"


def make_app(dsn: str, **config: Any) -> tuple[Flask, PgTq]:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    # The test server trusts everyone; the password is here to prove it never shows.
    app.config["PGTQ_DSN"] = f"{dsn} password={PASSWORD}"
    app.config["PGTQ_RETRY_BACKOFF"] = 0
    app.config["PGTQ_DASHBOARD_URL_PREFIX"] = "/pgtq"
    app.config["PGTQ_DASHBOARD_AUTH"] = lambda request: request.headers.get("X-Ops") == "yes"
    app.config.update(config)
    q = PgTq(app)

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    @q.handler(max_attempts=1, queue="risky")
    def boom(message: str) -> None:
        raise RuntimeError(message)

    return app, q


@pytest.fixture
def app_q(dsn: str) -> tuple[Flask, PgTq]:
    return make_app(dsn)


@pytest.fixture
def app(app_q: tuple[Flask, PgTq]) -> Flask:
    return app_q[0]


@pytest.fixture
def q(app_q: tuple[Flask, PgTq]) -> PgTq:
    return app_q[1]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_X_OPS"] = "yes"
    return client


@pytest.fixture
def tasks(app: Flask, q: PgTq) -> dict[str, int]:
    """A succeeded add, a queued add, a failed boom."""
    with app.app_context():
        done = q.push("add", 2, 3).id
        q.pop().run()
        waiting = q.push("add", 5, 5).id
        failed = q.push("boom", "disk <full>").id
        q.pop("risky").run()
    return {"done": done, "waiting": waiting, "failed": failed}


def text(response: Any) -> str:
    return response.get_data(as_text=True)


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def state_of(dsn: str, task_id: int) -> str:
    return sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task_id,))[0]


# -- access control ----------------------------------------------------------------------------


PAGES = ["/pgtq/", "/pgtq/tasks", "/pgtq/tasks/1", "/pgtq/workers", "/pgtq/static/pgtq.css"]


@pytest.mark.parametrize("path", PAGES)
def test_without_an_access_check_every_page_is_refused(dsn: str, path: str) -> None:
    app, _ = make_app(dsn, PGTQ_DASHBOARD_AUTH=None)
    response = app.test_client().get(path)
    assert response.status_code == 403
    assert "PGTQ_DASHBOARD_AUTH" in text(response)


@pytest.mark.parametrize("path", PAGES)
def test_a_request_the_check_refuses_gets_403(app: Flask, path: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 403
    assert "not allowed" in text(response)


def test_posts_need_the_access_check_too(app: Flask, tasks: dict[str, int], dsn: str) -> None:
    response = app.test_client().post(f"/pgtq/tasks/{tasks['failed']}/retry")
    assert response.status_code == 403
    assert state_of(dsn, tasks["failed"]) == "failed"


def test_the_check_may_answer_with_its_own_response(dsn: str) -> None:
    def basic_auth(request: Any) -> Any:
        auth = request.authorization
        if auth and (auth.username, auth.password) == ("ops", "s3cret"):
            return True
        return Response("login please", 401, {"WWW-Authenticate": 'Basic realm="pgtq"'})

    app, _ = make_app(dsn, PGTQ_DASHBOARD_AUTH=basic_auth)
    client = app.test_client()
    refused = client.get("/pgtq/")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="pgtq"'
    assert client.get("/pgtq/", auth=("ops", "s3cret")).status_code == 200


def test_local_only_serves_loopback_requests_that_came_through_no_proxy(dsn: str) -> None:
    app, _ = make_app(dsn, PGTQ_DASHBOARD_AUTH="local-only")
    client = app.test_client()
    assert client.get("/pgtq/", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert client.get("/pgtq/", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert client.get("/pgtq/", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
    proxied = client.get(
        "/pgtq/",
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert proxied.status_code == 403


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PGTQ_DASHBOARD_AUTH", "yes", "PGTQ_DASHBOARD_AUTH"),
        ("PGTQ_DASHBOARD_URL_PREFIX", "pgtq", "PGTQ_DASHBOARD_URL_PREFIX"),
        ("PGTQ_DASHBOARD_READ_ONLY", "no", "PGTQ_DASHBOARD_READ_ONLY"),
    ],
)
def test_bad_dashboard_settings_are_refused(dsn: str, key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_app(dsn, **{key: value})


def test_no_dashboard_unless_a_prefix_is_set(dsn: str) -> None:
    app, _ = make_app(dsn, PGTQ_DASHBOARD_URL_PREFIX=None)
    assert "pgtq_dashboard" not in app.blueprints
    assert app.test_client().get("/pgtq/", headers={"X-Ops": "yes"}).status_code == 404


# -- pages -------------------------------------------------------------------------------------


def test_overview_shows_queues_counts_and_chart(client: FlaskClient, tasks: dict[str, int]) -> None:
    response = client.get("/pgtq/")
    assert response.status_code == 200
    page = text(response)
    assert 'data-queue="default"' in page and 'data-queue="risky"' in page
    assert re.search(r'<td class="n failed">\s*<a [^>]*state=failed[^>]*>1</a>', page)
    assert '<svg class="chart" id="throughput"' in page
    assert page.count('<rect class="succeeded"') == 1
    assert page.count('<rect class="failed"') == 1
    assert "1 succeeded, 1 failed, 0 cancelled" in page
    assert PASSWORD not in page and "password" not in page.lower()


def test_pages_send_security_headers_and_own_assets(client: FlaskClient) -> None:
    response = client.get("/pgtq/")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp  # the live updates' fetch, and nothing else
    assert response.headers["Cache-Control"] == "no-store"
    page = text(response)
    assert "http://" not in page and "https://" not in page
    # Static files are streamed: close the responses.
    with client.get("/pgtq/static/pgtq.css") as css:
        assert css.status_code == 200 and "url(" not in text(css)
    with client.get("/pgtq/static/pgtq.js") as js:
        assert js.status_code == 200


def test_task_list_filters_and_pages(client: FlaskClient, app: Flask, q: PgTq) -> None:
    with app.app_context():
        ids = [q.push("add", i, i).id for i in range(60)]
        failed = q.push("boom", "nope").id
        q.pop("risky").run()
    page = text(client.get("/pgtq/tasks"))
    listed = [int(i) for i in re.findall(r'data-task-id="(\d+)"', page)]
    assert listed == [failed, *reversed(ids)][:50]
    assert "61 tasks match" in page
    older = re.search(r'href="([^"]*before=\d+[^"]*)"', page)
    assert older
    second = text(client.get(older.group(1).replace("&amp;", "&")))
    assert [int(i) for i in re.findall(r'data-task-id="(\d+)"', second)] == ids[:11][::-1]
    assert "← Newer" in second

    only_failed = text(client.get("/pgtq/tasks?state=failed"))
    assert re.findall(r'data-task-id="(\d+)"', only_failed) == [str(failed)]
    assert "RuntimeError: nope" in only_failed
    assert '<option value="failed" selected>' in only_failed
    by_name = text(client.get("/pgtq/tasks?name=boom&queue=risky"))
    assert re.findall(r'data-task-id="(\d+)"', by_name) == [str(failed)]
    assert "No tasks match" in text(client.get("/pgtq/tasks?queue=default&state=failed"))


def test_bad_filters_are_a_400(client: FlaskClient) -> None:
    assert client.get("/pgtq/tasks?state=bogus").status_code == 400
    response = client.get("/pgtq/tasks?queue=%3Cscript%3E")
    assert response.status_code == 400
    assert "<script>" not in text(response)


TOO_BIG = "99999999999999999999"  # more than a bigint holds


@pytest.mark.parametrize(
    "query",
    [
        f"before={TOO_BIG}",
        f"after={TOO_BIG}",
        f"before=-{TOO_BIG}",
        "before=abc",
        "after=1.5",
        "before=" + "9" * 5000,
        f"done=bulk-retry&count={TOO_BIG}",
    ],
    ids=["before", "after", "negative", "not-a-number", "fraction", "huge", "count"],
)
def test_numbers_out_of_range_are_a_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/pgtq/tasks?{query}")
    assert response.status_code == 400
    page = text(response)
    name = query.split("=")[-2].rsplit("&", 1)[-1]
    assert f"{name} " in page and "9223372036854775807" in page
    assert "Database unavailable" not in page


def test_task_ids_out_of_range_are_a_400(client: FlaskClient, tasks: dict[str, int]) -> None:
    response = client.get(f"/pgtq/tasks/{TOO_BIG}")
    assert response.status_code == 400
    assert f"task id {TOO_BIG} is out of range" in text(response)
    token = csrf_token(text(client.get(f"/pgtq/tasks/{tasks['failed']}")))
    for action in ("retry", "cancel", "delete"):
        posted = client.post(f"/pgtq/tasks/{TOO_BIG}/{action}", data={"csrf_token": token})
        assert posted.status_code == 400, action
    # The largest id is a fine id that no task has.
    assert client.get("/pgtq/tasks/9223372036854775807").status_code == 404
    assert client.get("/pgtq/tasks?before=9223372036854775807").status_code == 200


def test_task_detail_shows_everything(client: FlaskClient, tasks: dict[str, int], dsn: str) -> None:
    failed = text(client.get(f"/pgtq/tasks/{tasks['failed']}"))
    assert "disk &lt;full&gt;" in failed and "disk <full>" not in failed
    assert 'id="error"' in failed and "Traceback (most recent call last)" in failed
    assert 'id="history"' in failed
    assert 'value="retry"' in failed and 'value="delete"' in failed
    assert 'value="cancel"' not in failed

    done = text(client.get(f"/pgtq/tasks/{tasks['done']}"))
    assert re.search(r'<pre id="result">5</pre>', done)
    assert "succeeded the first time" in done

    sql_all(
        dsn,
        'UPDATE pgtq_tasks SET progress = \'{"done": 3, "of": 10}\' WHERE id = %s',
        (tasks["waiting"],),
    )
    waiting = text(client.get(f"/pgtq/tasks/{tasks['waiting']}"))
    assert 'id="progress"' in waiting and "&#34;of&#34;: 10" in waiting
    assert 'value="cancel"' in waiting and 'value="retry"' not in waiting
    assert PASSWORD not in failed + done + waiting


def test_json_nested_too_deeply_is_shown_as_a_placeholder(client: FlaskClient, dsn: str) -> None:
    (task_id,) = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, state, args, kwargs, result)"
        " VALUES ('default', 'add', 'succeeded', (repeat('[', 5000) || repeat(']', 5000))::jsonb,"
        " (repeat('{\"a\": ', 5000) || '1' || repeat('}', 5000))::jsonb,"
        " (repeat('[', 5000) || '7' || repeat(']', 5000))::jsonb) RETURNING id",
    )
    response = client.get(f"/pgtq/tasks/{task_id}")
    assert response.status_code == 200
    page = text(response)
    for block, size in (("args", 10000), ("kwargs", 35001), ("result", 10001)):
        assert re.search(
            rf'<pre id="{block}">&lt;JSON nested too deeply to show, {size} bytes&gt;</pre>', page
        ), block


def test_unknown_task_is_a_404(client: FlaskClient) -> None:
    assert client.get("/pgtq/tasks/999999").status_code == 404


def test_workers_page_shows_heartbeat_and_current_task(
    client: FlaskClient, app: Flask, q: PgTq
) -> None:
    assert "No worker is registered" in text(client.get("/pgtq/workers"))
    with app.app_context():
        task = q.push("add", 1, 1)
        q.pop()
    page = text(client.get("/pgtq/workers"))
    assert "alive" in page
    assert f'href="/pgtq/tasks/{task.id}"' in page
    assert re.search(r"\ds ago", page)


def test_database_down_is_a_503_without_secrets() -> None:
    app, _ = make_app("host=127.0.0.1 port=1 user=alice dbname=shop connect_timeout=5")
    response = app.test_client().get("/pgtq/", headers={"X-Ops": "yes"})
    assert response.status_code == 503
    assert PASSWORD not in text(response)


# -- actions -----------------------------------------------------------------------------------


def post_action(client: FlaskClient, task_id: int, action: str, **extra: Any) -> Any:
    token = csrf_token(text(client.get(f"/pgtq/tasks/{task_id}")))
    return client.post(f"/pgtq/tasks/{task_id}/{action}", data={"csrf_token": token}, **extra)


def test_retry_with_a_csrf_token(
    client: FlaskClient, app: Flask, q: PgTq, tasks: dict[str, int], dsn: str
) -> None:
    response = post_action(client, tasks["failed"], "retry")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/pgtq/tasks/{tasks['failed']}?done=retried")
    assert state_of(dsn, tasks["failed"]) == "queued"
    assert "queued again" in text(client.get(response.headers["Location"]))


def test_retry_all_failed_of_a_queue(
    client: FlaskClient, app: Flask, q: PgTq, tasks: dict[str, int], dsn: str
) -> None:
    with app.app_context():
        more = [q.push("boom", f"again {i}").id for i in range(2)]
        for _ in more:
            q.pop("risky").run()
    failed = [tasks["failed"], *more]
    assert {state_of(dsn, t) for t in failed} == {"failed"}
    page = text(client.get("/pgtq/tasks?state=failed&queue=risky"))
    assert "Retry 3 failed" in page
    assert 'id="bulk-cancel"' not in page  # no failed task can be cancelled
    response = client.post(
        "/pgtq/tasks/retry",
        data={"csrf_token": csrf_token(page), "state": "failed", "queue": "risky"},
    )
    assert response.status_code == 303
    assert {state_of(dsn, t) for t in failed} == {"queued"}
    assert state_of(dsn, tasks["done"]) == "succeeded"
    assert "3 tasks queued again" in text(client.get(response.headers["Location"]))


@pytest.mark.parametrize(
    "form",
    [{"state": "succeeded"}, {"state": "bogus"}, {"state": "failed", "queue": "x'; DROP TABLE"}],
    ids=["succeeded", "unknown-state", "hostile-queue"],
)
def test_retry_all_refuses_what_it_cannot_retry(
    client: FlaskClient, tasks: dict[str, int], dsn: str, form: dict[str, str]
) -> None:
    token = csrf_token(text(client.get("/pgtq/tasks?state=failed")))
    response = client.post("/pgtq/tasks/retry", data={"csrf_token": token, **form})
    assert response.status_code == 400
    assert state_of(dsn, tasks["failed"]) == "failed"
    assert state_of(dsn, tasks["done"]) == "succeeded"


def test_cancel_and_delete(client: FlaskClient, tasks: dict[str, int], dsn: str) -> None:
    response = post_action(client, tasks["waiting"], "cancel")
    assert response.status_code == 303 and "done=cancelled" in response.headers["Location"]
    assert state_of(dsn, tasks["waiting"]) == "cancelled"
    response = post_action(client, tasks["waiting"], "delete")
    assert response.status_code == 303 and response.headers["Location"].endswith(
        "/pgtq/tasks?done=deleted"
    )
    assert (
        sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE id = %s", (tasks["waiting"],))[0] == 0
    )


def test_an_action_the_state_does_not_allow_is_a_409(
    client: FlaskClient, tasks: dict[str, int], dsn: str
) -> None:
    response = post_action(client, tasks["done"], "retry")
    assert response.status_code == 409
    assert "only failed or cancelled tasks can be retried" in text(response)
    assert state_of(dsn, tasks["done"]) == "succeeded"


#: Each action, the task of the ``tasks`` fixture it applies to, and the
#: form fields besides the token.
ACTIONS = {
    "retry": ("failed", {}),
    "cancel": ("waiting", {}),
    "delete": ("failed", {}),
    "retry-all": ("failed", {"state": "failed"}),
    "cancel-all": ("waiting", {"state": "queued"}),
    "delete-all": ("failed", {"q": "boom"}),
}


def action_url(action: str, task_id: int) -> str:
    if action.endswith("-all"):
        return f"/pgtq/tasks/{action.removesuffix('-all')}"
    return f"/pgtq/tasks/{task_id}/{action}"


def row_of(dsn: str, task_id: int) -> tuple[Any, ...] | None:
    return sql_one(dsn, "SELECT state, attempts FROM pgtq_tasks WHERE id = %s", (task_id,))


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize(
    "forge",
    [
        lambda token: {},
        lambda token: {"csrf_token": ""},
        lambda token: {"csrf_token": token[:-2] + "xx"},
        lambda token: {"csrf_token": "not-a-token"},
    ],
    ids=["missing", "empty", "tampered", "garbage"],
)
def test_posts_without_a_valid_csrf_token_are_refused(
    client: FlaskClient,
    tasks: dict[str, int],
    dsn: str,
    forge: Callable[[str], dict],
    action: str,
) -> None:
    key, form = ACTIONS[action]
    task_id = tasks[key]
    before = row_of(dsn, task_id)
    token = csrf_token(text(client.get(f"/pgtq/tasks/{task_id}")))
    response = client.post(action_url(action, task_id), data={**form, **forge(token)})
    assert response.status_code == 403
    assert "CSRF" in text(response)
    assert row_of(dsn, task_id) == before


def test_a_token_older_than_its_max_age_is_refused(
    client: FlaskClient, tasks: dict[str, int], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def token_made_ago(seconds: int) -> str:
        """A token from the task page as served *seconds* ago."""
        made = int(time.time()) - seconds
        with monkeypatch.context() as m:
            m.setattr(TimestampSigner, "get_timestamp", lambda self: made)
            return csrf_token(text(client.get(f"/pgtq/tasks/{tasks['failed']}")))

    url = f"/pgtq/tasks/{tasks['failed']}/retry"
    expired = client.post(url, data={"csrf_token": token_made_ago(CSRF_MAX_AGE + 60)})
    assert expired.status_code == 403
    assert "expired" in text(expired)
    assert state_of(dsn, tasks["failed"]) == "failed"
    # The same page a little younger than the limit still works.
    fresh = client.post(url, data={"csrf_token": token_made_ago(CSRF_MAX_AGE - 60)})
    assert fresh.status_code == 303
    assert state_of(dsn, tasks["failed"]) == "queued"


def test_a_token_is_bound_to_its_cookie(
    app: Flask, client: FlaskClient, tasks: dict[str, int], dsn: str
) -> None:
    token = csrf_token(text(client.get(f"/pgtq/tasks/{tasks['failed']}")))
    stranger = app.test_client()
    stranger.environ_base["HTTP_X_OPS"] = "yes"
    text(stranger.get("/pgtq/"))  # has a cookie of its own
    response = stranger.post(f"/pgtq/tasks/{tasks['failed']}/retry", data={"csrf_token": token})
    assert response.status_code == 403
    assert state_of(dsn, tasks["failed"]) == "failed"


def test_cross_site_posts_are_refused(client: FlaskClient, tasks: dict[str, int], dsn: str) -> None:
    response = post_action(
        client, tasks["failed"], "retry", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert state_of(dsn, tasks["failed"]) == "failed"


def test_actions_are_post_only(client: FlaskClient, tasks: dict[str, int], dsn: str) -> None:
    assert client.get(f"/pgtq/tasks/{tasks['failed']}/retry").status_code == 405
    assert state_of(dsn, tasks["failed"]) == "failed"


def test_read_only_hides_the_actions(dsn: str) -> None:
    app, q = make_app(dsn, PGTQ_DASHBOARD_READ_ONLY=True)
    with app.app_context():
        task_id = q.push("boom", "x").id
        q.pop("risky").run()
    client = app.test_client()
    client.environ_base["HTTP_X_OPS"] = "yes"
    page = text(client.get(f"/pgtq/tasks/{task_id}"))
    assert "Read-only" in page and 'name="csrf_token"' not in page
    assert 'id="bulk' not in text(client.get("/pgtq/tasks?state=failed"))


@pytest.mark.parametrize("action", list(ACTIONS))
def test_read_only_refuses_actions_even_with_a_valid_token(
    client: FlaskClient, tasks: dict[str, int], dsn: str, action: str
) -> None:
    # A read-only dashboard of the same app (same SECRET_KEY): a token and
    # cookie from the writable one are valid there, as an old tab's would be.
    read_only, _ = make_app(dsn, PGTQ_DASHBOARD_READ_ONLY=True)
    viewer = read_only.test_client()
    viewer.environ_base["HTTP_X_OPS"] = "yes"
    key, form = ACTIONS[action]
    task_id = tasks[key]
    token = csrf_token(text(client.get(f"/pgtq/tasks/{task_id}")))
    cookie = client.get_cookie(CSRF_COOKIE, path="/pgtq/")
    assert cookie is not None
    viewer.set_cookie(CSRF_COOKIE, cookie.value, path="/pgtq/")
    before = row_of(dsn, task_id)
    response = viewer.post(action_url(action, task_id), data={"csrf_token": token, **form})
    assert response.status_code == 403
    assert "read-only" in text(response)
    assert row_of(dsn, task_id) == before
    # The very same request acts where the dashboard is not read-only.
    assert (
        client.post(action_url(action, task_id), data={"csrf_token": token, **form}).status_code
        == 303
    )
    assert row_of(dsn, task_id) != before


def test_without_a_secret_key_actions_are_off(dsn: str) -> None:
    app, q = make_app(dsn, SECRET_KEY=None)
    with app.app_context():
        task_id = q.push("boom", "x").id
        q.pop("risky").run()
    client = app.test_client()
    client.environ_base["HTTP_X_OPS"] = "yes"
    page = text(client.get(f"/pgtq/tasks/{task_id}"))
    assert "set the app's SECRET_KEY" in page and 'value="retry"' not in page
    assert client.post(f"/pgtq/tasks/{task_id}/retry").status_code == 403


def test_pause_and_resume_a_queue_from_the_queue_table(
    client: FlaskClient, app: Flask, q: PgTq, tasks: dict[str, int], dsn: str
) -> None:
    page = text(client.get("/pgtq/"))
    assert 'value="pause"' in page
    token = csrf_token(page)
    response = client.post("/pgtq/queues/pause", data={"queue": "risky", "csrf_token": token})
    assert response.status_code == 303
    assert sql_all(dsn, "SELECT kind, target, paused_by FROM pgtq_pauses") == [
        ("queue", "risky", "dashboard")
    ]
    page = text(client.get("/pgtq/"))
    assert "paused" in page and 'value="resume"' in page
    response = client.post("/pgtq/queues/resume", data={"queue": "risky", "csrf_token": token})
    assert response.status_code == 303
    assert sql_all(dsn, "SELECT * FROM pgtq_pauses") == []
    # Without a token, or read-only: refused, nothing changes.
    assert client.post("/pgtq/queues/pause", data={"queue": "risky"}).status_code == 403
    ro_app, _ = make_app(dsn, PGTQ_DASHBOARD_READ_ONLY=True)
    ro = ro_app.test_client()
    ro.environ_base["HTTP_X_OPS"] = "yes"
    assert 'value="pause"' not in text(ro.get("/pgtq/"))
    ro.set_cookie(CSRF_COOKIE, client.get_cookie(CSRF_COOKIE, path="/pgtq/").value, path="/pgtq/")
    response = ro.post("/pgtq/queues/pause", data={"queue": "risky", "csrf_token": token})
    assert response.status_code == 403
    assert sql_all(dsn, "SELECT * FROM pgtq_pauses") == []
    bad = client.post("/pgtq/queues/pause", data={"queue": "bad name!", "csrf_token": token})
    assert bad.status_code == 400


def test_the_schedules_page_lists_and_acts(
    client: FlaskClient, app: Flask, q: PgTq, dsn: str
) -> None:
    with app.app_context():
        q.schedules.add("nightly", "0 3 * * *", "add", args=[1, 2], tz="Europe/Paris")
    page = text(client.get("/pgtq/schedules"))
    assert "nightly" in page and "Europe/Paris" in page and "Run now" in page
    token = csrf_token(page)
    response = client.post("/pgtq/schedules/nightly/disable", data={"csrf_token": token})
    assert response.status_code == 303
    assert sql_all(dsn, "SELECT enabled FROM pgtq_schedules") == [(False,)]
    assert "disabled" in text(client.get("/pgtq/schedules"))
    client.post("/pgtq/schedules/nightly/run", data={"csrf_token": token})
    assert sql_all(dsn, "SELECT name, args FROM pgtq_tasks") == [("add", [1, 2])]
    assert client.post("/pgtq/schedules/nightly/enable").status_code == 403  # no token
    missing = client.post("/pgtq/schedules/nope/run", data={"csrf_token": token})
    assert missing.status_code == 404
