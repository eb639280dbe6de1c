-- flask_pgtq schema, version 13: succeeded tasks apart from the others.
--
-- The statement that records a success moves the task's row out of
-- pgtq_tasks into pgtq_tasks_succeeded (delete, then insert, in that
-- statement): pgtq_tasks keeps the tasks that are waiting, queued, running,
-- failed or cancelled, a small table whatever the retention keeps, and a
-- success no longer writes a third version of the row with its index
-- entries into it.  Measured (bench/storage.py, the SQL of the claim and
-- outcome rounds): ~20 % less server CPU per task than updating the row.
--
-- pgtq_tasks_succeeded inherits pgtq_tasks: a query of pgtq_tasks reads
-- both (its result, get_task, the dashboard, retention, users' own SQL);
-- "FROM ONLY pgtq_tasks" reads the other tasks alone.  Its CHECK lets the
-- planner leave it out of every query that asks for another state (the
-- claims, outcomes, rescue, cancel).  Columns added to pgtq_tasks later
-- reach it by inheritance; its indexes are its own: those that reads of
-- finished tasks use (by id, by workflow, unique keys held after success,
-- per-key rate windows, tags, retention by finish time).  Rows of older
-- versions stay where they are and are read and pruned as before.

CREATE TABLE pgtq_tasks_succeeded (
    CONSTRAINT pgtq_tasks_succeeded_state_check CHECK (state = 'succeeded')
) INHERITS (pgtq_tasks);

ALTER TABLE pgtq_tasks_succeeded ADD PRIMARY KEY (id);

CREATE INDEX pgtq_tasks_succeeded_finished ON pgtq_tasks_succeeded (state, finished_at);

CREATE INDEX pgtq_tasks_succeeded_workflow ON pgtq_tasks_succeeded (workflow_id)
    WHERE workflow_id IS NOT NULL;

CREATE INDEX pgtq_tasks_succeeded_unique_recent
    ON pgtq_tasks_succeeded (unique_key, unique_until)
    WHERE unique_until IS NOT NULL;

CREATE INDEX pgtq_tasks_succeeded_key_starts ON pgtq_tasks_succeeded (name, key, started_at)
    WHERE key IS NOT NULL;

CREATE INDEX pgtq_tasks_succeeded_tags ON pgtq_tasks_succeeded USING gin (tags)
    WHERE tags <> '{}';

-- Rows arrive in finish order and leave by retention, oldest first.
ALTER TABLE pgtq_tasks_succeeded SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
