-- flask_pgtq schema, version 13: a push wakes workers from its own
-- statement, not from a trigger.
--
-- The statement-level trigger of version 1 collected every inserted row in
-- a transition table and ran a query over it, on every push: about 30 µs of
-- a ~330 µs single push, measured with the statements alone (7 interleaved
-- runs of 1,000 commits).  The statements that insert queued tasks
-- (push_task, push_tasks, push_unique_task, fire_periodic, push_workflow)
-- now call pg_notify('pgtq', queue) themselves: delivered at commit, as
-- before; the payload is still the queue name.
--
-- Rows inserted into pgtq_tasks by other means (your own SQL) no longer
-- wake workers at once: they are claimed at the next poll
-- (PGTQ_POLL_INTERVAL).  During a rolling upgrade, processes still running
-- the earlier code push without waking workers, the same way.
DROP TRIGGER pgtq_tasks_notify_inserted ON pgtq_tasks;
DROP FUNCTION pgtq_notify_inserted();
