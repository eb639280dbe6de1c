"""The dashboard in a real browser: headless Chromium driven by Playwright.

The browser is Debian's ``/usr/bin/chromium`` (``apt-get install chromium``);
these tests never download one (no ``playwright install``).  The app is
served by werkzeug in a thread, on the test's database, and a real
``flask pgtq worker`` subprocess runs the tasks.  Screenshots land in
``test-artifacts/`` (set ``PGTQ_UPDATE_DOCS_SCREENSHOT=1`` to also refresh
``docs/dashboard.png``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api  # the test extra installs it
import pytest
from flask import Flask, Response
from werkzeug.serving import make_server

from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import RUNS_TABLE

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("PGTQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USER, PASSWORD = "ops", "s3cret-dashboard"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: ./run-tests installs Debian's chromium")
    pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def basic_auth(request: Any) -> Any:
    """The access check of these tests: HTTP Basic, as a small app would do it."""
    auth = request.authorization
    if auth is not None and (auth.username, auth.password) == (USER, PASSWORD):
        return True
    return Response("Sign in to see the queue.", 401, {"WWW-Authenticate": 'Basic realm="pgtq"'})


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def serve(dsn: str) -> Iterator[Callable[..., str]]:
    """``serve(**config)``: run a dashboard app in a thread; return its base URL."""
    servers = []

    def start(**config: Any) -> str:
        app = Flask("dashboard_under_test")
        app.config.update(
            SECRET_KEY="browser-test-secret",
            PGTQ_DSN=dsn,
            PGTQ_DASHBOARD_URL_PREFIX="/pgtq",
            PGTQ_DASHBOARD_AUTH=basic_auth,
        )
        app.config.update(config)
        worker_app.q.init_app(app)  # the handlers the worker subprocess runs
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(browser: Any, serve: Callable[..., str]) -> Iterator[Any]:
    """A signed-in page on a served dashboard; fails the test if anything is
    fetched from another origin (the dashboard must work offline)."""
    base = serve()
    context = browser.new_context(
        base_url=base,
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1280, "height": 860},
    )
    foreign: list[str] = []
    context.on(
        "request",
        lambda request: (
            None if request.url.startswith((base, "data:")) else foreign.append(request.url)
        ),
    )
    page = context.new_page()
    yield page
    context.close()
    assert foreign == [], f"the dashboard fetched from elsewhere: {foreign}"


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def state_of(dsn: str, task_id: int) -> str:
    return sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task_id,))[0]


def wait_for_state(dsn: str, task_id: int, state: str) -> None:
    poll_until(lambda: state_of(dsn, task_id) == state, 20, 0.02, f"task {task_id} {state}")


def test_find_a_failed_task_retry_it_and_see_it_succeed(
    served_app: Flask, page: Any, dsn: str, start_worker: Any
) -> None:
    worker = start_worker()
    done = [worker_app.add.push(i, i).id for i in range(3)]
    done.append(worker_app.mark.options(queue="default").push("first").id)
    for task_id in done:
        wait_for_state(dsn, task_id, "succeeded")
    # The table the handler writes to goes missing: the task fails for good.
    sql_all(dsn, "DROP TABLE test_runs")
    broken = worker_app.mark.options(max_attempts=1).push("needs-the-table").id
    wait_for_state(dsn, broken, "failed")

    # Overview: queues by state and the last hour's chart.
    page.goto("/pgtq/")
    row = page.locator('#queues tr[data-queue="default"]')
    assert row.locator("td.succeeded").inner_text() == "4"
    assert row.locator("td.failed").inner_text() == "1"
    assert page.locator("#throughput rect.succeeded").count() == 1
    assert page.locator("#throughput rect.failed").count() == 1
    assert page.locator(".card .num").nth(4).inner_text() == "1"  # live workers
    screenshot(page, "01-overview")

    # Task list, filtered to the failures with the form.
    page.get_by_role("link", name="Tasks", exact=True).click()
    assert page.locator("#tasks tbody tr").count() == 5
    page.select_option("#filters select[name=state]", "failed")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/pgtq/tasks?*state=failed*")
    rows = page.locator("#tasks tbody tr")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-task-id") == str(broken)
    assert 'relation "test_runs" does not exist' in rows.first.locator("td.error").inner_text()
    screenshot(page, "02-tasks-failed")

    # Detail: arguments, the traceback, the attempt history.
    rows.first.locator("td a").first.click()
    page.wait_for_url(f"**/pgtq/tasks/{broken}")
    assert '"needs-the-table"' in page.locator("#args").inner_text()
    assert "Traceback (most recent call last)" in page.locator("#error").inner_text()
    assert page.locator("#history tbody tr").count() == 1
    screenshot(page, "03-task-failed")

    # Fix the cause, retry from the dashboard: the worker runs it again.
    sql_all(dsn, RUNS_TABLE)
    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(f"**/pgtq/tasks/{broken}?done=retried")
    assert "queued again" in page.locator(".done").inner_text()

    def succeeded() -> bool:
        page.reload()
        return page.locator("#state").inner_text().startswith("succeeded")

    poll_until(succeeded, 20, 0.2, "the retried task to succeed in the dashboard")
    assert page.locator("#result").inner_text() == '"needs-the-table"'
    assert [h.inner_text() for h in page.locator("#history tbody tr td:nth-child(2)").all()] == [
        "failed",
        "manual retry",
    ]
    screenshot(page, "04-task-retried")

    # Workers: the live worker and its heartbeat.
    page.get_by_role("link", name="Workers").click()
    worker_row = page.locator("#workers tbody tr")
    assert worker_row.count() == 1
    assert str(worker.pid) in worker_row.inner_text() and "alive" in worker_row.inner_text()
    screenshot(page, "05-workers")


def test_cancel_and_delete_from_the_task_page(served_app: Flask, page: Any, dsn: str) -> None:
    task_id = worker_app.add.options(delay=3600).push(1, 2).id
    page.goto(f"/pgtq/tasks/{task_id}")
    assert "scheduled" in page.locator(".task-head .state").inner_text()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(f"**/pgtq/tasks/{task_id}?done=cancelled")
    assert state_of(dsn, task_id) == "cancelled"

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete").click()
    assert state_of(dsn, task_id) == "cancelled", "a dismissed confirm still deleted"
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/pgtq/tasks?done=deleted")
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 0


def test_posts_without_a_csrf_token_are_refused(served_app: Flask, page: Any, dsn: str) -> None:
    task_id = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, state, finished_at) "
        "VALUES ('default', 'add', 'failed', now()) RETURNING id",
    )[0]
    page.goto(f"/pgtq/tasks/{task_id}")
    url = f"/pgtq/tasks/{task_id}/retry"

    # Requests with the browser's cookies and credentials, without a token...
    missing = page.request.post(url, form={"x": "1"})
    assert missing.status == 403 and "CSRF" in missing.text()
    # ...or with a forged one.
    forged = page.request.post(url, form={"csrf_token": "forged"})
    assert forged.status == 403 and "CSRF" in forged.text()
    # A form on another site posting to the dashboard.
    evil = page.context.new_page()
    evil.set_content(
        f'<form method="post" action="{page.url.split("/pgtq")[0]}{url}">'
        '<input name="csrf_token" value="guess"><button>win a prize</button></form>'
    )
    with evil.expect_navigation():
        evil.click("button")
    assert "403" in evil.title() or "Forbidden" in evil.content() or "CSRF" in evil.content()
    assert state_of(dsn, task_id) == "failed"

    # The real button works.
    page.get_by_role("button", name="Retry").click()
    page.wait_for_url("**?done=retried")
    assert state_of(dsn, task_id) == "queued"


def test_requests_without_authorisation_are_refused(
    browser: Any, serve: Callable[..., str], dsn: str
) -> None:
    base = serve()
    anonymous = browser.new_context(base_url=base)
    for path in ("/pgtq/", "/pgtq/tasks", "/pgtq/workers", "/pgtq/static/pgtq.css"):
        response = anonymous.request.get(path)
        assert response.status == 401
        assert response.headers["www-authenticate"] == 'Basic realm="pgtq"'
    refused = anonymous.request.post("/pgtq/tasks/1/retry", form={"csrf_token": "x"})
    assert refused.status == 401
    # Headless, the browser cannot ask for a password: the page does not load.
    with pytest.raises(playwright_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        anonymous.new_page().goto("/pgtq/")
    wrong = browser.new_context(
        base_url=base, http_credentials={"username": USER, "password": "guess"}
    )
    page = wrong.new_page()
    assert page.goto("/pgtq/").status == 401
    assert "Sign in" in page.content() and "Overview" not in page.content()
    assert wrong.request.get("/pgtq/").status == 401
    anonymous.close()
    wrong.close()

    unconfigured = browser.new_context(base_url=serve(PGTQ_DASHBOARD_AUTH=None))
    page = unconfigured.new_page()
    response = page.goto("/pgtq/")
    assert response.status == 403
    assert "PGTQ_DASHBOARD_AUTH" in page.locator("#message").inner_text()
    screenshot(page, "06-not-configured")
    unconfigured.close()


def test_paging_through_the_task_list(served_app: Flask, page: Any) -> None:
    ids = [worker_app.add.options(delay=3600).push(i, i).id for i in range(120)]
    page.goto("/pgtq/tasks")
    first = [int(r.get_attribute("data-task-id")) for r in page.locator("#tasks tbody tr").all()]
    assert first == ids[::-1][:50]
    page.get_by_role("link", name="Older →").click()
    second = [int(r.get_attribute("data-task-id")) for r in page.locator("#tasks tbody tr").all()]
    assert second == ids[::-1][50:100]
    page.get_by_role("link", name="Older →").click()
    assert page.locator("#tasks tbody tr").count() == 20
    assert page.get_by_role("link", name="Older →").count() == 0
    page.get_by_role("link", name="← Newer").click()
    again = [int(r.get_attribute("data-task-id")) for r in page.locator("#tasks tbody tr").all()]
    assert again == second


def test_overview_of_a_busy_queue_for_the_docs(served_app: Flask, page: Any, dsn: str) -> None:
    """A realistic hour of work across queues, for the README's screenshot."""
    sql_all(
        dsn,
        """
        INSERT INTO pgtq_tasks (queue, name, args, state, attempts, created_at, started_at,
                                finished_at, result, error)
        SELECT q.queue, q.name, '[1]', s.state, 1,
               now() - m * interval '1 minute' - interval '2 seconds',
               now() - m * interval '1 minute' - interval '1 second',
               now() - m * interval '1 minute', '1',
               CASE WHEN s.state = 'failed' THEN 'TimeoutError: SMTP server did not answer'
               END
        FROM generate_series(0, 59) AS m,
             (VALUES ('default', 'resize_image'), ('emails', 'send_welcome_email'),
                     ('reports', 'build_report')) AS q(queue, name),
             LATERAL (
                 SELECT 'succeeded' AS state
                 FROM generate_series(1, 2 + ((m * 7 + length(q.queue)) % 9)
                                         + CASE WHEN m BETWEEN 18 AND 26 THEN 6 ELSE 0 END)
                 UNION ALL
                 SELECT 'failed' FROM generate_series(1, CASE WHEN q.queue = 'emails'
                     AND m BETWEEN 20 AND 24 THEN 2 ELSE 0 END)
             ) AS s
        """,
    )
    for i in range(14):
        worker_app.add.options(queue="emails" if i % 2 else "default").push(i, i)
    worker_app.add.options(delay=600, queue="reports").push(0, 0)
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET run_at = now() - interval '37 seconds' "
        "WHERE state = 'queued' AND run_at <= now()",
    )
    sql_all(
        dsn,
        "INSERT INTO pgtq_workers (id, hostname, pid, queues, concurrency, lease_expires_at) "
        "VALUES (gen_random_uuid(), 'web-1', 4242, '{default,emails,reports}', 4, "
        "now() + interval '30 seconds')",
    )
    page.goto("/pgtq/")
    assert page.locator("#queues tbody tr").count() == 3
    assert page.locator("#throughput rect.failed").count() == 5
    path = screenshot(page, "00-dashboard")
    if os.environ.get("PGTQ_UPDATE_DOCS_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(path, ROOT / "docs" / "dashboard.png")


def test_read_only_dashboard_has_no_buttons(
    browser: Any, serve: Callable[..., str], dsn: str
) -> None:
    task_id = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, state, finished_at) "
        "VALUES ('default', 'add', 'failed', now()) RETURNING id",
    )[0]
    context = browser.new_context(
        base_url=serve(PGTQ_DASHBOARD_READ_ONLY=True),
        http_credentials={"username": USER, "password": PASSWORD},
    )
    page = context.new_page()
    page.goto(f"/pgtq/tasks/{task_id}")
    assert "Read-only" in page.locator(".notice").inner_text()
    assert page.get_by_role("button").count() == 0
    context.close()


def live_requests(page: Any) -> list[str]:
    """The URLs of the page's live-update requests, as they are made."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.headers.get("x-pgtq-live") else None)
    return seen


def set_hidden(page: Any, hidden: bool) -> None:
    """What the browser does when the tab goes to the background (or back)."""
    page.evaluate(
        """hidden => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def test_a_task_pushed_while_the_list_is_open_appears_without_a_reload(
    served_app: Flask, page: Any
) -> None:
    first = worker_app.add.options(delay=3600).push(1, 1).id
    page.goto("/pgtq/tasks")
    assert page.locator("#tasks tbody tr").count() == 1
    page.evaluate("window.pgtqSamePage = true")  # gone if the page reloads
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    pushed = worker_app.add.options(delay=3600).push(2, 2).id
    started = time.monotonic()
    page.locator(f'#tasks tr[data-task-id="{pushed}"]').wait_for(timeout=2000)
    assert time.monotonic() - started < 2
    ids = [int(r.get_attribute("data-task-id")) for r in page.locator("#tasks tbody tr").all()]
    assert ids == [pushed, first]
    assert page.locator("#count").inner_text() == "2 tasks match"
    assert page.evaluate("window.pgtqSamePage") is True and navigations == []
    assert page.locator("#pgtq-live-status").inner_text() == ""

    # In the background the page asks for nothing; back in front, at once.
    requests = live_requests(page)
    set_hidden(page, True)
    page.wait_for_timeout(300)  # one may have been on its way
    requests.clear()
    hidden_push = worker_app.add.options(delay=3600).push(3, 3).id
    page.wait_for_timeout(2500)
    assert requests == []
    assert page.locator(f'#tasks tr[data-task-id="{hidden_push}"]').count() == 0
    set_hidden(page, False)
    page.locator(f'#tasks tr[data-task-id="{hidden_push}"]').wait_for(timeout=1000)

    # Unticked, the page stays as it is; the choice outlives a reload.
    page.uncheck("#pgtq-live-toggle")
    page.wait_for_timeout(300)
    requests.clear()
    unticked = worker_app.add.options(delay=3600).push(4, 4).id
    page.wait_for_timeout(2000)
    assert requests == [] and page.locator(f'tr[data-task-id="{unticked}"]').count() == 0
    page.reload()
    assert not page.is_checked("#pgtq-live-toggle")
    page.check("#pgtq-live-toggle")


def test_bulk_retry_of_a_thousand_failed_tasks(
    served_app: Flask, page: Any, dsn: str, start_worker: Any
) -> None:
    sql_all(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, args, state, attempts, max_attempts, started_at,"
        " finished_at, error) SELECT 'default', 'add', jsonb_build_array(i, 1), 'failed', 1, 1,"
        " now(), now(), 'ConnectionError: the mail server went away'"
        " FROM generate_series(1, 1000) AS i",
    )
    page.goto("/pgtq/tasks?state=failed")
    assert page.locator("#count").inner_text() == "1000 tasks match"
    button = page.get_by_role("button", name="Retry 1000 failed")
    assert page.locator("#bulk-delete").count() == 1 and page.locator("#bulk-cancel").count() == 0
    screenshot(page, "07-bulk-retry")
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    button.click()
    page.wait_for_url("**/pgtq/tasks?state=failed&done=bulk-retry&count=1000")
    assert asked == ["Retry all 1000 failed tasks matching this filter, with fresh attempts?"]
    assert page.locator(".done").inner_text() == "1000 tasks queued again with fresh attempts."
    assert page.locator("#count").inner_text() == "0 tasks match"
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE state = 'queued'") == (1000,)

    # A worker runs them; the overview follows without a reload.
    page.goto("/pgtq/")
    page.evaluate("window.pgtqSamePage = true")
    start_worker("--concurrency", "4")
    succeeded = page.locator('#queues tr[data-queue="default"] td.succeeded')
    playwright_api.expect(succeeded).to_have_text("1000", timeout=60_000)
    assert page.locator('#queues tr[data-queue="default"] td.failed').inner_text() == "0"
    assert page.locator('#handlers tr[data-handler="add"] td.succeeded').inner_text() == "1000"
    assert page.evaluate("window.pgtqSamePage") is True
    screenshot(page, "08-bulk-retried-overview")
