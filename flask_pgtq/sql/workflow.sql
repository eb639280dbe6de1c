-- Workflows (chain, group, chord) and plain dependencies (after=).  Loaded
-- by flask_pgtq.queries; the release of dependents is pgtq_tasks_ended()
-- (migration 0006), called by every statement that ends a task.

-- name: push_workflow
-- Any number of tasks and their dependencies in one statement, so a
-- rolled-back transaction leaves no task and no workflow.
--
-- %(tasks)s: a JSON array, one object per task in order (queue, name, args,
-- kwargs, priority, max_attempts, delay, run_at, pass_result, tags,
-- run_on_failure); a task is referred to by its index in it.
-- %(edges)s: [[child index, position, parent index], ...] inside the push;
-- %(after)s: [[child index, position, parent task id], ...] on tasks that
-- exist.  Those parents are locked (FOR SHARE): one ending now waits for
-- this push to commit, then finds its new dependents; one that ended is
-- seen ended here.  A missing parent, or a failed or cancelled one (unless
-- the child runs on failure), is a problem: nothing is stored, and the
-- problems come back.
-- %(kind)s: the workflow's kind, or NULL for no workflow row (after= alone);
-- %(outputs)s: indexes of the tasks whose results are its result.
WITH spec AS (
    SELECT item.n::int - 1 AS n, item.t
    FROM jsonb_array_elements(%(tasks)s::jsonb) WITH ORDINALITY AS item(t, n)
), ids AS (
    SELECT n, nextval(pg_get_serial_sequence('pgtq_tasks', 'id')) AS id
    FROM generate_series(0, (SELECT count(*) FROM spec)::int - 1) AS n
), internal AS (
    SELECT (e ->> 0)::int AS child, (e ->> 1)::int AS position, (e ->> 2)::int AS parent
    FROM jsonb_array_elements(%(edges)s::jsonb) AS e
), external AS (
    SELECT (e ->> 0)::int AS child, (e ->> 1)::int AS position, (e ->> 2)::bigint AS parent_id
    FROM jsonb_array_elements(%(after)s::jsonb) AS e
), parents AS (
    SELECT p.id, p.state
    FROM pgtq_tasks AS p
    WHERE p.id IN (SELECT parent_id FROM external)
    ORDER BY p.id
    FOR SHARE
), problem AS (
    SELECT DISTINCT x.parent_id AS id, coalesce(p.state, 'missing') AS state
    FROM external AS x
    JOIN spec AS s ON s.n = x.child
    LEFT JOIN parents AS p ON p.id = x.parent_id
    WHERE p.id IS NULL
       OR (p.state IN ('failed', 'cancelled') AND NOT (s.t ->> 'run_on_failure')::boolean)
), ok AS (
    SELECT NOT EXISTS (SELECT 1 FROM problem) AS ok
), waits AS (
    SELECT child, count(*) AS n
    FROM (SELECT child FROM internal
          UNION ALL
          SELECT x.child FROM external AS x JOIN parents AS p ON p.id = x.parent_id
          WHERE p.state IN ('waiting', 'queued', 'running')) AS w
    GROUP BY child
), workflow AS (
    INSERT INTO pgtq_workflows (kind, total, pending, outputs, single)
    SELECT %(kind)s, c.n, c.n,
           array(SELECT ids.id
                 FROM unnest(%(outputs)s::int[]) WITH ORDINALITY AS o(n, k)
                 JOIN ids ON ids.n = o.n ORDER BY o.k),
           %(single)s
    FROM (SELECT count(*) AS n FROM spec) AS c
    WHERE %(kind)s::text IS NOT NULL AND (SELECT ok FROM ok)
    RETURNING id
), inserted AS (
    INSERT INTO pgtq_tasks (id, queue, name, args, kwargs, priority, max_attempts, run_at,
                            state, workflow_id, waiting_for, run_on_failure, pass_result,
                            tags, limited)
    SELECT ids.id, s.t ->> 'queue', s.t ->> 'name', s.t -> 'args', s.t -> 'kwargs',
           (s.t ->> 'priority')::int, (s.t ->> 'max_attempts')::int,
           coalesce((s.t ->> 'run_at')::timestamptz,
                    now() + (s.t ->> 'delay')::float8 * interval '1 second'),
           CASE WHEN coalesce(w.n, 0) > 0 THEN 'waiting' ELSE 'queued' END,
           (SELECT id FROM workflow), coalesce(w.n, 0),
           (s.t ->> 'run_on_failure')::boolean, s.t ->> 'pass_result',
           array(SELECT jsonb_array_elements_text(s.t -> 'tags')),
           coalesce((s.t ->> 'limited')::boolean, false)
    FROM spec AS s
    JOIN ids ON ids.n = s.n
    LEFT JOIN waits AS w ON w.child = s.n
    WHERE (SELECT ok FROM ok)
    ORDER BY s.n
    RETURNING id, state, run_at, queue
), deps AS (
    INSERT INTO pgtq_dependencies (child_id, position, parent_id)
    SELECT c.id, i.position, p.id
    FROM internal AS i JOIN ids AS c ON c.n = i.child JOIN ids AS p ON p.n = i.parent
    WHERE (SELECT ok FROM ok)
    UNION ALL
    SELECT c.id, x.position, x.parent_id
    FROM external AS x JOIN ids AS c ON c.n = x.child
    WHERE (SELECT ok FROM ok)
)
SELECT (SELECT ok FROM ok) AS ok,
       (SELECT id FROM workflow) AS workflow_id,
       array(SELECT id FROM inserted ORDER BY id) AS ids,
       array(SELECT state FROM inserted ORDER BY id) AS states,
       array(SELECT run_at FROM inserted ORDER BY id) AS run_ats,
       now() AS created_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'state', state) ORDER BY id), '[]')
        FROM problem) AS problems,
       -- Queued tasks wake listening workers: NOTIFY pgtq, once per queue.
       (SELECT count(pg_notify('pgtq', q.queue))
        FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'queued') AS q) AS notified;

-- name: get_workflow
SELECT * FROM pgtq_workflows WHERE id = %(id)s;

-- name: workflow_tasks
-- In the order they were pushed (ids are drawn in that order).
SELECT * FROM pgtq_tasks WHERE workflow_id = %(id)s ORDER BY id;

-- name: list_workflows
-- Newest first, with how many tasks are in each state.
SELECT w.*,
       (SELECT jsonb_object_agg(s.state, s.n)
        FROM (SELECT state, count(*) AS n FROM pgtq_tasks
              WHERE workflow_id = w.id GROUP BY state) AS s) AS counts
FROM pgtq_workflows AS w
WHERE (%(state)s::text IS NULL
       OR (%(state)s = 'running') = (w.finished_at IS NULL))
ORDER BY w.id DESC
LIMIT %(limit)s;

-- name: parent_results
-- The results of a task's parents, in order.
SELECT p.id, p.state, p.result
FROM pgtq_dependencies AS d JOIN pgtq_tasks AS p ON p.id = d.parent_id
WHERE d.child_id = %(id)s
ORDER BY d.position;

-- name: task_relatives
-- A task's parents (kind 'parent', by position) and dependents (kind
-- 'child', by id), as summaries.
SELECT 'parent' AS kind, d.position, p.id, p.name, p.queue, p.state
FROM pgtq_dependencies AS d JOIN pgtq_tasks AS p ON p.id = d.parent_id
WHERE d.child_id = %(id)s
UNION ALL
SELECT 'child', d.position, c.id, c.name, c.queue, c.state
FROM pgtq_dependencies AS d JOIN pgtq_tasks AS c ON c.id = d.child_id
WHERE d.parent_id = %(id)s
ORDER BY 1 DESC, 2, 3;

-- name: workflow_edges
-- Every dependency inside a workflow (for drawing it).
SELECT d.child_id, d.parent_id, d.position
FROM pgtq_dependencies AS d JOIN pgtq_tasks AS c ON c.id = d.child_id
WHERE c.workflow_id = %(id)s
ORDER BY d.child_id, d.position;
