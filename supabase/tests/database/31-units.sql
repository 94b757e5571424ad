-- Unit (token) limits: a charge reserves an estimate ({"units": true},
-- cost = the estimate); completion with p_actual_units gives the difference
-- back to (or takes it from) the same bucket, never below zero, once; a
-- refund gives the whole estimate back; an expired hold keeps it.
BEGIN;
\ir _helpers.psql
SELECT plan(15);

SELECT tests.create_user('tina');
SELECT tests.give('tina', 1000);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'
\set units '''[{"key":"creditgate:units:user:tina","limit":1000,"window_seconds":60,"cost":400,"units":true}]'''

/** The units counted now in the window of tina's unit limit. */
CREATE FUNCTION tests.used(p_at timestamptz) RETURNS integer
LANGUAGE sql AS $$ SELECT 1000 - remaining FROM creditgate.rate_limit_at('creditgate:units:user:tina', 1000, 60, 1, false, p_at) $$;
/** A charge reserving p_estimate units at p_at. */
CREATE FUNCTION tests.reserve(p_estimate integer, p_at timestamptz, p_hold integer DEFAULT 60) RETURNS uuid
LANGUAGE sql AS $$
  SELECT c.job_id FROM creditgate.charge_credits_with_limits_at(tests.id_of('tina'), 'text', 1,
    jsonb_build_array(jsonb_build_object('key', 'creditgate:units:user:tina', 'limit', 1000,
      'window_seconds', 60, 'cost', p_estimate, 'units', true)), NULL, '{}', p_hold, p_at) c $$;

SELECT tests.reserve(400, :t0) AS j1 \gset
SELECT is(tests.used(:t0), 400, 'a charge reserves its estimate');
SELECT is((SELECT limit_units -> 0 ->> 'cost' FROM public.generation_jobs WHERE id = :'j1'), '400',
  'the job remembers which limit took how many units');
SELECT tests.reserve(500, :t0 + interval '1 second') AS j2 \gset
SELECT is(tests.reserve(200, :t0 + interval '2 seconds'), NULL, 'a third estimate that does not fit is refused (900 + 200 > 1000)');

SELECT creditgate.complete_job_at(:'j1', NULL, NULL, 150, :t0 + interval '3 seconds');
SELECT is(tests.used(:t0 + interval '3 seconds'), 650, 'completion with 150 actual units gives 250 back');
SELECT isnt(tests.reserve(200, :t0 + interval '4 seconds'), NULL, 'so 200 more fit now');
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.complete_job_at(%L, NULL, NULL, 0, %s + interval '5 seconds')$$, :'j1', :'t0')) ->> 'hint',
  'job_already_settled', 'a second completion is job_already_settled');
SELECT is(tests.used(:t0 + interval '5 seconds'), 850, 'and gives nothing back twice');

-- More than the estimate: taken from the same bucket, the window may go over.
SELECT creditgate.complete_job_at(:'j2', NULL, NULL, 600, :t0 + interval '6 seconds');
SELECT is(tests.used(:t0 + interval '6 seconds'), 950, 'completion with 600 of an estimate of 500 takes 100 more');

-- A refund gives the whole estimate back.
SELECT id AS j3 FROM public.generation_jobs WHERE user_id = tests.id_of('tina') AND status = 'pending' \gset
SELECT creditgate.refund_credits_at(tests.id_of('tina'), :'j3', NULL, 'failed', :t0 + interval '7 seconds');
SELECT is(tests.used(:t0 + interval '7 seconds'), 750, 'a refund gives the whole estimate (200) back');

-- Never below zero: a reset emptied the window, then the completion has nothing to give back.
SELECT tests.reserve(200, :t0 + interval '8 seconds') AS j4 \gset
SELECT public.reset_rate_limit('creditgate:units:user:tina');
SELECT creditgate.complete_job_at(:'j4', NULL, NULL, 0, :t0 + interval '9 seconds');
SELECT is(tests.used(:t0 + interval '9 seconds'), 0, 'a correction after a reset gives nothing back (never below zero)');

-- The bucket is corrected, not the current one: a bucket still in the window.
SELECT tests.reserve(100, :t0 + interval '10 seconds') AS j5 \gset
SELECT tests.reserve(100, :t0 + interval '40 seconds') AS j6 \gset
SELECT creditgate.complete_job_at(:'j5', NULL, NULL, 0, :t0 + interval '41 seconds');
SELECT is(tests.used(:t0 + interval '41 seconds'), 100, 'the first estimate, given back 31 s later, leaves its own bucket');
SELECT is(tests.used(:t0 + interval '100 seconds'), 100, 'the second still counts until its own bucket leaves the window');

-- An expired hold keeps its estimate (the work may have been done).
SELECT tests.reserve(100, :t0 + interval '200 seconds', 20) AS j7 \gset
SELECT creditgate.expire_stale_generation_jobs_at(:t0 + interval '221 seconds');
SELECT is(tests.used(:t0 + interval '221 seconds'), 100, 'an expired hold''s estimate stays counted');

SELECT is(tests.error_of(format($$SELECT * FROM creditgate.complete_job_at(%L, NULL, NULL, -1, %s)$$, :'j6', :'t0')) -> 'details' ->> 'parameter',
  'p_actual_units', 'negative actual units are invalid_argument');
SELECT is(tests.error_of($$SELECT creditgate.parse_rate_limits('[{"key":"k","limit":5,"window_seconds":60,"units":1}]', 0, true)$$) -> 'details' ->> 'parameter',
  'p_limits[0].units', '"units" must be true');

SELECT * FROM finish();
ROLLBACK;
