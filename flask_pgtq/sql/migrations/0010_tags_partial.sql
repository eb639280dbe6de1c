-- flask_pgtq schema, version 10: the tags index holds tagged tasks only.
--
-- A GIN index gets an entry for every row version, an empty array
-- included, and a task's row has three versions (pushed, claimed,
-- finished): untagged tasks, most of them, paid for an index they never
-- use.  Queries that filter by tag say "tags <> '{}'" to use this one.

DROP INDEX pgtq_tasks_tags;

CREATE INDEX pgtq_tasks_tags ON pgtq_tasks USING gin (tags) WHERE tags <> '{}';
