-- flask_pgtq schema, version 7: what flask_pgtq stores with a task besides
-- its arguments (a JSON object), such as the W3C trace context of its push.
ALTER TABLE pgtq_tasks ADD COLUMN meta jsonb;
