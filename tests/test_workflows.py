"""Workflows: chain, group, chord, after=.  Real PostgreSQL and real worker
processes; exactly-once release counted from the handlers' own records."""

from __future__ import annotations

import json
import random
import threading

import psycopg2
import pytest
from flask import Flask

from flask_pgtq import (
    ArgumentsNotSerializable,
    ConfigurationError,
    PgTq,
    State,
    Task,
    TaskFailed,
    WorkflowError,
    chain,
    chord,
    group,
    signals,
)
from flask_pgtq.queue import new_owner_id
from flask_pgtq.values import Outcome
from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import (
    wf_add,
    wf_collect,
    wf_double,
    wf_exclusive,
    wf_fail,
    wf_member,
    wf_parents,
)
from tests.workers import runs


@pytest.fixture
def app(served_app: Flask) -> Flask:
    """The app the workers serve (conftest's ``served_app``)."""
    return served_app


def test_a_chain_passes_each_result_to_the_next_step(app, dsn, start_worker):
    wf = chain(wf_add.s(1, 1), *[wf_double.s() for _ in range(9)]).push()
    assert [t.state for t in wf.tasks] == [State.QUEUED] + [State.WAITING] * 9
    start_worker("--concurrency", "2")
    assert wf.wait(timeout=30) == 2 * 2**9
    assert wf.state == "succeeded"
    assert [t.result for t in wf.refresh().tasks] == [2 * 2**i for i in range(10)]


def test_a_chains_next_step_starts_without_waiting_for_a_notification(app, dsn, start_worker):
    # No LISTEN and a poll every minute: what wakes the worker then is the
    # test app's periodic task, once a second.  Each next step starts at
    # once only if the worker claims again right after the round that
    # released it (else a step waits for the next wake-up: up to 1 s).
    start_worker("--concurrency", "2", settings={"PGTQ_LISTEN": False, "PGTQ_POLL_INTERVAL": 60})
    wf = chain(wf_add.s(1, 1), *[wf_double.s() for _ in range(7)]).push()
    assert wf.wait(timeout=30) == 2 * 2**7
    rows = sql_all(
        dsn,
        "SELECT started_at, finished_at FROM pgtq_tasks WHERE workflow_id = %s ORDER BY id",
        (wf.id,),
    )
    gaps = [(b[0] - a[1]).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    assert max(gaps) < 0.5, gaps


def test_a_chord_callback_gets_the_results_in_order(app, dsn, start_worker):
    c = chord([wf_member.s(str(i)) for i in range(5)], wf_collect.s("callback")).push()
    start_worker("--concurrency", "4")
    assert c.wait(timeout=30) == [str(i) for i in range(5)]
    assert len(runs(dsn, "callback")) == 1


@pytest.mark.slow
def test_a_burst_worker_runs_a_chord_to_its_callback(app, dsn, start_worker):
    # The round that records the last member's outcome releases the callback,
    # which that round cannot claim yet: a burst worker must not stop there.
    c = chord([wf_member.s(str(i)) for i in range(20)], wf_collect.s("callback")).push()
    worker = start_worker("--burst", ready=False)
    assert worker.wait(60) == 0
    assert c.refresh().state == "succeeded"
    assert len(runs(dsn, "callback")) == 1


def members(dsn: str) -> dict[str, int]:
    """Runs of each group member, from the members' own records."""
    counted: dict[str, int] = {}
    for row in runs(dsn):
        if row["tag"].startswith("member:"):
            key = row["tag"].split(":", 1)[1]
            counted[key] = counted.get(key, 0) + 1
    return counted


def test_a_chord_of_200_drained_by_3_workers_calls_back_exactly_once(app, dsn, start_worker):
    header = [wf_member.s(str(i), fail_first=(i == 7)) for i in range(200)]
    c = chord(header, wf_collect.s("callback")).push()
    for _ in range(3):
        start_worker("--concurrency", "2")
    assert c.wait(timeout=60) == [str(i) for i in range(200)]
    assert len(runs(dsn, "callback")) == 1
    counted = members(dsn)
    assert set(counted) == {str(i) for i in range(200)}
    assert counted["7"] == 2  # retried once, and the callback still waited for it
    callback = c.refresh().tasks[-1]
    assert (callback.state, callback.attempts) == (State.SUCCEEDED, 1)
    assert (c.state, c.pending, c.total) == ("succeeded", 0, 201)


def test_a_chord_survives_workers_killed_twice_and_calls_back_once(app, dsn, start_worker):
    header = [wf_member.s(str(i), fail_first=(i == 3)) for i in range(200)]
    c = chord(header, wf_collect.s("callback")).push()
    workers = [start_worker("--concurrency", "2") for _ in range(3)]
    rng = random.Random()
    for threshold in (40, 110):
        poll_until(lambda t=threshold: len(members(dsn)) >= t, 30, 0.01, f"{threshold} members")
        victim = workers.pop(rng.randrange(len(workers)))
        victim.kill()
        workers.append(start_worker("--concurrency", "2"))
    assert c.wait(timeout=90) == [str(i) for i in range(200)]
    assert len(runs(dsn, "callback")) == 1
    assert set(members(dsn)) == {str(i) for i in range(200)}
    assert all(t.state is State.SUCCEEDED for t in c.refresh().tasks)


def test_a_failure_cancels_waiting_descendants_transitively_and_on_finish_runs(
    app, dsn, start_worker
):
    g = group(
        chain(wf_member.s("a"), wf_fail.si("boom"), wf_double.s(), wf_double.s()),
        wf_member.s("b"),
    ).push(on_finish=wf_collect.s("on_finish"))
    start_worker("--concurrency", "2")
    with pytest.raises(TaskFailed) as failed:
        g.wait(timeout=30)
    a, boom, d1, d2, b, on_finish = g.refresh().tasks
    assert failed.value.task.id == boom.id
    assert [t.state for t in (a, boom, d1, d2, b, on_finish)] == [
        State.SUCCEEDED,
        State.FAILED,
        State.CANCELLED,
        State.CANCELLED,
        State.SUCCEEDED,
        State.SUCCEEDED,
    ]
    assert d1.error == d2.error == f"dependency {boom.id} failed"
    assert on_finish.result == {
        "succeeded": 1,
        "failed": 0,
        "cancelled": 1,
        "results": [None, "b"],
    }
    assert len(runs(dsn, "on_finish")) == 1
    assert g.state == "failed"


def test_cancelling_a_step_cancels_what_waits_for_it(app, dsn, start_worker):
    wf = chain(wf_add.s(1, 2), wf_double.s(), wf_double.s()).push()
    first, second, third = wf.tasks
    worker_app.q.cancel(first.id, "not today")
    assert [t.state for t in wf.refresh().tasks] == [State.CANCELLED] * 3
    assert third.refresh().error == f"dependency {first.id} cancelled"
    assert second.refresh().error == f"dependency {first.id} cancelled"
    assert wf.state == "cancelled"
    with pytest.raises(TaskFailed):
        wf.wait(timeout=5)


def test_cancelling_a_workflow_cancels_every_task_not_started(app, dsn):
    g = group(*[wf_member.s(str(i)) for i in range(5)]).push(on_finish=wf_collect.s("f"))
    assert g.cancel() == 6
    assert {t.state for t in g.refresh().tasks} == {State.CANCELLED}
    assert g.state == "cancelled" and g.pending == 0


def test_a_rolled_back_push_leaves_no_task_and_no_workflow(app, dsn):
    conn = psycopg2.connect(dsn)
    try:
        wf = chord([wf_member.s("x"), wf_member.s("y")], wf_collect.s("c")).push(connection=conn)
        assert len(wf.tasks) == 3
        conn.rollback()
    finally:
        conn.close()
    for table in ("pgtq_tasks", "pgtq_workflows", "pgtq_dependencies"):
        assert sql_one(dsn, f"SELECT count(*) FROM {table}") == (0,)


def test_a_committed_push_is_stored_whole(app, dsn, start_worker):
    conn = psycopg2.connect(dsn)
    try:
        wf = chain(wf_add.s(2, 3), wf_double.s()).push(connection=conn)
        conn.commit()
    finally:
        conn.close()
    start_worker()
    assert wf.wait(timeout=20) == 10


def test_after_waits_for_tasks_of_other_queues(app, dsn, start_worker):
    t1 = wf_add.options(queue="first").push(1, 2)
    t2 = wf_add.options(queue="second").push(3, 4)
    child = wf_parents.options(queue="third", after=[t1, t2.id]).push("child")
    assert child.state is State.WAITING
    start_worker("--queue", "third", "--queue", "second", "--queue", "first")
    assert child.wait(timeout=20) == [3, 7]
    assert sql_all(dsn, "SELECT parent_id FROM pgtq_dependencies ORDER BY position") == [
        (t1.id,),
        (t2.id,),
    ]


def test_after_a_finished_task_is_queued_at_once(app, dsn, start_worker):
    start_worker()
    t1 = wf_add.push(1, 2)
    assert t1.wait(timeout=20) == 3
    child = wf_parents.options(after=[t1]).push("child")
    assert child.state is State.QUEUED
    assert child.wait(timeout=20) == [3]


def test_nested_a_chain_of_groups_and_a_chord_inside_a_chain(app, dsn, start_worker):
    start_worker("--concurrency", "3")
    wf = chain(
        group(wf_add.s(1, 1), wf_add.s(2, 2)),
        group(wf_collect.s("g1"), wf_collect.s("g2")),
        wf_collect.s("last"),
    ).push()
    assert wf.wait(timeout=30) == [[2, 4], [2, 4]]
    inner = chain(
        wf_add.s(1, 2),
        chord([wf_double.s(), wf_double.s(), wf_add.s(10)], wf_collect.s("cb")),
        wf_double.s(),
    ).push()
    assert inner.wait(timeout=30) == [6, 6, 13] * 2


def test_hostile_input_is_refused_at_push_and_nothing_is_stored(app, dsn, start_worker):
    with pytest.raises(WorkflowError, match="task 999999 does not exist"):
        wf_add.options(after=[999999]).push(1, 2)
    with pytest.raises(WorkflowError, match="do not fit"):
        chain(wf_add.s(1, 2), wf_double.s(5)).push()  # the result makes two arguments
    with pytest.raises(WorkflowError, match="do not fit"):
        chord([wf_add.s(1, 2)], wf_add.s()).push()  # the list of results is one
    chain(wf_add.s(1, 2), wf_double.si(5)).push()  # immutable: gets nothing
    sql_all(dsn, "DELETE FROM pgtq_tasks")
    sql_all(dsn, "DELETE FROM pgtq_workflows")
    sql_all(dsn, "DELETE FROM pgtq_dependencies")
    with pytest.raises(WorkflowError, match="signature"):
        chain(wf_add.s(1, 2), "wf_double").push()  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="at least one"):
        group().push()
    with pytest.raises(WorkflowError, match="at least one"):
        chord([], wf_collect.s("x"))
    with pytest.raises(ArgumentsNotSerializable):
        chain(wf_add.s(1, 2), wf_add.s({1, 2})).push()
    with pytest.raises(ConfigurationError):
        wf_add.options(after=[True]).push(1, 2)
    with pytest.raises(ConfigurationError):
        wf_add.options(after=5).push(1, 2)  # type: ignore[arg-type]
    other = PgTq()

    @other.handler()
    def stranger(x: int) -> int:
        return x

    with pytest.raises(WorkflowError, match="not registered"):
        chain(wf_add.s(1, 2), stranger.s()).push()
    start_worker()
    failed = wf_fail.push("early")
    with pytest.raises(TaskFailed):
        failed.wait(timeout=20)
    with pytest.raises(WorkflowError, match=f"task {failed.id} already failed"):
        wf_add.options(after=[failed]).push(1, 2)
    on_failure = wf_parents.options(after=[failed], run_on_failure=True).push("anyway")
    assert on_failure.wait(timeout=20) == [None]
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_workflows") == (0,)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks") == (2,)


def test_concurrency_limits_of_members_still_hold(app, dsn, start_worker):
    g = group(*[wf_exclusive.s(str(i)) for i in range(6)]).push()
    start_worker("--concurrency", "3")
    start_worker("--concurrency", "3")
    assert g.wait(timeout=30) == [str(i) for i in range(6)]
    running = peak = 0
    for row in runs(dsn, "exclusive"):
        running += 1 if row["event"] == "started" else -1
        peak = max(peak, running)
    assert peak == 1


def test_the_last_two_parents_ending_at_once_release_the_child_exactly_once(app, dsn):
    store = worker_app.q.app_queue().store
    finished: list[int] = []
    store.on_workflows_finished = finished.extend
    for _ in range(15):
        c = chord([wf_member.s("x"), wf_member.s("y")], wf_collect.s("cb")).push()
        owners = [new_owner_id(), new_owner_id()]
        claimed = []
        for owner in owners:
            store.register_owner(owner)
            claimed += store.claim(owner, "default", 1)
        assert sorted(t.id for t in claimed) == [t.id for t in c.tasks[:2]]
        barrier = threading.Barrier(2)

        def finish(owner: str, task: Task, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            store.finish(owner, [Outcome(task, State.SUCCEEDED, result=json.dumps(task.args[0]))])

        threads = [
            threading.Thread(target=finish, args=(owner, task))
            for owner, task in zip(owners, claimed, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        callback = c.tasks[2].refresh()
        assert (
            callback.state,
            sql_one(dsn, "SELECT waiting_for FROM pgtq_tasks WHERE id = %s", (callback.id,)),
        ) == (State.QUEUED, (0,))
        # Run the callback: the workflow finishes, announced once.
        owner = new_owner_id()
        store.register_owner(owner)
        (task,) = store.claim(owner, "default", 1)
        assert task.args == [["x", "y"], "cb"]
        store.finish(owner, [Outcome(task, State.SUCCEEDED, result="1")])
        assert finished.count(c.id) == 1
    store.on_workflows_finished = None


def test_the_release_finds_dependents_by_index_whatever_plan_it_kept(app, dsn):
    # PL/pgSQL keeps a generic plan of a statement after five runs.  The
    # release's statements first run in rounds without dependents (an
    # empty pgtq_dependencies): they must still look a chord's members and
    # callback up by index once the tables are large, not read them whole
    # on every round (schema 11; a chord drained at 62 % of the plain rate).
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for i in range(8):
                cur.execute(
                    "SELECT pgtq_tasks_ended(ARRAY[%s]::bigint[], ARRAY['succeeded'], "
                    "ARRAY[NULL]::bigint[])",
                    (-1 - i,),
                )
            cur.execute(
                "INSERT INTO pgtq_dependencies (child_id, position, parent_id) "
                "SELECT -g, 0, -g FROM generate_series(100, 20099) AS g"
            )
            c = chord([wf_member.s(str(i)) for i in range(40)], wf_collect.s("cb")).push(
                connection=conn
            )
            cur.execute("ANALYZE pgtq_tasks, pgtq_dependencies")

            def seq_scans() -> list[int]:
                cur.execute(
                    "SELECT relname, seq_scan FROM pg_stat_xact_user_tables "
                    "WHERE relname IN ('pgtq_tasks', 'pgtq_dependencies') ORDER BY relname"
                )
                return [n for _, n in cur.fetchall()]

            members = [t.id for t in c.tasks[:40]]
            for start in range(0, 40, 4):
                ids = members[start : start + 4]
                cur.execute(
                    "UPDATE pgtq_tasks SET state = 'succeeded', result = '\"r\"', "
                    "finished_at = now() WHERE id = ANY(%s)",
                    (ids,),
                )
                before = seq_scans()
                cur.execute(
                    "SELECT pgtq_tasks_ended(%s, %s, %s)",
                    (ids, ["succeeded"] * 4, [c.id] * 4),
                )
                assert cur.fetchone() == ([],)
                assert seq_scans() == before, start
            callback = c.tasks[40].id
            cur.execute("SELECT state, waiting_for FROM pgtq_tasks WHERE id = %s", (callback,))
            assert cur.fetchone() == ("queued", 0)
            # The callback's arguments at its claim (schema 12), past the
            # five runs after which PL/pgSQL keeps a plan: by index too.
            cur.execute("SELECT t::text FROM pgtq_tasks AS t WHERE id = %s", (callback,))
            (row,) = cur.fetchone()
            for _ in range(8):
                before = seq_scans()
                cur.execute("SELECT pgtq_claim_args(%s::pgtq_tasks)", (row,))
                assert cur.fetchone() == ([["r"] * 40, "cb"],)
                assert seq_scans() == before
    finally:
        conn.rollback()
        conn.close()


# -- operations -------------------------------------------------------------------


def test_the_cli_shows_relatives_lists_workflows_and_cancels_one(app, dsn):
    wf = chord([wf_member.s("a"), wf_member.s("b")], wf_collect.s("cb")).push()
    a, b, callback = wf.tasks
    runner = app.test_cli_runner()
    shown = runner.invoke(args=["pgtq", "show", str(callback.id)])
    assert shown.exit_code == 0, shown.output
    assert f"workflow          {wf.id}" in shown.output or f"workflow  {wf.id}" in shown.output
    parents = shown.output.split("parents:")[1]
    assert str(a.id) in parents and str(b.id) in parents
    shown = runner.invoke(args=["pgtq", "show", str(a.id), "--json"])
    relatives = json.loads(shown.output)["relatives"]
    assert relatives == [
        {
            "kind": "child",
            "position": 0,
            "id": callback.id,
            "name": "wf_collect",
            "queue": "default",
            "state": "waiting",
        }
    ]
    listed = json.loads(runner.invoke(args=["pgtq", "workflows", "--json"]).output)
    assert [(w["id"], w["kind"], w["state"], w["total"], w["pending"]) for w in listed] == [
        (wf.id, "chord", "running", 3, 3)
    ]
    assert listed[0]["counts"] == {"queued": 2, "waiting": 1}
    status = runner.invoke(args=["pgtq", "status", "--json"]).output
    assert json.loads(status)["queues"][0]["counts"]["waiting"] == 1
    cancelled = runner.invoke(args=["pgtq", "cancel", "--workflow", str(wf.id)])
    assert cancelled.exit_code == 0, cancelled.output
    assert f"workflow {wf.id}: 3 tasks cancelled, 0 running asked to stop" in cancelled.output
    table = runner.invoke(args=["pgtq", "workflows"]).output
    assert "cancelled" in table.splitlines()[1]
    assert runner.invoke(args=["pgtq", "cancel"]).exit_code != 0


def test_workflow_finished_is_sent_once_when_the_last_task_ends(app, dsn, start_worker):
    seen: list[tuple[int, str]] = []

    def receiver(sender, workflow, **extra):
        seen.append((workflow.id, workflow.state))

    with signals.workflow_finished.connected_to(receiver):
        wf = chain(wf_add.s(1, 2), wf_double.s()).push()
        # Run it here, step by step, as a worker would.
        assert worker_app.q.pop().run().state is State.SUCCEEDED
        assert seen == []
        last = worker_app.q.pop().run()
        assert last.result == 6
        assert worker_app.q.pop() is None
        assert seen == [(wf.id, "succeeded")]
        failing = chain(wf_fail.si("x"), wf_double.s()).push()
        worker_app.q.pop().run()
        assert seen[-1] == (failing.id, "failed")
        cancelled = group(wf_add.s(1, 1)).push()
        cancelled.cancel()
        assert seen[-1] == (cancelled.id, "cancelled")
    assert len(seen) == 3


def test_the_dashboard_draws_a_workflow_and_links_it_from_its_tasks(dsn, monkeypatch):
    settings = {"PGTQ_DASHBOARD_URL_PREFIX": "/pgtq", "PGTQ_DASHBOARD_AUTH": "local-only"}
    monkeypatch.setenv("PGTQ_TEST_APP_DSN", dsn)
    monkeypatch.setenv("PGTQ_TEST_APP_SETTINGS", json.dumps(settings))
    app = worker_app.create_app()
    with app.app_context():
        wf = chain(wf_add.s(1, 2), group(wf_double.s(), wf_double.s()), wf_collect.s("x")).push()
    client = app.test_client()
    page = client.get(f"/pgtq/workflows/{wf.id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count('<rect class="node node-') == 4
    assert html.count('<line class="edge"') == 4
    assert "node-queued" in html and html.count("node-waiting") == 3
    for task in wf.tasks:
        assert f'href="/pgtq/tasks/{task.id}"' in html
    member = client.get(f"/pgtq/tasks/{wf.tasks[1].id}").get_data(as_text=True)
    assert f'href="/pgtq/workflows/{wf.id}"' in member
    assert client.get("/pgtq/workflows/999999").status_code == 404
    assert "script-src" in page.headers.get("Content-Security-Policy", "script-src")


def test_a_group_of_10000_is_pushed_in_one_statement(app, dsn):
    g = group(*[wf_member.s(str(i)) for i in range(10_000)]).push(on_finish=wf_collect.s("done"))
    assert len(g.tasks) == 10_001
    assert g.tasks[-1].state is State.WAITING
    (transactions,) = sql_one(dsn, "SELECT count(DISTINCT xmin::text) FROM pgtq_tasks")
    assert transactions == 1
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_dependencies") == (10_000,)
    assert sql_one(dsn, "SELECT waiting_for FROM pgtq_tasks WHERE id = %s", (g.tasks[-1].id,)) == (
        10_000,
    )


def test_an_operator_retry_of_a_failed_member_reopens_its_workflow(
    standalone_q: PgTq, dsn: str
) -> None:
    from flask_pgtq import group

    q = standalone_q
    calls: list[int] = []

    @q.handler(max_attempts=1)
    def step(x: int) -> int:
        calls.append(x)
        if calls.count(x) == 1 and x == 1:
            raise RuntimeError("the first run of 1 fails")
        return x

    wf = group(step.s(1), step.s(2)).push()
    q.drain()
    assert q.get_workflow(wf.id).state == "failed"
    failed = [t.id for t in q.get_workflow(wf.id).tasks if t.state.value == "failed"]
    assert len(failed) == 1
    q.admin.retry(failed[0])
    (pending, n_failed, finished) = sql_one(
        dsn, "SELECT pending, failed, finished_at FROM pgtq_workflows WHERE id = %s", (wf.id,)
    )
    assert (pending, n_failed, finished) == (1, 0, None)
    assert q.get_workflow(wf.id).state == "running"
    q.drain()
    assert q.get_workflow(wf.id).state == "succeeded"
    assert wf.wait(timeout=5) == [1, 2]


def test_purge_keeps_a_parent_whose_dependents_wait(standalone_q: PgTq, dsn: str) -> None:
    q = standalone_q

    @q.handler()
    def parent() -> int:
        return 1

    @q.handler()
    def child(x: int) -> int:
        return x

    first = parent.push()
    q.drain()
    waiting_child = child.options(after=[first], queue="elsewhere").push(0)
    sql_all(dsn, "UPDATE pgtq_tasks SET finished_at = now() - interval '30 days'")
    q.admin.purge(states=["succeeded"], older_than=86400)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE id = %s", (first.id,))[0] == 1
    assert q.get_task(waiting_child.id).state.value in ("queued", "waiting")
