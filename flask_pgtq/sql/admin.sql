-- Inspection and operator actions (flask_pgtq.admin): the CLI, the dashboard
-- and the metrics collector.  Every write is compare-and-set on the task's
-- state, so it never overwrites a transition a worker made meanwhile.

-- name: admin_counts
-- Tasks per queue and state.  "queued" is split into "ready" (run_at passed)
-- and "scheduled" (a delay or a retry's backoff).  Reads the whole table:
-- keep finished rows in check with purge.
SELECT queue,
       CASE WHEN state <> 'queued' THEN state
            WHEN run_at > now() THEN 'scheduled' ELSE 'ready' END AS state,
       count(*) AS count,
       extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state = 'queued' AND run_at <= now()
       )) AS oldest_wait
FROM pgtq_tasks
GROUP BY 1, 2;

-- name: admin_tag_counts
-- Tasks per tag of %(tags)s and state (split like admin_counts).  The
-- overlap test is served by the GIN index pgtq_tasks_tags.
SELECT tag,
       CASE WHEN state <> 'queued' THEN state
            WHEN run_at > now() THEN 'scheduled' ELSE 'ready' END AS state,
       count(*) AS count
FROM pgtq_tasks CROSS JOIN LATERAL unnest(tags) AS tag
WHERE tags && %(tags)s::text[] AND tags <> '{}' AND tag = ANY(%(tags)s::text[])
GROUP BY 1, 2;

-- name: admin_live_workers
-- Workers whose lease has not run out, with what they run now.
SELECT w.id::text AS id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at,
       w.heartbeat_at, w.lease_expires_at, w.stopping_since,
       extract(epoch FROM now() - w.heartbeat_at) AS heartbeat_age,
       w.lease_expires_at >= now() AS alive,
       coalesce(
           (SELECT jsonb_agg(jsonb_build_object(
                       'id', t.id, 'name', t.name, 'queue', t.queue,
                       'attempt', t.attempts, 'started_at', t.started_at,
                       'progress', t.progress)
                   ORDER BY t.id)
            FROM pgtq_tasks AS t
            WHERE t.state = 'running' AND t.locked_by = w.id),
           '[]'::jsonb
       ) AS tasks
FROM pgtq_workers AS w
ORDER BY w.started_at, w.id;

-- name: admin_list_tasks
-- Newest first, filtered; keyset paging on id: "before" gives older pages,
-- "after" newer ones (read oldest first, then reversed by the caller).
-- Arguments and results are left out: they may be large.  The search
-- (%(search_id)s: a task id; %(pattern)s: an ILIKE pattern, its wildcards
-- escaped by the caller) reads each row's arguments as JSON text: it scans
-- until a page is found.  %(states)s restricts to the states a bulk action
-- applies to.  The filter is spelled the same in admin_count_tasks.
SELECT id, name, queue, state, priority, attempts, max_attempts, run_at, created_at,
       started_at, finished_at, cancel_requested_at,
       right(error, 1500) AS error_tail,
       run_at > now() AS scheduled, tags
FROM pgtq_tasks
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s))
  AND (%(due)s::boolean IS NULL OR (run_at <= now()) = %(due)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(name)s::text IS NULL OR name = %(name)s)
  -- Every tag given (served by the GIN index pgtq_tasks_tags, which holds
  -- tagged tasks only; a NULL is folded away when the statement is planned).
  AND (%(tags)s::text[] IS NULL OR (tags @> %(tags)s::text[] AND tags <> '{}'))
  AND (%(search_id)s::bigint IS NULL OR id = %(search_id)s)
  AND (%(pattern)s::text IS NULL OR name ILIKE %(pattern)s OR args::text ILIKE %(pattern)s
       OR kwargs::text ILIKE %(pattern)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
  AND (%(after)s::bigint IS NULL OR id > %(after)s)
ORDER BY CASE WHEN %(after)s::bigint IS NULL THEN -id ELSE id END
LIMIT %(limit)s;

-- name: admin_count_tasks
-- Tasks matching the filters of admin_list_tasks, by state (what a bulk
-- action would touch).  Counts every matching row: with a search, a scan.
SELECT state, count(*) AS count
FROM pgtq_tasks
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(states)s::text[] IS NULL OR state = ANY(%(states)s))
  AND (%(due)s::boolean IS NULL OR (run_at <= now()) = %(due)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(name)s::text IS NULL OR name = %(name)s)
  AND (%(tags)s::text[] IS NULL OR (tags @> %(tags)s::text[] AND tags <> '{}'))
  AND (%(search_id)s::bigint IS NULL OR id = %(search_id)s)
  AND (%(pattern)s::text IS NULL OR name ILIKE %(pattern)s OR args::text ILIKE %(pattern)s
       OR kwargs::text ILIKE %(pattern)s)
GROUP BY state;

-- name: admin_retry_tasks
-- Tasks %(ids)s that failed or were cancelled back to the queue, to run now
-- with a fresh set of attempts; tasks in any other state are left alone.
-- The history is kept, with a "manual_retry" entry.  Listening workers are
-- woken (the insert trigger does not fire for an update).  A retried
-- workflow member reopens its workflow: one task pending again, its failure
-- or cancellation no longer counted (what ended it counted them).
WITH old AS (
    SELECT id, state, workflow_id
    FROM pgtq_tasks
    WHERE id = ANY(%(ids)s) AND state IN ('failed', 'cancelled')
    FOR UPDATE
), retried AS (
    UPDATE pgtq_tasks AS t
    SET state = 'queued',
        run_at = now(),
        attempts = 0,
        started_at = NULL,
        finished_at = NULL,
        result = NULL,
        cancel_requested_at = NULL,
        locked_by = NULL,
        history = t.history || jsonb_build_object(
            'attempt', t.attempts, 'state', 'manual_retry', 'worker', NULL,
            'started_at', NULL, 'finished_at', now(),
            'error', 'retried by an operator after ' || t.state
                     || '; attempts start again from 0')
    FROM old
    WHERE t.id = old.id AND t.state IN ('failed', 'cancelled')
    RETURNING t.id, t.queue, old.state AS was, t.workflow_id
), reopened AS (
    UPDATE pgtq_workflows AS w
    SET pending = w.pending + c.n, failed = w.failed - c.failed,
        cancelled = w.cancelled - c.cancelled, finished_at = NULL
    FROM (SELECT workflow_id, count(*) AS n,
                 count(*) FILTER (WHERE was = 'failed') AS failed,
                 count(*) FILTER (WHERE was = 'cancelled') AS cancelled
          FROM retried WHERE workflow_id IS NOT NULL GROUP BY workflow_id) AS c
    WHERE w.id = c.workflow_id
    RETURNING w.id
), woken AS (
    SELECT pg_notify('pgtq', q.queue) FROM (SELECT DISTINCT queue FROM retried) AS q
)
SELECT (SELECT count(*) FROM woken) AS woken, (SELECT count(*) FROM reopened) AS reopened,
       array(SELECT id FROM retried ORDER BY id) AS ids;

-- name: admin_delete_tasks
-- Tasks %(ids)s that have ended: the row is the truth until then, so a
-- task in any other state is left alone (and not returned).
DELETE FROM pgtq_tasks
WHERE id = ANY(%(ids)s) AND state IN ('succeeded', 'failed', 'cancelled')
RETURNING id;

-- name: admin_count_purgeable
-- What prune_tasks would delete (flask pgtq purge --dry-run).
SELECT count(*)
FROM pgtq_tasks AS t
WHERE t.state = ANY(%(states)s)
  AND t.state IN ('succeeded', 'failed', 'cancelled')
  AND t.finished_at < now() - %(older_than)s * interval '1 second'
  AND (%(queue)s::text IS NULL OR t.queue = %(queue)s)
  AND NOT EXISTS (
      SELECT 1 FROM pgtq_dependencies AS d JOIN pgtq_tasks AS c ON c.id = d.child_id
      WHERE d.parent_id = t.id AND c.state IN ('waiting', 'queued', 'running'))
  AND (t.workflow_id IS NULL OR EXISTS (
      SELECT 1 FROM pgtq_workflows AS w
      WHERE w.id = t.workflow_id AND w.finished_at IS NOT NULL));

-- name: admin_throughput
-- Tasks that ended in each of the last %(minutes)s minutes, by final state.
WITH buckets AS (
    SELECT generate_series(
        date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute',
        date_trunc('minute', now()),
        interval '1 minute'
    ) AS minute
), ended AS (
    SELECT date_trunc('minute', finished_at) AS minute, state
    FROM pgtq_tasks
    WHERE state IN ('succeeded', 'failed', 'cancelled')
      AND finished_at >= date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute'
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
)
SELECT b.minute,
       count(e.state) FILTER (WHERE e.state = 'succeeded') AS succeeded,
       count(e.state) FILTER (WHERE e.state = 'failed') AS failed,
       count(e.state) FILTER (WHERE e.state = 'cancelled') AS cancelled
FROM buckets AS b
LEFT JOIN ended AS e ON e.minute = b.minute
GROUP BY b.minute
ORDER BY b.minute;

-- name: admin_handler_stats
-- Per task name, the tasks that ended in the last %(seconds)s seconds: how
-- many succeeded, failed (for good) and were cancelled, and the 50th, 95th
-- and 99th percentiles of the run time (finished_at - started_at, the last
-- attempt) of those that ran to an outcome.  Reads pgtq_tasks_finished.
SELECT name,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM finished_at - started_at)
       ) FILTER (WHERE state IN ('succeeded', 'failed') AND started_at IS NOT NULL) AS durations
FROM pgtq_tasks
WHERE state IN ('succeeded', 'failed', 'cancelled')
  AND finished_at >= now() - %(seconds)s * interval '1 second'
GROUP BY name
ORDER BY name;
