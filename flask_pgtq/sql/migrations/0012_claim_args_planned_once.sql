-- flask_pgtq schema, version 12: a claimed workflow task's arguments,
-- planned once per connection.
--
-- pgtq_claim_args() was a SQL function: PostgreSQL planned its three
-- queries (one per pass_result) on every call, ~0.6 ms for each claimed
-- chain step, chord callback or on_finish task (measured: 0.95 ms a call,
-- 0.4 ms as PL/pgSQL, whose plans are kept).  Its lookups are by key (a
-- child's dependencies, a parent's id): sequential scans priced out, as in
-- pgtq_tasks_ended (migration 0011), so that a plan kept from a small table
-- stays an index plan.

-- A claimed task's arguments: its own, after what its parents give it
-- (see pass_result).  Called when the task is claimed, so the parents'
-- results are read in a snapshot taken after its release committed.
CREATE OR REPLACE FUNCTION pgtq_claim_args(task pgtq_tasks) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
DECLARE
    given jsonb := '[]';
BEGIN
    IF task.pass_result = 'previous' THEN
        SELECT jsonb_build_array(p.result) INTO given
        FROM pgtq_dependencies AS d JOIN pgtq_tasks AS p ON p.id = d.parent_id
        WHERE d.child_id = task.id
        ORDER BY d.position
        LIMIT 1;
        -- (No parent row left: the result it would have passed is null.)
        given := coalesce(given, '[null]');
    ELSIF task.pass_result = 'results' THEN
        SELECT jsonb_build_array(
                   coalesce(jsonb_agg(coalesce(p.result, 'null') ORDER BY d.position), '[]'))
        INTO given
        FROM pgtq_dependencies AS d JOIN pgtq_tasks AS p ON p.id = d.parent_id
        WHERE d.child_id = task.id;
    ELSIF task.pass_result = 'summary' THEN
        SELECT jsonb_build_array(jsonb_build_object(
                   'succeeded', count(*) FILTER (WHERE p.state = 'succeeded'),
                   'failed', count(*) FILTER (WHERE p.state = 'failed'),
                   'cancelled', count(*) FILTER (WHERE p.state = 'cancelled'),
                   'results', coalesce(jsonb_agg(coalesce(p.result, 'null') ORDER BY d.position),
                                       '[]')))
        INTO given
        FROM pgtq_dependencies AS d JOIN pgtq_tasks AS p ON p.id = d.parent_id
        WHERE d.child_id = task.id;
    END IF;
    RETURN given || task.args;
END;
$$;
