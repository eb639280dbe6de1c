"""The dashboard: an opt-in blueprint to watch and steer the queue.

Set ``PGTQ_DASHBOARD_URL_PREFIX = "/pgtq"`` and an access check,
``PGTQ_DASHBOARD_AUTH``: a function ``(request) -> bool`` (it may also
return a response, e.g. a redirect to your login page or a 401 asking for
HTTP Basic credentials), or ``"local-only"``.  Without an access check every
request is refused with 403 and a note on how to configure one.

Pages: overview (queues by state, tasks ended per minute and handlers over
the last hour), task list (filters, search and paging), task detail
(arguments, result, error, attempt history, progress) and workers.  The part
of a page that changes is refreshed in place every :data:`LIVE_INTERVAL`
seconds while the tab is visible (``pgtq.js`` asks for it with the
``X-Pgtq-Live`` header).  Actions (retry, cancel, delete, on one task or on
every task matching the list's filters) are POST only and need a CSRF
token, signed with the app's ``SECRET_KEY``; without one, the actions are
off.  ``PGTQ_DASHBOARD_READ_ONLY = True`` turns them off too.  Every asset
is served by the blueprint: it works offline.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..admin import (
    BIGINT_MAX,
    BIGINT_MIN,
    BULK_ACTIONS,
    FILTER_STATES,
    FINAL_STATES,
    Admin,
    WorkflowDetail,
    check_bigint,
)
from ..exceptions import (
    ActionNotAllowed,
    ConfigurationError,
    DatabaseError,
    InvalidName,
    TaskNotFound,
)
from ..formatting import (
    dumps,
    error_summary,
    format_age,
    format_duration,
    format_time,
    history_label,
)
from ..schedules import ScheduleNotFound
from .chart import build_chart

blueprint = Blueprint(
    "pgtq_dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: Cookie holding the random value CSRF tokens are bound to.
CSRF_COOKIE = "pgtq_csrf"
#: Seconds a CSRF token (a page's forms) stays valid.
CSRF_MAX_AGE = 12 * 3600
#: Tasks per page of the task list.
PAGE_SIZE = 50
#: Seconds between two refreshes of the live part of a page (``pgtq.js``).
LIVE_INTERVAL = 1
#: Request header asking for the live part of a page only.
LIVE_HEADER = "X-Pgtq-Live"
#: The task list's filters, as query parameters (``q``: the search box).
LIST_FILTERS = ("state", "queue", "name", "tag", "q")
#: Time window of the overview's handler table, in seconds.
HANDLER_WINDOW = 3600

_NOT_CONFIGURED = (
    "The flask_pgtq dashboard has no access check, so it refuses every request. "
    "Set PGTQ_DASHBOARD_AUTH to a function that takes the request and returns True "
    "for people allowed in, e.g. "
    "app.config['PGTQ_DASHBOARD_AUTH'] = lambda request: current_user.is_admin "
    "(or to 'local-only' to allow requests from this machine only)."
)

#: Messages shown after an action (the query string names one, never free text).
_DONE = {
    "retried": "Task queued again with fresh attempts.",
    "cancelled": "Task cancelled.",
    "cancel-requested": "Cancel requested: the worker running the task stops it.",
    "deleted": "Task deleted.",
}
#: Messages after a bulk action, given the count (and running tasks asked to stop).
_BULK_DONE = {
    "retry": "{count} queued again with fresh attempts.",
    "cancel": "{count} cancelled ({requested} of them running: their workers were asked to stop).",
    "delete": "{count} deleted.",
}


def register_dashboard(app: Any, url_prefix: str) -> None:
    """Mount the dashboard on *app* at *url_prefix* (what
    ``PGTQ_DASHBOARD_URL_PREFIX`` does)."""
    app.register_blueprint(blueprint, url_prefix=url_prefix.rstrip("/") or None)


def _config() -> Any:
    return current_app.extensions["pgtq"].config


def _extension() -> Any:
    return current_app.extensions["pgtq"]


def _admin() -> Admin:
    return current_app.extensions["pgtq"].admin  # type: ignore[no-any-return]


def _page(status: int, title: str, message: str) -> Response:
    body = render_template("pgtq_dashboard/message.html", title=title, message=message)
    return Response(body, status=status, mimetype="text/html")


# -- access ------------------------------------------------------------------------


_PROXY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")


@blueprint.before_request
def check_access() -> Any:
    """Refuse unless the app's access check lets the request in."""
    g.pgtq_plain = True
    auth = _config().dashboard_auth
    if auth is None:
        return _page(403, "Dashboard not configured", _NOT_CONFIGURED)
    if auth == "local-only":
        local = request.remote_addr in ("127.0.0.1", "::1")
        proxied = any(h in request.headers for h in _PROXY_HEADERS)
        if not local or proxied:
            return _page(
                403,
                "Forbidden",
                "This dashboard only serves requests from this machine "
                "(PGTQ_DASHBOARD_AUTH = 'local-only'), not through a proxy.",
            )
    else:
        verdict = auth(request)
        if verdict is not True and verdict is not False and verdict is not None:
            return verdict  # the app's own response: a login redirect, a 401...
        if not verdict:
            return _page(403, "Forbidden", "You are not allowed to use this dashboard.")
    g.pgtq_plain = False
    return None


@blueprint.after_request
def protect(response: Response) -> Response:
    """Security headers; the CSRF cookie when a page made a token."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.vary.add(LIVE_HEADER)
    if request.endpoint != "pgtq_dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    nonce = g.get("pgtq_new_nonce")
    if nonce is not None:
        response.set_cookie(
            CSRF_COOKIE,
            nonce,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path=url_for(".overview"),
        )
    return response


def _serializer() -> URLSafeTimedSerializer | None:
    key = current_app.secret_key
    if not key:
        return None
    return URLSafeTimedSerializer(key, salt="flask_pgtq.dashboard.csrf")


def csrf_token() -> str | None:
    """A token for this page's forms, or ``None`` without a ``SECRET_KEY``."""
    serializer = _serializer()
    if serializer is None:
        return None
    nonce = request.cookies.get(CSRF_COOKIE) or g.get("pgtq_new_nonce")
    if nonce is None:
        nonce = g.pgtq_new_nonce = secrets.token_urlsafe(24)
    token: str = serializer.dumps(nonce)
    return token


def _refuse_action() -> Response | None:
    """Why this POST must not act, as a response; ``None`` when it may."""
    if _config().dashboard_read_only:
        return _page(403, "Read-only", "This dashboard is read-only (PGTQ_DASHBOARD_READ_ONLY).")
    serializer = _serializer()
    if serializer is None:
        return _page(
            403,
            "Actions are off",
            "Set the app's SECRET_KEY so the dashboard can sign its CSRF tokens.",
        )
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return _page(403, "Forbidden", "Cross-site requests are refused.")
    token = request.form.get("csrf_token", "")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    try:
        nonce = serializer.loads(token, max_age=CSRF_MAX_AGE) if token else None
    except BadSignature:
        nonce = None
    if not nonce or not cookie or not hmac.compare_digest(str(nonce), cookie):
        return _page(
            403,
            "CSRF check failed",
            "The form's CSRF token is missing, expired or invalid. Reload the page and try again.",
        )
    return None


@blueprint.context_processor
def helpers() -> dict[str, Any]:
    plain = g.get("pgtq_plain", True)
    return {
        "csrf_token": (lambda: None) if plain else csrf_token,
        # Render only the page's live block, for pgtq.js to swap in.
        "partial": request.headers.get(LIVE_HEADER) == "1",
        "live_interval": LIVE_INTERVAL,
        # What the live updates fetch: this page, as a GET (a view that
        # answers a POST with a page gives the page's own URL).
        "live_url": request.full_path.rstrip("?") if request.method == "GET" else "",
        "read_only": plain or _config().dashboard_read_only,
        "can_act": not plain and not _config().dashboard_read_only and bool(current_app.secret_key),
        "fmt_age": format_age,
        "fmt_duration": format_duration,
        "fmt_time": format_time,
        "error_summary": error_summary,
        "history_label": history_label,
    }


@blueprint.errorhandler(DatabaseError)
def database_error(exc: DatabaseError) -> Response:
    return _page(503, "Database unavailable", f"The queue's database did not answer: {exc}")


class BadParameter(Exception):
    """A query parameter or part of the URL the dashboard cannot use: a 400."""


@blueprint.errorhandler(BadParameter)
def bad_parameter(exc: BadParameter) -> Response:
    return _page(400, "Bad request", str(exc))


def _bigint(value: int, what: str) -> int:
    """*value* if the database can compare it with an id, else a 400."""
    try:
        return check_bigint(value, what)
    except ValueError as exc:
        raise BadParameter(str(exc)) from None


# -- pages -------------------------------------------------------------------------


@blueprint.get("/")
def overview() -> Any:
    admin = _admin()
    queues = admin.status()
    workers = admin.workers()
    chart = build_chart(admin.throughput(60))
    totals = {
        state: sum(q.counts[state] for q in queues)
        for state in ("ready", "scheduled", "running", *FINAL_STATES)
    }
    live = [w for w in workers if w.alive and w.concurrency]
    pauses = _extension().pauses()
    handlers = admin.handler_stats(HANDLER_WINDOW)
    return render_template(
        "pgtq_dashboard/overview.html",
        queues=queues,
        paused={p.target: p for p in pauses if p.kind == "queue"},
        handler_pauses=[p for p in pauses if p.kind == "handler"],
        done=_arg("done"),
        totals=totals,
        chart=chart,
        handlers=handlers,
        live_workers=len(live),
        oldest_wait=max((q.oldest_wait or 0 for q in queues), default=0),
        page="overview",
    )


def _arg(name: str) -> str | None:
    value = request.args.get(name, "").strip()
    return value or None


_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")


def _int_arg(name: str) -> int | None:
    """The whole-number query parameter *name* (an id, a cursor), ``None``
    when absent; anything else, or a number out of the ``bigint`` range,
    is a 400."""
    value = _arg(name)
    if value is None:
        return None
    if not _INTEGER.fullmatch(value):
        shown = value if len(value) <= 40 else value[:39] + "…"
        raise BadParameter(
            f"{name} must be a whole number between {BIGINT_MIN} and {BIGINT_MAX}, not {shown!r}"
        )
    return _bigint(int(value), name)


def _list_filters(source: Any) -> dict[str, Any]:
    """The task list's filters from *source* (the query string or a form)."""
    return {key: (source.get(key) or "").strip() or None for key in LIST_FILTERS}


def _admin_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """*filters* as :meth:`Admin.tasks` and :meth:`Admin.bulk` take them."""
    return {"search" if key == "q" else key: value for key, value in filters.items()}


@blueprint.get("/tasks")
def tasks() -> Any:
    filters = _list_filters(request.args)
    admin = _admin()
    try:
        page = admin.tasks(
            **_admin_filters(filters),
            limit=PAGE_SIZE,
            before=_int_arg("before"),
            after=_int_arg("after"),
        )
    except (ValueError, InvalidName) as exc:
        return _page(400, "Bad filter", str(exc))
    queues = [q.queue for q in admin.status()]
    done = _DONE.get(request.args.get("done", ""))
    count = _int_arg("count")
    action = request.args.get("done", "").removeprefix("bulk-")
    if action in _BULK_DONE and count is not None:
        tasks = f"{count} task{'' if count == 1 else 's'}"
        done = _BULK_DONE[action].format(count=tasks, requested=_int_arg("requested") or 0)
    return render_template(
        "pgtq_dashboard/tasks.html",
        page_=page,
        filters=filters,
        states=FILTER_STATES,
        queues=queues,
        bulk_states=BULK_ACTIONS,
        done=done,
        page="tasks",
    )


@blueprint.get("/tasks/<int:task_id>")
def task(task_id: int, problem: str | None = None, status: int = 200) -> Any:
    _bigint(task_id, "task id")
    admin = _admin()
    try:
        found = admin.get(task_id)
    except TaskNotFound:
        return _page(404, "No such task", f"There is no task with id {task_id}.")
    body = render_template(
        "pgtq_dashboard/task.html",
        task=found,
        now=admin.now(),
        args=dumps(found.args),
        kwargs=dumps(found.kwargs),
        result=dumps(found.result) if found.state.value == "succeeded" else None,
        progress=dumps(found.progress) if found.progress is not None else None,
        done=_DONE.get(request.args.get("done", "")),
        problem=problem,
        page="tasks",
        live_url=url_for(".task", task_id=task_id),
    )
    return Response(body, status=status, mimetype="text/html")


#: Most tasks a workflow page draws as a graph (all are listed below it).
GRAPH_LIMIT = 400


def layered_graph(detail: WorkflowDetail) -> dict[str, Any] | None:
    """Coordinates to draw a workflow as layers (a task's layer: one more
    than its deepest parent's), for an inline SVG; ``None`` when too large."""
    if len(detail.tasks) > GRAPH_LIMIT:
        return None
    parents: dict[int, list[int]] = {}
    for child, parent in detail.edges:
        parents.setdefault(child, []).append(parent)
    depth: dict[int, int] = {}
    for task in detail.tasks:  # pushed in order: parents come first
        depth[task.id] = 1 + max((depth.get(p, -1) for p in parents.get(task.id, ())), default=-1)
    width, height, gap_x, gap_y = 160, 34, 50, 12
    rows: dict[int, int] = {}
    nodes: list[dict[str, Any]] = []
    for task in detail.tasks:
        layer = depth[task.id]
        row = rows.get(layer, 0)
        rows[layer] = row + 1
        x, y = 10 + layer * (width + gap_x), 10 + row * (height + gap_y)
        nodes.append({"task": task, "x": x, "y": y, "w": width, "h": height})
    at = {n["task"].id: n for n in nodes}
    lines: list[dict[str, float]] = []
    for child, parent in detail.edges:
        if child in at and parent in at:
            a, b = at[parent], at[child]
            lines.append(
                {
                    "x1": a["x"] + width,
                    "y1": a["y"] + height / 2,
                    "x2": b["x"],
                    "y2": b["y"] + height / 2,
                }
            )
    return {
        "nodes": nodes,
        "lines": lines,
        "width": 20 + (max(depth.values(), default=0) + 1) * (width + gap_x),
        "height": 20 + max(rows.values(), default=1) * (height + gap_y),
    }


@blueprint.get("/workflows/<int:workflow_id>")
def workflow(workflow_id: int) -> Any:
    _bigint(workflow_id, "workflow id")
    try:
        detail = _admin().workflow(workflow_id)
    except TaskNotFound:
        return _page(404, "No such workflow", f"There is no workflow with id {workflow_id}.")
    return render_template(
        "pgtq_dashboard/workflow.html",
        detail=detail,
        graph=layered_graph(detail),
        limit=GRAPH_LIMIT,
        page="tasks",
    )


@blueprint.get("/workers")
def workers() -> Any:
    return render_template(
        "pgtq_dashboard/workers.html", workers=_admin().workers(), page="workers"
    )


# -- actions -----------------------------------------------------------------------


@blueprint.post("/tasks/<int:task_id>/retry")
def retry(task_id: int) -> Any:
    return _act(task_id, lambda admin: (admin.retry(task_id), "retried")[1])


@blueprint.post("/tasks/<any(retry, cancel, delete):action>")
def bulk(action: str) -> Any:
    """Retry, cancel or delete every task matching the list's filters (the
    form's ``state``, ``queue``, ``name`` and ``q``) that is in a state the
    action applies to; see :meth:`Admin.bulk`."""
    refused = _refuse_action()
    if refused is not None:
        return refused
    filters = _list_filters(request.form)
    try:
        result = _admin().bulk(action, **_admin_filters(filters))
    except (ValueError, InvalidName) as exc:
        return _page(400, "Bad request", str(exc))
    done: dict[str, Any] = {"done": f"bulk-{action}", "count": len(result.ids)}
    if action == "cancel":
        done["requested"] = result.requested
    return redirect(url_for(".tasks", **filters, **done), code=303)


@blueprint.post("/tasks/<int:task_id>/cancel")
def cancel(task_id: int) -> Any:
    def do(admin: Admin) -> str:
        return "cancelled" if admin.cancel(task_id).cancelled else "cancel-requested"

    return _act(task_id, do)


@blueprint.post("/tasks/<int:task_id>/delete")
def delete(task_id: int) -> Any:
    _bigint(task_id, "task id")
    refused = _refuse_action()
    if refused is not None:
        return refused
    try:
        _admin().delete(task_id)
    except TaskNotFound:
        return _page(404, "No such task", f"There is no task with id {task_id}.")
    except ActionNotAllowed as exc:
        return task(task_id, problem=str(exc), status=409)
    return redirect(url_for(".tasks", done="deleted"), code=303)


@blueprint.post("/queues/pause")
def pause_queue() -> Any:
    """Pause a queue (``queue``) or a handler (``handler``) until resumed."""
    return _control("pause")


@blueprint.post("/queues/resume")
def resume_queue() -> Any:
    return _control("resume")


def _control(verb: str) -> Any:
    refused = _refuse_action()
    if refused is not None:
        return refused
    queue = request.form.get("queue") or None
    handler = request.form.get("handler") or None
    try:
        if verb == "pause":
            _extension().pause(queue, handler=handler, by="dashboard")
        else:
            _extension().resume(queue, handler=handler)
    except (ConfigurationError, InvalidName) as exc:
        return _page(400, "Bad request", str(exc))
    return redirect(url_for(".overview", done=f"{verb}d"), code=303)


@blueprint.get("/schedules")
def schedules() -> Any:
    """Code and stored schedules with their next fire time and last task."""
    return render_template(
        "pgtq_dashboard/schedules.html",
        schedules=_extension().schedules.list(),
        done=_arg("done"),
        page="schedules",
    )


@blueprint.post("/schedules/<name>/<any(run, disable, enable):verb>")
def schedule_action(name: str, verb: str) -> Any:
    refused = _refuse_action()
    if refused is not None:
        return refused
    book = _extension().schedules
    try:
        if verb == "run":
            book.run_now(name)
        else:
            getattr(book, verb)(name)
    except ScheduleNotFound:
        return _page(404, "No such schedule", f"There is no stored schedule {name!r}.")
    return redirect(url_for(".schedules", done=f"{verb}-{name}"), code=303)


def _act(task_id: int, action: Any) -> Any:
    _bigint(task_id, "task id")
    refused = _refuse_action()
    if refused is not None:
        return refused
    try:
        done = action(_admin())
    except TaskNotFound:
        return _page(404, "No such task", f"There is no task with id {task_id}.")
    except ActionNotAllowed as exc:
        return task(task_id, problem=str(exc), status=409)
    return redirect(url_for(".task", task_id=task_id, done=done), code=303)
