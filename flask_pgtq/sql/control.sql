-- Run-time control: pauses and stored schedules.  Loaded by
-- flask_pgtq.queries.  Every change NOTIFYs pgtq_control (payload: what
-- changed, never data); a resume also wakes workers (pgtq).

-- name: pause
INSERT INTO pgtq_pauses (kind, target, reason, paused_by, until)
VALUES (%(kind)s, %(target)s, %(reason)s, %(paused_by)s,
        now() + %(seconds)s::float8 * interval '1 second')
ON CONFLICT (kind, target) DO UPDATE
SET reason = EXCLUDED.reason, paused_by = EXCLUDED.paused_by,
    paused_at = now(), until = EXCLUDED.until
RETURNING kind, target, reason, paused_by, paused_at, until,
          (SELECT count(*) FROM (SELECT pg_notify('pgtq_control', 'pause')) AS n) AS notified;

-- name: resume
-- Wakes every listening worker: the resumed queue's tasks may be ready.
WITH resumed AS (
    DELETE FROM pgtq_pauses WHERE kind = %(kind)s AND target = %(target)s
    RETURNING kind, target
), told AS (
    SELECT pg_notify('pgtq_control', 'resume'), pg_notify('pgtq', '') FROM resumed
)
SELECT kind, target, (SELECT count(*) FROM told) AS notified FROM resumed;

-- name: list_pauses
-- Pauses in force (a timed pause past its end is over, whether or not its
-- row is gone yet).
SELECT kind, target, reason, paused_by, paused_at, until
FROM pgtq_pauses
WHERE until IS NULL OR until > now()
ORDER BY kind, target;

-- name: end_pauses
-- Timed pauses that are over: rows removed, workers woken.
WITH ended AS (
    DELETE FROM pgtq_pauses WHERE until <= now() RETURNING kind, target
), told AS (
    SELECT pg_notify('pgtq', '') FROM (SELECT 1 FROM ended LIMIT 1) AS e
)
SELECT kind, target, (SELECT count(*) FROM told) AS notified FROM ended;

-- name: add_schedule
INSERT INTO pgtq_schedules (name, cron, tz, handler, args, kwargs, enabled)
VALUES (%(name)s, %(cron)s, %(tz)s, %(handler)s, %(args)s::jsonb, %(kwargs)s::jsonb, true)
ON CONFLICT (name) DO NOTHING
RETURNING *, (SELECT count(*) FROM (SELECT pg_notify('pgtq_control', 'schedules')) AS n)
    AS notified;

-- name: update_schedule
UPDATE pgtq_schedules
SET cron = coalesce(%(cron)s, cron),
    tz = coalesce(%(tz)s, tz),
    handler = coalesce(%(handler)s, handler),
    args = coalesce(%(args)s::jsonb, args),
    kwargs = coalesce(%(kwargs)s::jsonb, kwargs),
    enabled = coalesce(%(enabled)s, enabled),
    updated_at = now()
WHERE name = %(name)s
RETURNING *, (SELECT count(*) FROM (SELECT pg_notify('pgtq_control', 'schedules')) AS n)
    AS notified;

-- name: remove_schedule
WITH removed AS (
    DELETE FROM pgtq_schedules WHERE name = %(name)s RETURNING name
), told AS (
    SELECT pg_notify('pgtq_control', 'schedules') FROM removed
)
SELECT name, (SELECT count(*) FROM told) AS notified FROM removed;

-- name: list_schedules
SELECT s.*,
       (SELECT p.task_id FROM pgtq_periodic AS p
        WHERE p.schedule = 'db:' || s.name ORDER BY p.fire_at DESC LIMIT 1) AS last_task_id,
       (SELECT max(p.fire_at) FROM pgtq_periodic AS p
        WHERE p.schedule = 'db:' || s.name) AS last_fire_at
FROM pgtq_schedules AS s
ORDER BY s.name;
