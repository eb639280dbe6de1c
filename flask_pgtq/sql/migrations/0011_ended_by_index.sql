-- flask_pgtq schema, version 11: dependents found by index, whatever the
-- statistics say.
--
-- pgtq_tasks_ended() runs in every round that records an outcome.  Its
-- statements are planned once per connection and kept (PL/pgSQL caches a
-- generic plan after five runs): planned while pgtq_dependencies was
-- small, they kept reading it whole, and each row against every ended id
-- ("parent_id = ANY(ids)" as a filter), and found a chord's callback by a
-- scan of pgtq_tasks for waiting tasks.  Measured on a 10,000-member chord
-- drained in rounds of 500: the function took 20-30 us per member (a chord
-- drained at 62 % of the plain rate), 3-6 us with index plans.  The
-- function now reads pgtq_dependencies once per call, and plans its
-- statements with sequential scans priced out: every lookup it makes is by
-- an indexed key (a parent id, a task id), so an index scan is the right
-- plan at any table size, and the one a stale plan must not miss.

-- Tasks %ids% just reached their final %states% (in the calling statement,
-- whose changes this function sees), %workflows% their workflow ids.
-- 1. Waiting descendants of a failed or cancelled task are cancelled,
--    transitively, except run_on_failure ones ("dependency <id> failed").
-- 2. Waiting children of every task that ended (including those cancelled
--    in 1) count one parent fewer; at 0 they are queued (NOTIFY pgtq).
-- 3. Workflows count their ended tasks; those reaching 0 are finished.
-- Rows are locked in id order before they are changed (no deadlock between
-- two workers), and every count comes from rows really changed here, after
-- the lock: two statements ending the last two parents of a task at once
-- release it exactly once.  Returns the ids of the workflows finished here.
CREATE OR REPLACE FUNCTION pgtq_tasks_ended(ids bigint[], states text[], workflows bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
-- Index plans at any size (see above); for this function's statements only.
SET enable_seqscan = off
AS $$
DECLARE
    cancelled_ids bigint[] := '{}';
    cancelled_workflows bigint[] := '{}';
    all_ids bigint[];
    all_states text[];
    all_workflows bigint[];
    finished bigint[] := '{}';
    doomed_ids bigint[];
    doomed_roots bigint[];
    doomed_states text[];
    released_queues text[];
    -- The waiting children of the ended tasks, and how many of their
    -- parents ended here (pgtq_dependencies read once).
    child_ids bigint[];
    child_hits bigint[];
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN finished;
    END IF;
    all_ids := ids;
    all_states := states;
    all_workflows := workflows;
    -- 1. Cancel the doomed descendants (none without dependents: the walk
    --    starts from the ended tasks' dependency rows, by index).
    IF EXISTS (SELECT 1 FROM unnest(states) AS s WHERE s <> 'succeeded') THEN
        WITH RECURSIVE doomed(id, root, root_state) AS (
            SELECT d.child_id, e.id, e.state
            FROM unnest(ids, states) AS e(id, state)
            JOIN pgtq_dependencies AS d ON d.parent_id = e.id
            JOIN pgtq_tasks AS c ON c.id = d.child_id
            WHERE e.state <> 'succeeded' AND c.state = 'waiting' AND NOT c.run_on_failure
            UNION
            SELECT d.child_id, doomed.root, doomed.root_state
            FROM doomed
            JOIN pgtq_dependencies AS d ON d.parent_id = doomed.id
            JOIN pgtq_tasks AS c ON c.id = d.child_id
            WHERE c.state = 'waiting' AND NOT c.run_on_failure
        ), first AS (
            SELECT DISTINCT ON (id) id, root, root_state FROM doomed ORDER BY id, root
        )
        SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(root), '{}'),
               coalesce(array_agg(root_state), '{}')
        INTO doomed_ids, doomed_roots, doomed_states
        FROM first;
        PERFORM 1 FROM pgtq_tasks AS t
        WHERE t.id = ANY(doomed_ids) AND t.state = 'waiting'
        ORDER BY t.id FOR UPDATE OF t;
        WITH changed AS (
            UPDATE pgtq_tasks AS t
            SET state = 'cancelled',
                finished_at = now(),
                error = 'dependency ' || x.root || ' ' || x.root_state
            FROM unnest(doomed_ids, doomed_roots, doomed_states) AS x(id, root, root_state)
            WHERE t.id = x.id AND t.state = 'waiting'
            RETURNING t.id, t.workflow_id
        )
        SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(workflow_id), '{}')
        INTO cancelled_ids, cancelled_workflows
        FROM changed;
        IF cardinality(cancelled_ids) > 0 THEN
            PERFORM pg_notify('pgtq_done', CASE WHEN length(f.ids) < 7900 THEN f.ids ELSE '' END)
            FROM (SELECT array_to_string(cancelled_ids, ',') AS ids) AS f;
            all_ids := all_ids || cancelled_ids;
            all_states := all_states || array_fill('cancelled'::text,
                                                   ARRAY[cardinality(cancelled_ids)]);
            all_workflows := all_workflows || cancelled_workflows;
        END IF;
    END IF;
    -- 2. Count the ended parents (the cancelled ones included) off their
    --    waiting children: pgtq_dependencies read once, by parent.
    SELECT coalesce(array_agg(h.child_id ORDER BY h.child_id), '{}'),
           coalesce(array_agg(h.n ORDER BY h.child_id), '{}')
    INTO child_ids, child_hits
    FROM (SELECT d.child_id, count(*) AS n FROM pgtq_dependencies AS d
          WHERE d.parent_id = ANY(all_ids) GROUP BY d.child_id) AS h;
    IF cardinality(child_ids) > 0 THEN
        PERFORM 1 FROM pgtq_tasks AS t
        WHERE t.id = ANY(child_ids) AND t.state = 'waiting'
        ORDER BY t.id FOR UPDATE OF t;
        WITH changed AS (
            UPDATE pgtq_tasks AS t
            SET waiting_for = greatest(t.waiting_for - hits.n, 0),
                state = CASE WHEN t.waiting_for <= hits.n THEN 'queued' ELSE 'waiting' END,
                run_at = CASE WHEN t.waiting_for <= hits.n THEN greatest(t.run_at, now())
                         ELSE t.run_at END
            FROM unnest(child_ids, child_hits) AS hits(id, n)
            WHERE t.id = hits.id AND t.state = 'waiting'
            RETURNING t.queue, t.state
        )
        SELECT array_agg(DISTINCT queue) INTO released_queues
        FROM changed WHERE state = 'queued';
        PERFORM pg_notify('pgtq', q) FROM unnest(released_queues) AS q;
    END IF;
    -- 3. Workflows.
    IF EXISTS (SELECT 1 FROM unnest(all_workflows) AS w WHERE w IS NOT NULL) THEN
        PERFORM 1 FROM pgtq_workflows
        WHERE id = ANY(all_workflows) ORDER BY id FOR UPDATE;
        WITH counts AS (
            SELECT e.workflow AS id, count(*) AS n,
                   count(*) FILTER (WHERE e.state = 'failed') AS failed,
                   count(*) FILTER (WHERE e.state = 'cancelled') AS cancelled
            FROM unnest(all_ids, all_states, all_workflows) AS e(id, state, workflow)
            WHERE e.workflow IS NOT NULL
            GROUP BY e.workflow
        ), changed AS (
            UPDATE pgtq_workflows AS w
            SET pending = greatest(w.pending - c.n, 0),
                failed = w.failed + c.failed,
                cancelled = w.cancelled + c.cancelled,
                finished_at = CASE WHEN w.pending <= c.n THEN now() END
            FROM counts AS c
            WHERE w.id = c.id AND w.finished_at IS NULL
            RETURNING w.id, w.finished_at
        )
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO finished
        FROM changed WHERE finished_at IS NOT NULL;
    END IF;
    RETURN finished;
END;
$$;
