-- flask_pgtq schema, version 8: tags on tasks.
--
-- Free-form labels (options(tags=[...]), @q.handler(tags=[...])), checked
-- by the pushing code: each a printable string of at most 100 characters,
-- at most 20 per task.  Filtered with "tags @> ARRAY[...]" (the tasks that
-- have every tag given), which the GIN index serves.

ALTER TABLE pgtq_tasks ADD COLUMN tags text[] NOT NULL DEFAULT '{}';

CREATE INDEX pgtq_tasks_tags ON pgtq_tasks USING gin (tags);
