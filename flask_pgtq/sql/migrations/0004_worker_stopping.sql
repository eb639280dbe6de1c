-- flask_pgtq schema, version 4: a worker says when it began to stop.
--
-- A stopping worker claims nothing more and waits (PGTQ_SHUTDOWN_GRACE)
-- for the tasks it runs; ``flask pgtq workers`` and the dashboard show it
-- as stopping rather than alive.  NULL while it works.

ALTER TABLE pgtq_workers ADD COLUMN stopping_since timestamptz;
