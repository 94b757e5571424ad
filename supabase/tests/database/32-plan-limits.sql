-- Per-plan limits: upsert_credit_plan's p_limits (checked: clear errors),
-- and charge_credits_with_limits' entries tagged "plan": the subscribed
-- plan's section replaces the defaults, in the same transaction; a user
-- without a plan, or a plan without the section, keeps the defaults.
BEGIN;
\ir _helpers.psql
SELECT plan(20);

SELECT tests.create_user('free'), tests.create_user('pro'), tests.create_user('none');
SELECT tests.give('free', 1000), tests.give('pro', 1000), tests.give('none', 1000);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

SELECT results_eq($$SELECT limits FROM public.upsert_credit_plan('free', 10, 'month', 0,
    '{"operations": {"image": [{"limit": 2, "window_seconds": 60}, {"limit": 25, "window_seconds": 86400}]}, "concurrency": 1}')$$,
  $$VALUES ('{"operations": {"image": [{"limit": 2, "window_seconds": 60}, {"limit": 25, "window_seconds": 86400}]}, "concurrency": 1}'::jsonb)$$,
  'upsert_credit_plan stores a plan''s limits');
SELECT public.upsert_credit_plan('pro', 100, 'month', 0, '{"user": [], "units": [{"limit": 500, "window_seconds": 60}]}');
SELECT is((SELECT limits FROM public.upsert_credit_plan('pro', 200, 'month')), '{"user": [], "units": [{"limit": 500, "window_seconds": 60}]}'::jsonb,
  'an update without p_limits keeps them');
SELECT creditgate.subscribe_credit_plan_at(tests.id_of('free'), 'free', :t0, :t0);
SELECT creditgate.subscribe_credit_plan_at(tests.id_of('pro'), 'pro', :t0, :t0);

/** The defaults the Edge Function would send for p_name: user 5/60, image 5/60, concurrency 2, units 1000/60. */
CREATE FUNCTION tests.defaults(p_name text, p_units integer) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_array(
  jsonb_build_object('key', 'creditgate:user:' || p_name, 'limit', 5, 'window_seconds', 60, 'plan', 'user'),
  jsonb_build_object('key', 'creditgate:op:image:user:' || p_name, 'limit', 5, 'window_seconds', 60, 'plan', 'operation'),
  jsonb_build_object('key', 'creditgate:user:' || p_name, 'concurrency', 2, 'plan', 'concurrency'),
  jsonb_build_object('key', 'creditgate:units:user:' || p_name, 'plan', 'units', 'units', true, 'cost', p_units)) $$;
/** A charge of 1 for an image by p_name at p_at with the defaults. */
CREATE FUNCTION tests.charge(p_name text, p_at timestamptz, p_units integer DEFAULT 100)
RETURNS TABLE (allowed boolean, job_id uuid, limits jsonb)
LANGUAGE sql AS $$
  SELECT c.allowed, c.job_id, c.limits FROM creditgate.charge_credits_with_limits_at(tests.id_of(p_name), 'image', 1,
    tests.defaults(p_name, p_units), NULL, '{}', 900, p_at) c $$;

SELECT results_eq(format($$SELECT e ->> 'key', (e ->> 'limit')::integer, (e ->> 'window_seconds')::integer, e ->> 'plan', e ->> 'from_plan'
                           FROM tests.charge('free', %s) c, jsonb_array_elements(c.limits) e$$, :'t0'),
  $$VALUES ('creditgate:user:free', 5, 60, 'user', NULL),
           ('creditgate:op:image:user:free', 2, 60, 'operation', 'free'),
           ('creditgate:op:image:user:free', 25, 86400, 'operation', 'free'),
           ('creditgate:user:free', 1, NULL, 'concurrency', 'free')$$,
  'free: its image windows and concurrency replace the defaults; the user limit stays; no unit limit (a placeholder only)');
SELECT ok(NOT (SELECT allowed FROM tests.charge('free', :t0 + interval '1 second')),
  'free: a second concurrent image is refused (plan concurrency 1)');
SELECT is((SELECT e ->> 'allowed' FROM tests.charge('free', :t0 + interval '1 second') c, jsonb_array_elements(c.limits) e
           WHERE e ->> 'plan' = 'concurrency'), 'false', 'and the refusing entry is the plan''s concurrency limit');

SELECT results_eq(format($$SELECT e ->> 'key', (e ->> 'limit')::integer, e ->> 'plan', e ->> 'units'
                           FROM tests.charge('pro', %s) c, jsonb_array_elements(c.limits) e$$, :'t0'),
  $$VALUES ('creditgate:op:image:user:pro', 5, 'operation', NULL),
           ('creditgate:user:pro', 2, 'concurrency', NULL),
           ('creditgate:units:user:pro', 500, 'units', 'true')$$,
  'pro: no user limit (an empty list), the default operation limit and concurrency, its unit limit under the placeholder''s key');
SELECT is((SELECT limit_units -> 0 ->> 'limit' FROM public.generation_jobs
           WHERE user_id = tests.id_of('pro') ORDER BY created_at LIMIT 1), '500', 'the hold records the plan''s unit limit');
SELECT is(tests.error_of(format($$SELECT * FROM tests.charge('pro', %s, 600)$$, :'t0')) -> 'details' ->> 'plan', 'pro',
  'an estimate above the plan''s unit limit is invalid_argument naming the plan');

SELECT results_eq(format($$SELECT e ->> 'key', e ->> 'plan' FROM tests.charge('none', %s) c, jsonb_array_elements(c.limits) e$$, :'t0'),
  $$VALUES ('creditgate:user:none', 'user'), ('creditgate:op:image:user:none', 'operation'), ('creditgate:user:none', 'concurrency')$$,
  'no plan: the defaults, the placeholder dropped');

-- Placeholders only (no defaults at all): the plan's sections, or nothing.
SELECT results_eq(format($$SELECT e ->> 'key', (e ->> 'limit')::integer, e ->> 'plan'
    FROM creditgate.charge_credits_with_limits_at(%L, 'image', 1,
      '[{"key":"creditgate:user:free","plan":"user"},{"key":"creditgate:op:image:user:free","plan":"operation"},
        {"key":"creditgate:user:free","plan":"concurrency"},{"key":"creditgate:units:user:free","plan":"units","units":true,"cost":5}]',
      NULL, '{}', 900, %s + interval '30 seconds') c, jsonb_array_elements(c.limits) e$$, tests.id_of('free'), :'t0'),
  $$VALUES ('creditgate:op:image:user:free', 2, 'operation'), ('creditgate:op:image:user:free', 25, 'operation'),
           ('creditgate:user:free', 1, 'concurrency')$$,
  'placeholders alone: the plan''s operation windows and concurrency apply, the sections it lacks none');
SELECT results_eq(format($$SELECT allowed, jsonb_array_length(limits) FROM creditgate.charge_credits_with_limits_at(%L, 'image', 1,
      '[{"key":"creditgate:user:none","plan":"user"},{"key":"creditgate:user:none","plan":"concurrency"}]',
      NULL, '{}', 900, %s) c$$, tests.id_of('none'), :'t0'),
  $$VALUES (true, 0)$$, 'placeholders for a user without a plan: a plain charge, no limit');

-- Plans change at once for the next request.
SELECT public.upsert_credit_plan('free', 10, 'month', 0, '{}');
SELECT ok((SELECT allowed FROM tests.charge('free', :t0 + interval '2 seconds')), 'a plan whose limits are cleared falls back to the defaults');

-- Shape errors, each naming the field.
SELECT is(tests.error_of(format($$SELECT public.upsert_credit_plan('x', 1, 'day', 0, %L)$$, v)) -> 'details' ->> 'parameter', p, d)
FROM (VALUES
  ('{"users": []}', 'p_limits.users', 'an unknown section'),
  ('{"user": [{"limit": 0, "window_seconds": 60}]}', 'p_limits.user[0].limit', 'a limit of 0'),
  ('{"user": [{"limit": 5, "window_seconds": 86401}]}', 'p_limits.user[0].window_seconds', 'a window past a day'),
  ('{"user": [{"limit": 5, "window_seconds": 60}, {"limit": 5, "window_seconds": 60}]}', 'p_limits.user[1]', 'the same window twice'),
  ('{"concurrency": 0}', 'p_limits.concurrency', 'a concurrency of 0'),
  ('{"operations": {"image": {"limit": 5}}}', 'p_limits.operations.image', 'an operation''s limits not a list'),
  ('{"units": [{"limit": 5, "window_seconds": 60, "cost": 1}]}', 'p_limits.units[0]', 'an unknown window field'),
  ('[]', 'p_limits', 'not an object')) AS t(v, p, d);

SELECT * FROM finish();
ROLLBACK;
