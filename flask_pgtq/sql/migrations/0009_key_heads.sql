-- flask_pgtq schema, version 9: limited tasks apart, keyed tasks in claim
-- order.
--
-- "limited" marks the tasks that only the limited claim may take (a
-- handler with concurrency or rate limits; with limits per key only, its
-- tasks that have a key).  The plain claim's index no longer holds them:
-- a backlog of a limited handler, however deep, costs the other handlers'
-- claims nothing (it used to be read past on every claim).  The pusher
-- sets the mark from the handler's limits; workers correct it for queued
-- tasks when limits change (pgtq_sync_limited in flow.sql).
--
-- The limited claim reads its own indexes:
--
-- * pgtq_tasks_limited_ready: a handler's limited tasks, best first.  With
--   limits per key the claim reads the front of it and meets each key's
--   head there (the first task of a key in that order); when the front
--   holds heads enough, the claim is done.
-- * pgtq_tasks_key_ready, by key: else the claim walks the keys with ready
--   tasks (one index probe each, whatever a key's backlog) for every head.
--
-- A claim costs what the room and the keys cost, not what the backlog holds.

ALTER TABLE pgtq_tasks ADD COLUMN limited boolean NOT NULL DEFAULT false;

DROP INDEX pgtq_tasks_ready;

CREATE INDEX pgtq_tasks_ready ON pgtq_tasks (queue, priority DESC, run_at, id)
    WHERE state = 'queued' AND NOT limited;

CREATE INDEX pgtq_tasks_limited_ready ON pgtq_tasks (name, queue, priority DESC, run_at, id)
    WHERE state = 'queued' AND limited;

CREATE INDEX pgtq_tasks_key_ready ON pgtq_tasks (name, queue, key, priority DESC, run_at, id)
    WHERE state = 'queued' AND limited AND key IS NOT NULL;
