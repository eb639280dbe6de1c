-- flask_pgtq schema, version 3: one index on running tasks instead of two.
--
-- Every claim inserts an entry into each index whose predicate a running
-- task matches; with two such indexes a third of a claim's index work was
-- spent on the second.  (name, locked_by) serves what both served: running
-- tasks per handler (concurrency limits) by its leading column, and the
-- running tasks of one worker or of dead workers (rescue, cancel requests)
-- by a scan of this small index, filtered on its entries.
CREATE INDEX pgtq_tasks_running_by_name ON pgtq_tasks (name, locked_by)
    WHERE state = 'running';

DROP INDEX pgtq_tasks_running;
DROP INDEX pgtq_tasks_running_name;
