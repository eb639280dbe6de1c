-- flask_pgtq schema, version 9: the ready tasks of each key, in claim order.
--
-- A handler with per-key limits claims the first ready tasks of each key
-- (round-robin over keys).  This index lets the claim walk the distinct
-- keys with ready tasks (one index probe each) and read each key's head,
-- instead of ranking every ready task of the handler: the cost of a claim
-- follows the number of keys with ready tasks, not the number of tasks.
-- Tasks without a key add no entry.

CREATE INDEX pgtq_tasks_key_ready ON pgtq_tasks (name, queue, key, priority DESC, run_at, id)
    WHERE state = 'queued' AND key IS NOT NULL;
