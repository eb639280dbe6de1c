"""An example Flask app using flask_pgtq.

A sign-up form pushes a ``send_welcome_email`` task; a worker "sends" it by
writing it to the ``outbox`` table.  The front page lists recent sign-ups
with the state of their task.

Run it (with a PostgreSQL at PGTQ_DSN)::

    export PGTQ_DSN="dbname=postgres user=postgres host=localhost"
    flask --app example_app pgtq init-db
    flask --app example_app pgtq worker &
    flask --app example_app run
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, flash, redirect, render_template, request, url_for

from flask_pgtq import PgTq, current_task

from . import store

q = PgTq()


@q.handler(max_attempts=5)
def send_welcome_email(address: str) -> dict[str, Any]:
    """Write the welcome email to the outbox (a stand-in for SMTP).

    Idempotent, as handlers should be: a second run of the same task does not
    send twice.
    """
    body = f"Welcome aboard, {address}!"
    sent = store.write_outbox(current_task.id, address, body)
    return {"to": address, "sent": sent}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev only: change me")
    app.config["PGTQ_DSN"] = os.environ.get("PGTQ_DSN")
    app.config.update(config or {})
    q.init_app(app)

    @app.get("/")
    def index() -> str:
        signups = store.recent_signups()
        tasks = {s["task_id"]: q.get_task(s["task_id"]) for s in signups}
        return render_template(
            "index.html", signups=signups, tasks=tasks, outbox=store.recent_outbox()
        )

    @app.post("/signup")
    def signup() -> Any:
        address = request.form.get("email", "").strip()
        if "@" not in address or len(address) > 254:
            flash("Please enter an email address.")
            return redirect(url_for("index"))
        task = send_welcome_email.push(address)
        store.add_signup(address, task.id)
        flash(f"Thanks! Your welcome email is task {task.id}.")
        return redirect(url_for("index"))

    return app
