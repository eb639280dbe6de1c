-- flask_pgtq schema, version 2: unique tasks, per-handler limits, periodic
-- tasks.

ALTER TABLE pgtq_tasks
    ADD COLUMN unique_key   text,
    ADD COLUMN unique_until timestamptz;

-- At most one queued or running task per unique key.  Concurrent pushers
-- of the same key wait here for each other (ON CONFLICT DO NOTHING).
CREATE UNIQUE INDEX pgtq_tasks_unique_active ON pgtq_tasks (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

-- unique_for: a finished task still holds its key until unique_until.
CREATE INDEX pgtq_tasks_unique_recent ON pgtq_tasks (unique_key, unique_until)
    WHERE unique_until IS NOT NULL;

-- Running tasks per handler, for concurrency limits.
CREATE INDEX pgtq_tasks_running_name ON pgtq_tasks (name)
    WHERE state = 'running';

-- One row per limited handler: claims of its tasks lock it, so limits hold
-- across every worker.  "recent" holds the start times inside the current
-- rate-limit window.
CREATE TABLE pgtq_limits (
    name   text          PRIMARY KEY,
    recent timestamptz[] NOT NULL DEFAULT '{}'
);

-- Periodic tasks: one row per (schedule, fire time) ever fired, so each fire
-- time produces exactly one task, however many workers schedule and however
-- long tasks are kept.  Rows older than two days are pruned (fire times
-- older than the misfire grace, at most a day, are never fired again).
CREATE TABLE pgtq_periodic (
    schedule text        NOT NULL,
    fire_at  timestamptz NOT NULL,
    task_id  bigint,
    PRIMARY KEY (schedule, fire_at)
);
