-- flask_pgtq schema, version 3: one index on running tasks instead of two,
-- and autovacuum settings for a queue table.
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

-- A queue table churns: every task leaves dead row versions behind (claim,
-- finish, and the delete of retention).  With the stock thresholds (20 % of
-- the table) and cost-based throttling, autovacuum starts late and runs slowly
-- on it, so the table grows by about 0.5 KiB per task between passes.  Vacuum
-- it after a small share of changes and without throttling: its live part is
-- small, and pages of old finished tasks are skipped once all-visible.
ALTER TABLE pgtq_tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
