-- Every statement flask_pgtq runs, by name.  Loaded by flask_pgtq.queries.

-- name: version_table_exists
SELECT to_regclass('pgtq_schema_version') IS NOT NULL;

-- name: migration_lock
-- Key: the bytes of "pgtq" as an integer.  Released at commit or rollback.
SELECT pg_advisory_xact_lock(1885828209);

-- name: create_version_table
CREATE TABLE IF NOT EXISTS pgtq_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_versions
SELECT version FROM pgtq_schema_version;

-- name: record_version
INSERT INTO pgtq_schema_version (version, name) VALUES (%(version)s, %(name)s);

-- name: push_task
-- Listening workers are woken by a NOTIFY on pgtq whose payload is the
-- queue, sent at commit (as by every statement that queues tasks).
WITH inserted AS (
    INSERT INTO pgtq_tasks (queue, name, args, kwargs, priority, max_attempts, run_at, key,
                            meta, tags, limited)
    VALUES (
        %(queue)s, %(name)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(priority)s,
        %(max_attempts)s, coalesce(%(run_at)s, now() + %(delay)s * interval '1 second'),
        %(key)s, %(meta)s::jsonb, %(tags)s::text[], %(limited)s
    )
    -- Only what the database decides (a new task is always queued, attempt 0).
    RETURNING id, run_at, created_at
)
SELECT id, run_at, created_at, pg_notify('pgtq', %(queue)s) AS notified FROM inserted;

-- name: get_task
SELECT * FROM pgtq_tasks WHERE id = %(id)s;

-- name: finish_and_claim
-- The worker's one statement per round: record finished attempts and claim
-- new tasks (highest priority first, then oldest), both committed before
-- any handler runs.
--
-- Outcomes are fenced on (id, attempt, owner, running): an owner that lost
-- its lease updates nothing.  They come as one JSON array:
-- [{"id", "attempt", "state", "result" (JSON text), "error", "delay"}].
-- Waiters (Task.wait) are woken by one NOTIFY on pgtq_done listing the ids
-- that reached a final state (an empty payload when the list is too long).
-- Their waiting dependents are released or cancelled, and their workflows
-- counted, by pgtq_tasks_ended() in this statement (migration 0006).
--
-- A round that only claims commits asynchronously (%(durable)s false): a
-- claim lost in a server crash leaves the task queued, so it runs again,
-- which at-least-once delivery allows.  Outcomes are always durable.
WITH durability AS (
    SELECT set_config('synchronous_commit', CASE WHEN %(durable)s THEN 'on' ELSE 'off' END,
                      true) AS setting
), outcome AS (
    SELECT *
    FROM jsonb_to_recordset(%(outcomes)s::jsonb)
        AS o(id bigint, attempt integer, state text, result text, error text, delay float8,
             snooze boolean, meta text)
), done AS (
    UPDATE pgtq_tasks AS t
    SET state = o.state,
        result = o.result::jsonb,
        -- A snooze is not a failure: the last failure's error stays.
        error = CASE WHEN o.snooze THEN t.error ELSE o.error END,
        history = CASE WHEN o.state = 'succeeded' THEN t.history
                  ELSE t.history || jsonb_build_object(
                      'attempt', t.attempts,
                      'state', CASE WHEN o.snooze THEN 'snoozed' ELSE o.state END,
                      'worker', t.locked_by,
                      'started_at', t.started_at, 'finished_at', now(), 'error', o.error)
                  END,
        -- A snoozed run gives its attempt back.
        attempts = CASE WHEN o.snooze THEN t.attempts - 1 ELSE t.attempts END,
        snoozes = t.snoozes + CASE WHEN o.snooze THEN 1 ELSE 0 END,
        -- What a run stored with the task (the tracing layer's span).
        meta = coalesce(o.meta::jsonb, t.meta),
        locked_by = NULL,
        run_at = CASE WHEN o.state = 'queued'
                      THEN now() + o.delay * interval '1 second' ELSE t.run_at END,
        finished_at = CASE WHEN o.state = 'queued' THEN NULL ELSE now() END
    FROM outcome AS o
    WHERE t.id = o.id
      AND t.attempts = o.attempt
      AND t.locked_by = %(owner)s
      AND t.state = 'running'
    RETURNING t.id, t.state, t.workflow_id
), ended AS (
    SELECT pgtq_tasks_ended(array_agg(id), array_agg(state), array_agg(workflow_id)) AS finished
    FROM done WHERE state <> 'queued'
), woken AS (
    SELECT pg_notify('pgtq_done', CASE WHEN length(f.ids) < 7900 THEN f.ids ELSE '' END)
    FROM (SELECT string_agg(id::text, ',') AS ids FROM done WHERE state <> 'queued') AS f
    WHERE f.ids IS NOT NULL
), paused AS (
    -- Pauses in force (a tiny table, read once per statement): a paused
    -- queue gives nothing, a paused handler's tasks are skipped.  The
    -- claim reads them itself, so a pause holds from its commit on,
    -- whatever a worker was told.
    SELECT EXISTS (
               SELECT 1 FROM pgtq_pauses
               WHERE kind = 'queue' AND target = %(queue)s
                 AND (until IS NULL OR until > now())
           ) AS queue_paused,
           ARRAY(
               SELECT target FROM pgtq_pauses
               WHERE kind = 'handler' AND (until IS NULL OR until > now())
           ) AS handlers
), picked_now AS (
    -- The snapshot predates "done": a task finished (or retried) in this
    -- statement still looks running here and is not claimed again.
    SELECT id
    FROM pgtq_tasks
    WHERE state = 'queued' AND queue = %(queue)s AND run_at <= now() AND NOT limited
      -- Handlers with concurrency or rate limits are claimed by
      -- claim_limited_tasks instead, except the tasks without a key of a
      -- handler limited per key only (nothing limits those).  Their tasks
      -- are marked "limited" (and out of this index) when pushed; the
      -- names also hold for tasks pushed before a limit was set.
      AND (name <> ALL(%(limited)s::text[])
           OR (key IS NULL AND name = ANY(%(key_only)s::text[])))
      AND NOT (SELECT queue_paused FROM paused)
      AND name <> ALL((SELECT handlers FROM paused)::text[])
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked_ahead AS (
    -- Prefetched tasks wait in the worker for a free thread: if the worker
    -- dies meanwhile they lose an attempt without running, so only tasks
    -- with an attempt to spare are prefetched.
    SELECT id
    FROM pgtq_tasks
    WHERE state = 'queued' AND queue = %(queue)s AND run_at <= now() AND NOT limited
      AND (name <> ALL(%(limited)s::text[])
           OR (key IS NULL AND name = ANY(%(key_only)s::text[])))
      AND NOT (SELECT queue_paused FROM paused)
      AND name <> ALL((SELECT handlers FROM paused)::text[])
      AND max_attempts - attempts >= 2
      AND id NOT IN (SELECT id FROM picked_now)
    ORDER BY priority DESC, run_at, id
    LIMIT %(prefetch)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM picked_now UNION ALL SELECT id FROM picked_ahead
), claimed AS (
    UPDATE pgtq_tasks AS t
    SET state = 'running',
        attempts = t.attempts + 1,
        locked_by = %(owner)s,
        started_at = now(),
        finished_at = NULL
    FROM picked
    WHERE t.id = picked.id
    -- What a run needs and the worker does not know already (the queue, the
    -- owner, the state and now() it does); not history, result, error or
    -- progress.  Arguments as text: one json.loads each in the worker is
    -- cheaper than a jsonb typecaster; with what the task's parents give it
    -- first (workflows).  Task.refresh() reads everything.
    RETURNING t.id, t.name,
              (CASE WHEN t.pass_result IS NULL THEN t.args ELSE pgtq_claim_args(t) END)::text
                  AS args, t.kwargs::text AS kwargs, t.priority,
              t.attempts, t.max_attempts, t.run_at, t.created_at, t.cancel_requested_at,
              t.workflow_id, t.snoozes, t.meta, t.tags, t.key
)
-- One summary row (kind 0: the ids recorded, the claim time), then one row
-- per claimed task (kind 1).  Every CTE above must be referenced to run.
SELECT 0 AS kind, coalesce(array_agg(id), '{}') AS done_ids, now() AS started_at,
       (SELECT count(*) FROM woken) AS woken, (SELECT setting FROM durability) AS durability,
       current_setting('jit') AS jit, (SELECT finished FROM ended) AS workflows_finished,
       NULL::bigint AS id, NULL::text AS name, NULL::text AS args, NULL::text AS kwargs,
       NULL::integer AS priority, NULL::integer AS attempts, NULL::integer AS max_attempts,
       NULL::timestamptz AS run_at, NULL::timestamptz AS created_at,
       NULL::timestamptz AS cancel_requested_at, NULL::bigint AS workflow_id,
       NULL::integer AS snoozes, NULL::jsonb AS meta, NULL::text[] AS tags, NULL::text AS key
FROM done
UNION ALL
SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, c.id, c.name, c.args, c.kwargs, c.priority,
       c.attempts, c.max_attempts, c.run_at, c.created_at, c.cancel_requested_at, c.workflow_id, c.snoozes,
       c.meta, c.tags, c.key
FROM claimed AS c;

-- name: release_tasks
-- Give tasks back at once (worker shutdown).  %(ids)s never started
-- (prefetched): their attempt is not counted.  %(interrupted)s started and
-- were stopped: the attempt counts, so a task that never gets to finish
-- cannot come back forever; with no attempt left it fails.  Progress is
-- cleared; listening workers and waiters are woken.
WITH released AS (
    UPDATE pgtq_tasks AS t
    SET state = CASE WHEN r.interrupted AND t.attempts >= t.max_attempts
                     THEN 'failed' ELSE 'queued' END,
        attempts = CASE WHEN r.interrupted THEN t.attempts ELSE t.attempts - 1 END,
        error = CASE WHEN r.interrupted
                     THEN 'released: attempt ' || t.attempts
                          || ' was interrupted when its worker stopped'
                     ELSE t.error END,
        history = CASE WHEN r.interrupted THEN t.history || jsonb_build_object(
                      'attempt', t.attempts, 'state', 'released', 'worker', t.locked_by,
                      'started_at', t.started_at, 'finished_at', now(),
                      'error', 'released: interrupted when its worker stopped')
                  ELSE t.history END,
        progress = NULL,
        locked_by = NULL,
        run_at = now(),
        started_at = CASE WHEN r.interrupted THEN t.started_at END,
        finished_at = CASE WHEN r.interrupted AND t.attempts >= t.max_attempts
                           THEN now() END
    FROM (SELECT id, false AS interrupted FROM unnest(%(ids)s::bigint[]) AS id
          UNION ALL
          SELECT id, true FROM unnest(%(interrupted)s::bigint[]) AS id) AS r
    WHERE t.id = r.id AND t.locked_by = %(owner)s AND t.state = 'running'
    RETURNING t.id, t.queue, t.state, t.workflow_id
), ended AS (
    SELECT pgtq_tasks_ended(array_agg(id), array_agg(state), array_agg(workflow_id)) AS finished
    FROM released WHERE state = 'failed'
), woken AS (
    SELECT pg_notify('pgtq', q.queue)
    FROM (SELECT DISTINCT queue FROM released WHERE state = 'queued') AS q
), done AS (
    SELECT pg_notify('pgtq_done', string_agg(id::text, ','))
    FROM released WHERE state = 'failed' HAVING count(*) > 0
)
SELECT (SELECT count(*) FROM woken) + (SELECT count(*) FROM done), array(SELECT id FROM released),
       (SELECT finished FROM ended) AS workflows_finished;

-- name: register_owner
INSERT INTO pgtq_workers (id, hostname, pid, queues, concurrency, lease_expires_at)
VALUES (
    %(owner)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s,
    now() + %(lease)s * interval '1 second'
)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = now(), lease_expires_at = EXCLUDED.lease_expires_at;

-- name: heartbeat
UPDATE pgtq_workers
SET heartbeat_at = now(), lease_expires_at = now() + %(lease)s * interval '1 second'
WHERE id = %(owner)s
RETURNING id;

-- name: unregister_owner
DELETE FROM pgtq_workers WHERE id = %(owner)s;

-- name: rescue_tasks
-- Tasks whose owner's lease ran out go back to the queue with backoff, or
-- fail when no attempt is left.  Safe to run from every worker at once.
WITH expired AS (
    DELETE FROM pgtq_workers WHERE lease_expires_at < now() RETURNING id
), lost AS (
    SELECT t.id
    FROM pgtq_tasks AS t
    WHERE t.state = 'running'
      -- An owner registers (and commits) before it claims, so a task claimed
      -- by an owner this statement's snapshot cannot see was claimed after
      -- this statement began: skip recent claims, whatever their owner.
      AND t.started_at < now() - interval '1 second'
      AND NOT EXISTS (
          SELECT 1 FROM pgtq_workers AS w
          WHERE w.id = t.locked_by AND w.lease_expires_at >= now()
      )
    FOR UPDATE OF t SKIP LOCKED
), rescued AS (
UPDATE pgtq_tasks AS t
SET state = CASE WHEN t.attempts >= t.max_attempts THEN 'failed' ELSE 'queued' END,
    error = 'lease expired: the worker running attempt ' || t.attempts
            || ' stopped sending heartbeats (killed, frozen or cut off)',
    history = t.history || jsonb_build_object(
        'attempt', t.attempts, 'state', 'lost', 'worker', t.locked_by,
        'started_at', t.started_at, 'finished_at', now(),
        'error', 'lease expired: the worker stopped sending heartbeats'),
    progress = NULL,
    locked_by = NULL,
    run_at = CASE WHEN t.attempts >= t.max_attempts THEN t.run_at
             ELSE now() + least(%(backoff_max)s,
                                %(backoff)s * power(2, greatest(t.attempts - 1, 0)))
                          * (0.5 + random() / 2) * interval '1 second' END,
    finished_at = CASE WHEN t.attempts >= t.max_attempts THEN now() ELSE NULL END
FROM lost
WHERE t.id = lost.id
RETURNING t.id, t.name, t.queue, t.state, t.attempts, t.workflow_id
), ended AS (
    -- Dependents of the tasks failed here (migration 0006).
    SELECT pgtq_tasks_ended(array_agg(id), array_agg(state), array_agg(workflow_id)) AS finished
    FROM rescued WHERE state = 'failed'
)
SELECT id, name, queue, state, attempts, (SELECT count(*) FROM expired) AS expired,
       (SELECT finished FROM ended) AS workflows_finished
FROM rescued;

-- name: prune_tasks
-- Retention (and flask pgtq purge): delete one small batch of tasks that
-- finished in one of %(states)s longer than %(keep)s seconds ago, of queue
-- %(queue)s or any.  Not a task whose dependents have not ended (they read
-- its result when they run), nor a member of a workflow that has not
-- finished; a workflow goes with its last task.  The caller repeats until a
-- batch comes back short, so no statement holds many locks.
WITH doomed AS (
    SELECT t.id, t.workflow_id
    FROM pgtq_tasks AS t
    WHERE t.state = ANY(%(states)s)
      AND t.state IN ('succeeded', 'failed', 'cancelled')
      AND t.finished_at IS NOT NULL
      AND t.finished_at < now() - %(keep)s * interval '1 second'
      AND (%(queue)s::text IS NULL OR t.queue = %(queue)s)
      AND NOT EXISTS (
          SELECT 1 FROM pgtq_dependencies AS d JOIN pgtq_tasks AS c ON c.id = d.child_id
          WHERE d.parent_id = t.id AND c.state IN ('waiting', 'queued', 'running'))
      AND (t.workflow_id IS NULL OR EXISTS (
          SELECT 1 FROM pgtq_workflows AS w
          WHERE w.id = t.workflow_id AND w.finished_at IS NOT NULL))
    ORDER BY t.state, t.finished_at
    LIMIT %(batch)s
    FOR UPDATE OF t SKIP LOCKED
), edges AS (
    DELETE FROM pgtq_dependencies WHERE child_id IN (SELECT id FROM doomed)
), workflows AS (
    DELETE FROM pgtq_workflows AS w
    WHERE w.id IN (SELECT workflow_id FROM doomed)
      AND NOT EXISTS (SELECT 1 FROM pgtq_tasks AS t
                      WHERE t.workflow_id = w.id AND t.id NOT IN (SELECT id FROM doomed))
)
DELETE FROM pgtq_tasks AS t
USING doomed
WHERE t.id = doomed.id
RETURNING t.id;

-- name: push_tasks
-- Batch push: one statement for any number of tasks, in input order; the
-- ids come back as one array (ascending: drawn from one sequence in order).
-- Arguments come as two JSON arrays, one element per task (kwargs may be
-- an empty array when no task has any): one literal each, parsed once,
-- which costs both sides far less than an array of text literals.
WITH inserted AS (
    INSERT INTO pgtq_tasks (queue, name, args, kwargs, priority, max_attempts, run_at, key,
                            meta, tags, limited)
    SELECT %(queue)s, %(name)s, item.a, coalesce(item.k, '{}'), %(priority)s,
           %(max_attempts)s, coalesce(%(run_at)s, now() + %(delay)s * interval '1 second'),
           %(key)s, %(meta)s::jsonb, %(tags)s::text[], %(limited)s
    FROM ROWS FROM (jsonb_array_elements(%(args)s::jsonb),
                    jsonb_array_elements(%(kwargs)s::jsonb))
         WITH ORDINALITY AS item(a, k, n)
    ORDER BY item.n
    RETURNING id
)
SELECT array_agg(id ORDER BY id) AS ids,
       (SELECT pg_notify('pgtq', %(queue)s)) AS notified
FROM inserted;

-- name: set_progress
-- Fenced like an outcome: only the attempt that holds the task may write.
UPDATE pgtq_tasks
SET progress = %(progress)s::jsonb
WHERE id = %(id)s AND attempts = %(attempt)s AND locked_by = %(owner)s AND state = 'running'
RETURNING id;

-- name: database_now
SELECT now() AS now;
