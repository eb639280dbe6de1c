-- flask_pgtq schema, version 5: run-time control.  Rows every worker reads:
-- pauses of queues and handlers, and cron schedules stored in the database.
-- Changes are announced on the pgtq_control channel (a latency hint: the
-- claim reads pauses itself, and workers reload schedules every second).

CREATE TABLE pgtq_pauses (
    kind       text        NOT NULL CHECK (kind IN ('queue', 'handler')),
    target     text        NOT NULL,
    reason     text,
    paused_by  text,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    -- NULL: until resumed.
    until      timestamptz,
    PRIMARY KEY (kind, target)
);

CREATE TABLE pgtq_schedules (
    name       text        PRIMARY KEY,
    cron       text        NOT NULL,
    tz         text        NOT NULL DEFAULT 'UTC',
    handler    text        NOT NULL,
    args       jsonb       NOT NULL DEFAULT '[]',
    kwargs     jsonb       NOT NULL DEFAULT '{}',
    enabled    boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Snooze: a handler puts its task back without spending an attempt; the
-- count caps endless snoozing (the handler's max_snoozes).
ALTER TABLE pgtq_tasks ADD COLUMN snoozes integer NOT NULL DEFAULT 0;

-- Per-key limits: a task's key (say "account:42"); handlers with
-- key_concurrency / key_rate_limit run at most so many tasks of one key at
-- once, and start at most so many per period.  Partial indexes: nothing to
-- maintain for tasks without a key.
ALTER TABLE pgtq_tasks ADD COLUMN key text;
CREATE INDEX pgtq_tasks_running_key ON pgtq_tasks (name, key)
    WHERE state = 'running' AND key IS NOT NULL;
CREATE INDEX pgtq_tasks_key_starts ON pgtq_tasks (name, key, started_at)
    WHERE key IS NOT NULL;
