-- Flow control: unique tasks, per-handler concurrency and rate limits,
-- periodic tasks, cancellation.  Loaded by flask_pgtq.queries.

-- name: push_unique_task
-- Insert unless a task holds the key: a queued or running one, or a
-- finished one whose unique_until lies ahead.  Returns the new task
-- (is_new) or the holder.  A concurrent pusher of the same key waits on the
-- unique index; when it finds nothing (the holder committed after this
-- statement's snapshot) the caller asks again.
--
-- With %(replace)s (on_conflict="replace", debounce), a queued holder gets
-- this push's arguments, priority, attempts and run time instead:
-- concurrent pushers of one key update it one after the other under its row
-- lock, the last push wins.  A running holder, or a finished one within
-- unique_for, is returned untouched.
WITH replaced AS (
    UPDATE pgtq_tasks
    SET args = %(args)s::jsonb, kwargs = %(kwargs)s::jsonb, priority = %(priority)s,
        max_attempts = greatest(%(max_attempts)s, attempts + 1),
        run_at = coalesce(%(run_at)s, now() + %(delay)s * interval '1 second'),
        unique_until = now() + %(unique_for)s::float8 * interval '1 second',
        tags = %(tags)s::text[]
    WHERE %(replace)s AND unique_key = %(unique_key)s AND state = 'queued'
    RETURNING *
), holder AS (
    SELECT *
    FROM pgtq_tasks
    WHERE unique_key = %(unique_key)s
      AND (state IN ('queued', 'running') OR unique_until > now())
      AND NOT EXISTS (SELECT 1 FROM replaced)
    ORDER BY id DESC
    LIMIT 1
), inserted AS (
    INSERT INTO pgtq_tasks
        (queue, name, args, kwargs, priority, max_attempts, run_at, unique_key, unique_until,
         key, tags, limited)
    SELECT %(queue)s, %(name)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(priority)s,
           %(max_attempts)s, coalesce(%(run_at)s, now() + %(delay)s * interval '1 second'),
           %(unique_key)s, now() + %(unique_for)s::float8 * interval '1 second', %(key)s,
           %(tags)s::text[], %(limited)s
    WHERE NOT EXISTS (SELECT 1 FROM replaced) AND NOT EXISTS (SELECT 1 FROM holder)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING *
)
-- (A new task wakes listening workers: NOTIFY pgtq, the queue.)
SELECT true AS is_new, inserted.*
FROM inserted, LATERAL (SELECT pg_notify('pgtq', inserted.queue)) AS notified
UNION ALL
SELECT false AS is_new, * FROM replaced
UNION ALL
SELECT false AS is_new, * FROM holder;

-- name: find_unique_task
SELECT false AS is_new, *
FROM pgtq_tasks
WHERE unique_key = %(unique_key)s
  AND (state IN ('queued', 'running') OR unique_until > now())
ORDER BY id DESC
LIMIT 1;

-- name: lock_limit
-- Serialise claims of one limited handler across all workers, until commit.
-- Sent with claim_limited_tasks after it, in one message on an autocommit
-- connection: one implicit transaction, one round trip (it was three:
-- BEGIN and this, the claim, COMMIT).
-- (No JIT: the claim's estimates grow with the table, and compiling it
-- would cost more than running it.  No sequential or bitmap scan: its
-- reads are by index, in the claim's order, as the worker's round
-- (queue.BY_INDEX).)
SET LOCAL jit = off;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
INSERT INTO pgtq_limits (name) VALUES (%(name)s)
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name;

-- name: claim_limited_tasks
-- Run under lock_limit, so this statement's snapshot sees every earlier
-- claim of the handler: at most %(concurrency)s running and %(rate)s
-- starts per %(period)s seconds, everywhere.
--
-- Only tasks marked "limited" (at push, or by sync_limited): the others
-- are the plain claim's.
--
-- Per key (%(key_concurrency)s running, %(key_rate)s starts per
-- %(key_period)s seconds): each key gives only what its limits leave,
-- ranked within the key, and tasks are taken by rank first, so claims go
-- round-robin over the keys with ready tasks: a key with 10,000 queued
-- tasks delays another key's single task by one round at most.  The
-- candidates come from the front of the handler's ready tasks when it
-- holds heads enough (front, settled), else from a walk over every key
-- (heads: one index probe per key, not 10,000 rows for a flooded one).  A
-- task without a key is not limited by key.
WITH RECURSIVE lim AS (
    SELECT coalesce(array_agg(s ORDER BY s), '{}') AS recent
    FROM pgtq_limits, unnest(recent) AS s
    WHERE name = %(name)s
      AND %(period)s::float8 IS NOT NULL
      AND s > now() - %(period)s::float8 * interval '1 second'
), room AS (
    SELECT greatest(least(
        %(limit)s::int,
        coalesce(%(concurrency)s::int - (
            SELECT count(*) FROM pgtq_tasks WHERE state = 'running' AND name = %(name)s
        ), %(limit)s::int),
        coalesce(%(rate)s::int - (SELECT cardinality(recent) FROM lim), %(limit)s::int)
    ), 0) AS n
), paused AS (
    -- Nothing of a paused queue or handler (see finish_and_claim).
    SELECT EXISTS (
        SELECT 1 FROM pgtq_pauses AS p
        WHERE ((p.kind = 'queue' AND p.target = %(queue)s)
               OR (p.kind = 'handler' AND p.target = %(name)s))
          AND (p.until IS NULL OR p.until > now())
    ) AS yes
), running AS (
    -- The handler's running tasks per key, counted once (there are at most
    -- as many as the workers hold), as one map: read per key below without
    -- a join, whose plan would go by the statistics of a table that
    -- changes all the time.
    SELECT coalesce(jsonb_object_agg(c.key, c.n), '{}') AS per_key
    FROM (
        SELECT t.key, count(*) AS n
        FROM pgtq_tasks AS t
        WHERE t.state = 'running' AND t.name = %(name)s AND t.key IS NOT NULL
          AND %(key_concurrency)s::int IS NOT NULL
        GROUP BY t.key
    ) AS c
), front AS (
    -- The handler's first ready keyed tasks, best first, as many as
    -- %(scan)s (pgtq_tasks_limited_ready), ranked within their key: the first
    -- task of a key met in this order is its head, so these hold the best
    -- heads there are.
    SELECT t.key, t.id, t.priority, t.run_at,
           row_number() OVER (PARTITION BY t.key ORDER BY t.priority DESC, t.run_at, t.id) AS rank
    FROM (
        SELECT t.key, t.id, t.priority, t.run_at
        FROM pgtq_tasks AS t
        WHERE %(by_key)s AND NOT (SELECT yes FROM paused)
          AND t.state = 'queued' AND t.limited AND t.key IS NOT NULL
          AND t.name = %(name)s AND t.queue = %(queue)s AND t.run_at <= now()
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT %(scan)s
    ) AS t
), front_allowed AS (
    -- Those within what their key's running tasks and recent starts leave.
    SELECT f.id, f.priority, f.run_at, f.rank
    FROM front AS f
    WHERE f.rank <= coalesce(%(key_concurrency)s::int
                             - coalesce(((SELECT per_key FROM running) ->> f.key)::int, 0),
                             f.rank)
      AND (%(key_rate)s::int IS NULL
           OR (f.rank <= %(key_rate)s::int
               AND f.rank <= %(key_rate)s::int - (
                   SELECT count(*) FROM pgtq_tasks AS t
                   WHERE t.name = %(name)s AND t.key = f.key
                     AND t.started_at > now() - %(key_period)s::float8 * interval '1 second')))
), settled AS (
    -- The front decides alone when it holds every ready keyed task, or
    -- heads enough for the room (tasks go by rank first: the heads met
    -- later would not be taken).  Else the walk below looks at every key.
    SELECT (SELECT count(*) FROM front) < %(scan)s
           OR (SELECT count(*) FROM front_allowed WHERE rank = 1) >= (SELECT n FROM room) AS yes
), heads AS (
    -- Unless settled: the first ready task of each key with queued tasks, by a walk down
    -- pgtq_tasks_key_ready (a "loose index scan"): one probe per key, none
    -- per task.  (Ordered as that index is: the key alone would also match
    -- pgtq_tasks_key_starts, which holds finished tasks too.)
    (SELECT t.key, t.id, t.priority, t.run_at
     FROM pgtq_tasks AS t
     WHERE %(by_key)s AND NOT (SELECT yes FROM paused) AND NOT (SELECT yes FROM settled)
       AND t.state = 'queued' AND t.limited AND t.key IS NOT NULL
       AND t.name = %(name)s AND t.queue = %(queue)s AND t.run_at <= now()
     ORDER BY t.key, t.priority DESC, t.run_at, t.id
     LIMIT 1)
    UNION ALL
    SELECT n.key, n.id, n.priority, n.run_at
    FROM heads AS k
    CROSS JOIN LATERAL (
        SELECT t.key, t.id, t.priority, t.run_at
        FROM pgtq_tasks AS t
        WHERE t.state = 'queued' AND t.limited AND t.key IS NOT NULL
          AND t.name = %(name)s AND t.queue = %(queue)s AND t.run_at <= now()
          AND t.key > k.key
        ORDER BY t.key, t.priority DESC, t.run_at, t.id
        LIMIT 1
    ) AS n
), roomy AS (
    -- What each key's running tasks and recent starts leave it (an index
    -- lookup per key for a rate: idle keys cost nothing).
    SELECT h.*, greatest(least(
        coalesce(%(key_concurrency)s::int
                 - coalesce(((SELECT per_key FROM running) ->> h.key)::int, 0), %(limit)s::int),
        CASE WHEN %(key_rate)s::int IS NULL THEN %(limit)s::int
             ELSE %(key_rate)s::int - (
                SELECT count(*) FROM pgtq_tasks AS t
                WHERE t.name = %(name)s AND t.key = h.key
                  AND t.started_at > now() - %(key_period)s::float8 * interval '1 second')
        END
    ), 0) AS room
    FROM heads AS h
), keyed AS (
    -- What the front allows, or (from the walk) each key's head, then
    -- (where its limits leave room for more) the tasks behind it, ranked
    -- within the key.
    SELECT f.id, f.priority, f.run_at, f.rank
    FROM front_allowed AS f
    WHERE (SELECT yes FROM settled)
    UNION ALL
    SELECT h.id, h.priority, h.run_at, 1::bigint AS rank
    FROM roomy AS h
    WHERE h.room >= 1
    UNION ALL
    SELECT m.id, m.priority, m.run_at,
           1 + row_number() OVER (PARTITION BY h.key ORDER BY m.priority DESC, m.run_at, m.id)
    FROM roomy AS h
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.run_at
        FROM pgtq_tasks AS t
        WHERE t.state = 'queued' AND t.limited AND t.key IS NOT NULL
          AND t.name = %(name)s AND t.queue = %(queue)s AND t.key = h.key
          AND t.run_at <= now()
        ORDER BY t.priority DESC, t.run_at, t.id
        OFFSET 1 LIMIT h.room - 1
    ) AS m
    WHERE h.room >= 2
), unkeyed AS (
    -- Tasks not limited by key, best first (pgtq_tasks_limited_ready); those of a
    -- handler limited per key only are the plain claim's (%(unkeyed)s
    -- false), so a key-only claim never scans the queue.
    SELECT t.id, t.priority, t.run_at,
           row_number() OVER (ORDER BY t.priority DESC, t.run_at, t.id) AS rank
    FROM (
        SELECT t.id, t.priority, t.run_at
        FROM pgtq_tasks AS t
        WHERE t.state = 'queued' AND t.limited AND t.name = %(name)s AND t.queue = %(queue)s
          AND t.run_at <= now() AND (t.key IS NULL OR NOT %(by_key)s) AND %(unkeyed)s
          AND NOT (SELECT yes FROM paused)
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT (SELECT n FROM room)
    ) AS t
), allowed AS (
    SELECT id FROM (
        SELECT * FROM keyed UNION ALL SELECT * FROM unkeyed
    ) AS c
    ORDER BY c.rank, c.priority DESC, c.run_at, c.id
    LIMIT (SELECT n FROM room)
), picked AS (
    SELECT t.id
    FROM pgtq_tasks AS t
    WHERE t.id IN (SELECT id FROM allowed) AND t.state = 'queued'
    FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE pgtq_tasks AS t
    SET state = 'running',
        attempts = t.attempts + 1,
        locked_by = %(owner)s,
        started_at = now(),
        finished_at = NULL
    FROM picked
    WHERE t.id = picked.id
    -- The columns of finish_and_claim's claimed rows (what a run needs,
    -- arguments as text, with what the task's parents give it first).
    RETURNING t.id, t.name,
              (CASE WHEN t.pass_result IS NULL THEN t.args ELSE pgtq_claim_args(t) END)::text
                  AS args, t.kwargs::text AS kwargs, t.priority,
              t.attempts, t.max_attempts, t.run_at, t.created_at, t.cancel_requested_at,
              t.workflow_id, t.snoozes, t.meta, t.tags, t.key, t.started_at
), noted AS (
    UPDATE pgtq_limits
    SET recent = (SELECT recent FROM lim)
                 || array_fill(now(), ARRAY[(SELECT count(*) FROM claimed)::int])
    WHERE name = %(name)s AND %(rate)s::int IS NOT NULL
)
SELECT * FROM claimed;

-- name: fire_periodic
-- One task per (schedule, fire time), however many workers try: the task's
-- id is drawn first and recorded with the fire time; only the worker whose
-- row went in inserts the task.
WITH fired AS (
    INSERT INTO pgtq_periodic (schedule, fire_at, task_id)
    VALUES (%(schedule)s, %(fire_at)s, nextval(pg_get_serial_sequence('pgtq_tasks', 'id')))
    ON CONFLICT DO NOTHING
    RETURNING task_id
), task AS (
    INSERT INTO pgtq_tasks (id, queue, name, args, kwargs, priority, max_attempts, tags, limited)
    SELECT fired.task_id, %(queue)s, %(name)s, %(args)s::jsonb, %(kwargs)s::jsonb,
           %(priority)s, %(max_attempts)s, %(tags)s::text[], %(limited)s
    FROM fired
    RETURNING id
), pruned AS (
    -- Workers never fire times older than the misfire grace (at most a
    -- day), so older rows can go.
    DELETE FROM pgtq_periodic
    WHERE schedule = %(schedule)s AND fire_at < %(fire_at)s - interval '2 days'
      AND EXISTS (SELECT 1 FROM fired)
)
SELECT id, pg_notify('pgtq', %(queue)s) AS notified FROM task;

-- name: cancel_task
-- Task %(id)s, the tasks %(ids)s, or every task of workflow %(workflow_id)s:
-- a queued or waiting task is cancelled at once (%(reason)s is its error); a
-- running one gets a cancel request, which its worker acts on (told by NOTIFY on
-- pgtq_cancel and by its heartbeat).  One UPDATE, on rows locked in id
-- order: a task that changes state meanwhile is re-read under its row lock,
-- so the right branch applies (or none, and no row comes back: the task had
-- ended).  Waiters of a cancelled task are woken (pgtq_done); its
-- dependents are cancelled or released (pgtq_tasks_ended, migration 0006).
WITH locked AS (
    SELECT id
    FROM pgtq_tasks
    WHERE (id = %(id)s OR id = ANY(%(ids)s::bigint[]) OR workflow_id = %(workflow_id)s)
      AND state IN ('waiting', 'queued', 'running')
    ORDER BY id
    FOR UPDATE
), changed AS (
    UPDATE pgtq_tasks AS t
    SET state = CASE WHEN t.state IN ('queued', 'waiting') THEN 'cancelled' ELSE t.state END,
        finished_at = CASE WHEN t.state IN ('queued', 'waiting') THEN now()
                      ELSE t.finished_at END,
        error = CASE WHEN t.state IN ('queued', 'waiting') THEN %(reason)s ELSE t.error END,
        cancel_requested_at = coalesce(t.cancel_requested_at, now())
    FROM locked
    WHERE t.id = locked.id AND t.state IN ('waiting', 'queued', 'running')
    RETURNING t.*
), ended AS (
    SELECT pgtq_tasks_ended(array_agg(id), array_agg(state), array_agg(workflow_id)) AS finished
    FROM changed WHERE state = 'cancelled'
), told AS (
    SELECT pg_notify('pgtq_cancel', id::text) FROM changed WHERE state = 'running'
), woken AS (
    SELECT pg_notify('pgtq_done', CASE WHEN length(f.ids) < 7900 THEN f.ids ELSE '' END)
    FROM (SELECT string_agg(id::text, ',') AS ids FROM changed WHERE state = 'cancelled') AS f
    WHERE f.ids IS NOT NULL
)
SELECT changed.*, (SELECT count(*) FROM told) + (SELECT count(*) FROM woken) AS notified,
       (SELECT finished FROM ended) AS workflows_finished
FROM changed
ORDER BY changed.id;

-- name: owned_running_tasks
-- The running tasks this owner holds, as the database sees them (a worker
-- releases those it does not know of: claimed by a statement whose commit
-- went through although its reply was an error).
SELECT id FROM pgtq_tasks
WHERE locked_by = %(owner)s AND state = 'running';

-- name: cancel_requests
-- Which of this owner's running tasks were asked to stop.
SELECT id FROM pgtq_tasks
WHERE locked_by = %(owner)s AND state = 'running' AND cancel_requested_at IS NOT NULL;

-- name: make_scheduled_due
-- Testing aid (q.drain(now=True)): the queued tasks of these queues that
-- wait for a later time (a push's delay or eta, a retry's backoff) are due
-- now.  Returns nothing; the row count says how many.
UPDATE pgtq_tasks
SET run_at = now()
WHERE state = 'queued' AND queue = ANY(%(queues)s) AND run_at > now();

-- name: mark_worker_stopping
-- A worker got a stop request: it claims nothing more and lets its running
-- tasks finish.  Shown by flask pgtq workers and the dashboard.
UPDATE pgtq_workers
SET stopping_since = coalesce(stopping_since, now())
WHERE id = %(owner)s;

-- name: sync_limited
-- Correct the "limited" mark of up to %(batch)s queued tasks of %(queues)s
-- each way after limits changed (a deploy; tasks pushed by an app that
-- does not know the handler): marked when this worker's handlers say so
-- (%(limited)s: every task of the handler; %(key_only)s: its tasks with a
-- key), unmarked otherwise, tasks of handlers it does not know included
-- (the plain claim takes those, as it takes any task).
WITH marked AS (
    UPDATE pgtq_tasks SET limited = true
    WHERE id IN (
        SELECT id FROM pgtq_tasks
        WHERE state = 'queued' AND NOT limited AND queue = ANY(%(queues)s)
          -- (No scan at all for a worker without limited handlers.)
          AND cardinality(%(limited)s::text[]) + cardinality(%(key_only)s::text[]) > 0
          AND (name = ANY(%(limited)s::text[])
               OR (key IS NOT NULL AND name = ANY(%(key_only)s::text[])))
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
    ) AND state = 'queued'
    RETURNING 1
), unmarked AS (
    UPDATE pgtq_tasks SET limited = false
    WHERE id IN (
        SELECT id FROM pgtq_tasks
        WHERE state = 'queued' AND limited AND queue = ANY(%(queues)s)
          AND NOT (name = ANY(%(limited)s::text[])
                   OR (key IS NOT NULL AND name = ANY(%(key_only)s::text[])))
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
    ) AND state = 'queued'
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS marked, (SELECT count(*) FROM unmarked) AS unmarked;
