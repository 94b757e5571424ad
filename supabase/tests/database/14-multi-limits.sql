-- Several rate limits for one request, all or nothing (apply_rate_limits),
-- and a charge under several limits in one transaction
-- (charge_credits_with_limits): a refusal by any limit spends none; a
-- charge error spends none; a replay spends none.
BEGIN;
\ir _helpers.psql
SELECT plan(54);

SELECT tests.create_user('alice'), tests.create_user('bob');
SELECT tests.give('alice', 100), tests.give('bob', 5);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

/** The remaining room of (key, limit, window) at :t0 + p_seconds, read only. */
CREATE FUNCTION tests.room(p_key text, p_limit integer, p_window integer, p_at timestamptz) RETURNS integer
LANGUAGE sql AS $$ SELECT remaining FROM creditgate.rate_limit_at(p_key, p_limit, p_window, 1, false, p_at) $$;
/** apply_rate_limits at p_at, as rows. */
CREATE FUNCTION tests.limits_at(p_limits jsonb, p_at timestamptz)
RETURNS TABLE (key text, allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE sql AS $$
  SELECT e->>'key', (e->>'allowed')::boolean, (e->>'limit')::integer, (e->>'remaining')::integer,
         (e->>'reset_seconds')::integer, (e->>'retry_after_seconds')::integer
  FROM jsonb_array_elements(creditgate.apply_rate_limits_at(creditgate.parse_rate_limits(p_limits, 1, false), true, p_at) -> 'limits')
       WITH ORDINALITY AS x(e, n) ORDER BY n $$;

-- -----------------------------------------------------------------------------
-- apply_rate_limits
-- -----------------------------------------------------------------------------
SELECT results_eq(format($$SELECT * FROM tests.limits_at('[{"key":"ip:1","limit":3,"window_seconds":60},{"key":"user:a","limit":1,"window_seconds":60,"cost":1}]', %s)$$, :'t0'),
  $$VALUES ('ip:1', true, 3, 2, 63, 0), ('user:a', true, 1, 0, 63, 0)$$,
  'two limits that fit: one row each, in input order, both spent');
SELECT tests.fingerprint() AS before_refusal \gset
SELECT results_eq(format($$SELECT * FROM tests.limits_at('[{"key":"ip:1","limit":3,"window_seconds":60},{"key":"user:a","limit":1,"window_seconds":60}]', %s + interval '1 second')$$, :'t0'),
  $$VALUES ('ip:1', true, 3, 1, 62, 0), ('user:a', false, 1, 0, 62, 62)$$,
  'one limit refuses: its row says when to retry, the other shows what it would have had');
SELECT is(tests.fingerprint(), :'before_refusal', 'and nothing was spent on either key');
SELECT is(tests.room('ip:1', 3, 60, :t0 + interval '1 second'), 2, '(ip:1 still has 2 of 3)');
SELECT results_eq(format($$SELECT key, allowed, remaining FROM tests.limits_at('[{"key":"user:a","limit":1,"window_seconds":60},{"key":"ip:1","limit":3,"window_seconds":60}]', %s + interval '2 seconds')$$, :'t0'),
  $$VALUES ('user:a', false, 0), ('ip:1', true, 1)$$, 'the same keys in another order: the same answer, rows in that order');
SELECT results_eq(format($$SELECT key, allowed, remaining FROM tests.limits_at('[{"key":"ip:1","limit":3,"window_seconds":60,"cost":2},{"key":"user:b","limit":5,"window_seconds":60,"cost":5}]', %s + interval '2 seconds')$$, :'t0'),
  $$VALUES ('ip:1', true, 0), ('user:b', true, 0)$$, 'weights: a cost of 2 of the 2 left, and 5 of 5');
SELECT results_eq(format($$SELECT key, allowed, remaining, retry_after_seconds FROM tests.limits_at('[{"key":"ip:1","limit":3,"window_seconds":60},{"key":"user:c","limit":5,"window_seconds":60}]', %s + interval '63 seconds')$$, :'t0'),
  $$VALUES ('ip:1', true, 2, 0), ('user:c', true, 4, 0)$$, 'every earlier ip:1 request left the window: room again');
-- A limit of the same key with another window is another counter.
SELECT results_eq(format($$SELECT key, "limit", remaining FROM tests.limits_at('[{"key":"user:a","limit":1,"window_seconds":3600},{"key":"user:a","limit":1,"window_seconds":60}]', %s + interval '70 seconds')$$, :'t0'),
  $$VALUES ('user:a', 1, 0), ('user:a', 1, 0)$$, 'the same key with two windows: two counters, both spent');

-- The public function, as service_role (the clock is now: fresh keys).
SELECT tests.as_role('service_role');
SELECT results_eq($$SELECT key, allowed, "limit", remaining, retry_after_seconds FROM public.apply_rate_limits('[{"key":"pub:ip","limit":2,"window_seconds":60},{"key":"pub:user","limit":1,"window_seconds":60}]')$$,
  $$VALUES ('pub:ip', true, 2, 1, 0), ('pub:user', true, 1, 0, 0)$$, 'public.apply_rate_limits as service_role');
SELECT results_eq($$SELECT key, allowed, remaining, retry_after_seconds > 0 FROM public.apply_rate_limits('[{"key":"pub:ip","limit":2,"window_seconds":60},{"key":"pub:user","limit":1,"window_seconds":60}]')$$,
  $$VALUES ('pub:ip', true, 0, false), ('pub:user', false, 0, true)$$, 'a refusal through the public function');
RESET ROLE;
SELECT is(tests.room('pub:ip', 2, 60, clock_timestamp()), 1, 'and pub:ip was not spent by the refused call');

-- Bad input: 22023, nothing changed.
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"d","limit":2,"window_seconds":60},{"key":"d","limit":2,"window_seconds":60,"cost":1}]')$$,
  '22023', 'the same (key, limit, window) twice');
SELECT is(tests.error_of($$SELECT * FROM public.apply_rate_limits('[{"key":"d","limit":2,"window_seconds":60},{"key":"d","limit":2,"window_seconds":60}]')$$) ->> 'hint',
  'invalid_argument', 'with the code invalid_argument');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[]')$$, '22023', 'no limit at all');
SELECT * FROM tests.refused(format($$SELECT * FROM public.apply_rate_limits(%L)$$,
  (SELECT jsonb_agg(jsonb_build_object('key', 'k' || i, 'limit', 1, 'window_seconds', 60)) FROM generate_series(1, 17) i)),
  '22023', '17 limits (the bound is 16)');
SELECT is((SELECT count(*)::integer FROM public.apply_rate_limits(
  (SELECT jsonb_agg(jsonb_build_object('key', 'sixteen' || i, 'limit', 1, 'window_seconds', 60)) FROM generate_series(1, 16) i))),
  16, '16 limits are fine');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('{"key":"a","limit":1,"window_seconds":60}')$$, '22023', 'an object, not an array');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits(NULL)$$, '22023', 'NULL');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"a","limit":1,"window":60}]')$$, '22023', 'an unknown field (a typo of window_seconds)');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"a","limit":1.5,"window_seconds":60}]')$$, '22023', 'a limit that is not an integer');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"a","limit":"5","window_seconds":60}]')$$, '22023', 'a limit given as a string');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"a","limit":2,"window_seconds":60,"cost":3}]')$$, '22023', 'a cost above the limit');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"","limit":2,"window_seconds":60}]')$$, '22023', 'an empty key');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"a","limit":2,"window_seconds":86401}]')$$, '22023', 'a window past a day');

-- Only service_role.
SELECT ok(NOT has_function_privilege('anon', 'public.apply_rate_limits(jsonb)', 'EXECUTE')
      AND NOT has_function_privilege('authenticated', 'public.apply_rate_limits(jsonb)', 'EXECUTE')
      AND has_function_privilege('service_role', 'public.apply_rate_limits(jsonb)', 'EXECUTE'),
  'apply_rate_limits: service_role only');
SELECT ok(NOT has_function_privilege('anon', 'public.charge_credits_with_limits(uuid, text, integer, jsonb, text, jsonb, integer)', 'EXECUTE')
      AND NOT has_function_privilege('authenticated', 'public.charge_credits_with_limits(uuid, text, integer, jsonb, text, jsonb, integer)', 'EXECUTE')
      AND has_function_privilege('service_role', 'public.charge_credits_with_limits(uuid, text, integer, jsonb, text, jsonb, integer)', 'EXECUTE'),
  'charge_credits_with_limits: service_role only');

-- -----------------------------------------------------------------------------
-- charge_credits_with_limits
-- -----------------------------------------------------------------------------
\set two_limits '''[{"key":"creditgate:ip:10.0.0.1","limit":3,"window_seconds":60},{"key":"creditgate:user:alice","limit":2,"window_seconds":60}]'''
SELECT results_eq(
  format($$SELECT allowed, new_balance, replayed, expires_at, job_id IS NOT NULL, limits
           FROM creditgate.charge_credits_with_limits_at(%L, 'image', 10, %L, NULL, '{}', 900, %s)$$,
    tests.id_of('alice'), :two_limits, :'t0'),
  format($$VALUES (true, 90, false, %s + interval '900 seconds', true,
    '[{"key":"creditgate:ip:10.0.0.1","allowed":true,"limit":3,"remaining":2,"reset_seconds":63,"retry_after_seconds":0},
      {"key":"creditgate:user:alice","allowed":true,"limit":2,"remaining":1,"reset_seconds":63,"retry_after_seconds":0}]'::jsonb)$$, :'t0'),
  'two limits (the Edge Function''s own creditgate: keys) and a charge: charged, both limits spent, limits in input order');
SELECT results_eq(
  format($$SELECT allowed, new_balance FROM creditgate.charge_credits_with_limits_at(%L, 'image', 10, %L, NULL, '{}', 900, %s + interval '1 second')$$,
    tests.id_of('alice'), :two_limits, :'t0'),
  $$VALUES (true, 80)$$, 'a second charge: the user limit is now full');
SELECT tests.fingerprint() AS before_denial \gset
SELECT results_eq(
  format($$SELECT allowed, job_id, new_balance, replayed, expires_at, limits
           FROM creditgate.charge_credits_with_limits_at(%L, 'image', 10, %L, NULL, '{}', 900, %s + interval '2 seconds')$$,
    tests.id_of('alice'), :two_limits, :'t0'),
  $$VALUES (false, NULL::uuid, NULL::integer, false, NULL::timestamptz,
    '[{"key":"creditgate:ip:10.0.0.1","allowed":true,"limit":3,"remaining":0,"reset_seconds":61,"retry_after_seconds":0},
      {"key":"creditgate:user:alice","allowed":false,"limit":2,"remaining":0,"reset_seconds":61,"retry_after_seconds":61}]'::jsonb)$$,
  'the user limit refuses: allowed = false, no job, the refusing limit says when to retry');
SELECT is(tests.fingerprint(), :'before_denial', 'and nothing was charged, and the ip limit was not spent');

-- Refused by the charge: an error, and no limit spent.
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limits_at(%L, 'image', 10, %L, NULL, '{}', 900, %s)$$,
  tests.id_of('bob'), '[{"key":"creditgate:ip:10.0.0.2","limit":5,"window_seconds":60},{"key":"creditgate:user:bob","limit":5,"window_seconds":60}]', :'t0'),
  'PT402', 'insufficient credits is an error, as for any charge');
SELECT is(tests.room('creditgate:ip:10.0.0.2', 5, 60, :t0) + tests.room('creditgate:user:bob', 5, 60, :t0), 10,
  'and neither of bob''s limits was spent');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limits_at(%L, 'image', 1, %L, NULL, '{}', 900, %s)$$,
  tests.id_of('bob'), '[{"key":"creditgate:check:4:user:x","limit":5,"window_seconds":60}]', :'t0'),
  '22023', 'check_rate_limit''s namespace creditgate:check: is refused even here');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limits_at(%L, 'image', 1, %L, NULL, '{}', 900, %s)$$,
  tests.id_of('bob'), '[{"key":"u","limit":5,"window_seconds":60},{"key":"u","limit":5,"window_seconds":60}]', :'t0'),
  '22023', 'a duplicate limit is refused before anything is spent');

-- Replays spend no limit.
SELECT job_id AS keyed_job FROM creditgate.charge_credits_with_limits_at(tests.id_of('alice'), 'image', 5,
  '[{"key":"replay:ip","limit":2,"window_seconds":60},{"key":"replay:user","limit":2,"window_seconds":60}]',
  'req-1', '{}', 900, :t0) \gset
SELECT results_eq(
  format($$SELECT allowed, job_id, new_balance, replayed, limits FROM creditgate.charge_credits_with_limits_at(%L, 'image', 5, %L, 'req-1', '{}', 900, %s + interval '1 second')$$,
    tests.id_of('alice'), '[{"key":"replay:ip","limit":2,"window_seconds":60},{"key":"replay:user","limit":2,"window_seconds":60}]', :'t0'),
  format($$VALUES (true, %L::uuid, 75, true,
    '[{"key":"replay:ip","allowed":true,"limit":2,"remaining":1,"reset_seconds":62,"retry_after_seconds":0},
      {"key":"replay:user","allowed":true,"limit":2,"remaining":1,"reset_seconds":62,"retry_after_seconds":0}]'::jsonb)$$, :'keyed_job'),
  'a retry with the same key returns the original job and leaves both limits at 1 remaining');
SELECT is(tests.room('replay:ip', 2, 60, :t0 + interval '1 second'), 1, '(replay:ip: 1 of 2 still)');

-- No limit: a plain charge.
SELECT results_eq(
  format($$SELECT allowed, new_balance, limits FROM creditgate.charge_credits_with_limits_at(%L, 'image', 5, '[]', NULL, '{}', 900, %s)$$,
    tests.id_of('alice'), :'t0'),
  $$VALUES (true, 70, '[]'::jsonb)$$, 'an empty limits array is a plain charge');
SELECT is(tests.error_of(format($$SELECT * FROM public.charge_credits_with_limits(%L, 'image', 5, 'null')$$, tests.id_of('alice'))) ->> 'hint',
  'invalid_argument', 'limits that are not an array: invalid_argument');

-- The public function, as service_role.
SELECT tests.as_role('service_role');
SELECT results_eq(format($$SELECT allowed, new_balance, jsonb_array_length(limits) FROM public.charge_credits_with_limits(%L, 'image', 5, %L)$$,
    tests.id_of('alice'), '[{"key":"creditgate:ip:10.9.9.9","limit":5,"window_seconds":60},{"key":"creditgate:user:alice","limit":5,"window_seconds":3600}]'),
  $$VALUES (true, 65, 2)$$, 'public.charge_credits_with_limits as service_role');
RESET ROLE;
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger adds up');

SELECT * FROM finish();
ROLLBACK;
