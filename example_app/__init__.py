"""An example Flask app using flask_pgtq.

From a clone of the repository, with no PostgreSQL server and no settings::

    pip install -e ".[dev,binary,cron]"
    flask --app example_app run

Without ``PGTQ_DSN`` the app runs in development mode: an embedded PostgreSQL
in ``instance/`` (``PGTQ_DEV_DATABASE``) and a worker thread inside ``flask
run`` (``PGTQ_DEV_WORKER``).  With ``PGTQ_DSN`` set it behaves as deployed
apps do, and tasks run only in workers you start::

    export PGTQ_DSN="dbname=postgres user=postgres host=localhost"
    flask --app example_app pgtq init-db
    flask --app example_app pgtq worker &
    flask --app example_app run

What it shows: a push inside the request's database transaction (sign-up),
plain pushes from a view, a task reporting progress, a retrying task, a task
that fails for good, a long task that stops as soon as it is cancelled, a
periodic task, and the dashboard at ``/pgtq`` (local requests only).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg2.errors
from flask import Flask, flash, redirect, render_template, request, send_from_directory, url_for

from flask_pgtq import TaskNotFound

from . import store
from .tasks import (
    TICK_SCHEDULE,
    build_report,
    call_flaky_api,
    export_archive,
    import_contacts,
    q,
    send_welcome_email,
    tick,
)

__all__ = [
    "create_app",
    "q",
    "send_welcome_email",
    "build_report",
    "call_flaky_api",
    "import_contacts",
    "export_archive",
    "tick",
]

#: Chunks of the long export: a minute at the default 0.2 s per chunk.
EXPORT_CHUNKS = 300


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev only: change me"),
        PGTQ_DSN=os.environ.get("PGTQ_DSN"),
        PGTQ_DASHBOARD_URL_PREFIX="/pgtq",
        # Fine on a laptop; behind a proxy, or deployed, use a function that
        # checks your users (see the README).
        PGTQ_DASHBOARD_AUTH="local-only",
    )
    app.config.update(config or {})
    # No database given: development mode.  Both settings are for trying
    # things out, never for production.
    development = not app.config["PGTQ_DSN"]
    app.config.setdefault("PGTQ_DEV_DATABASE", development)
    app.config.setdefault("PGTQ_DEV_WORKER", development)
    # Handler threads per worker: a long report does not hold up the emails.
    app.config.setdefault("PGTQ_CONCURRENCY", 4)
    q.init_app(app)

    @app.get("/")
    def index() -> str:
        return render_template("index.html", **_status(), development=development)

    @app.get("/status")
    def status() -> str:
        """The live part of the page, fetched by the page every second."""
        return render_template("_status.html", **_status())

    @app.post("/signup")
    def signup() -> Any:
        address = request.form.get("email", "").strip().lower()
        if "@" not in address or len(address) > 254:
            flash("Please enter an email address.")
            return redirect(url_for("index"))
        try:
            # The task and the sign-up are written in one transaction: the
            # email is sent if and only if the sign-up is stored.
            with store.transaction() as conn:
                task = send_welcome_email.options(connection=conn).push(address)
                store.add_signup(conn, address, task.id)
        except psycopg2.errors.UniqueViolation:
            # Rolled back: the task pushed above is gone too.
            flash(f"{address} has signed up already: no second email.")
            return redirect(url_for("index"))
        flash(f"Thanks! Your welcome email is task {task.id}.")
        return redirect(url_for("index"))

    @app.post("/report")
    def report() -> Any:
        task = build_report.push(rows=40)
        store.add_job(task.id, "report of 40 rows")
        flash(f"Report queued: task {task.id}.")
        return redirect(url_for("index"))

    @app.post("/flaky")
    def flaky() -> Any:
        task = call_flaky_api.push(2)
        store.add_job(task.id, "flaky API call (fails twice)")
        flash(f"Flaky call queued: task {task.id}.")
        return redirect(url_for("index"))

    @app.post("/import")
    def import_file() -> Any:
        task = import_contacts.push("contacts.csv")
        store.add_job(task.id, "import of a broken file (fails for good)")
        flash(f"Import queued: task {task.id}. It will fail: see its traceback.")
        return redirect(url_for("index"))

    @app.post("/export")
    def export() -> Any:
        task = export_archive.push(EXPORT_CHUNKS)
        store.add_job(task.id, f"long export of {EXPORT_CHUNKS} chunks (cancellable)")
        flash(f"Export queued: task {task.id}. Cancel it while it runs.")
        return redirect(url_for("index"))

    @app.post("/tasks/<int:task_id>/cancel")
    def cancel(task_id: int) -> Any:
        try:
            # Queued: cancelled now.  Running: its worker tells the handler,
            # which sees current_task.cancel_requested and stops.
            task = q.cancel(task_id)
        except TaskNotFound:
            flash(f"There is no task {task_id}.")
            return redirect(url_for("index"))
        if task.state == "cancelled":
            flash(f"Task {task_id} is cancelled.")
        elif task.state == "running":
            flash(f"Task {task_id} was asked to stop.")
        else:
            flash(f"Task {task_id} had already ended ({task.state}).")
        return redirect(url_for("index"))

    @app.get("/favicon.ico")
    def favicon() -> Any:
        """For browsers that ask for /favicon.ico whatever the page says."""
        return send_from_directory(
            app.static_folder or "static", "favicon.svg", mimetype="image/svg+xml"
        )

    return app


def _status() -> dict[str, Any]:
    """What the page shows: recent tasks with their state, the outbox, ticks."""
    rows = [
        {"label": f"welcome email to {s['email']}", "task_id": s["task_id"]}
        for s in store.recent_signups()
    ] + store.recent_jobs()
    rows.sort(key=lambda row: row["task_id"], reverse=True)
    tasks = []
    for row in rows[:8]:
        try:
            tasks.append((row["label"], q.get_task(row["task_id"])))
        except TaskNotFound:  # deleted by retention
            continue
    return {
        "tasks": tasks,
        "outbox": store.recent_outbox(5),
        "ticks": store.ticks(),
        "schedule": TICK_SCHEDULE,
    }
