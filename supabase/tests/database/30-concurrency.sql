-- Concurrency limits in charge_credits_with_limits: {"key", "concurrency": N}
-- allows at most N open holds of the charged user. The N+1-th is refused
-- (allowed = false), writes nothing and spends no rate limit; a slot frees
-- when a hold settles or expires (an expired, unswept hold does not count).
BEGIN;
\ir _helpers.psql
SELECT plan(18);

SELECT tests.create_user('cory'), tests.create_user('dana');
SELECT tests.give('cory', 1000), tests.give('dana', 1000);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

/** A charge of 10 by p_name at p_at under p_limits: (allowed, job_id, limits). */
CREATE FUNCTION tests.charge(p_name text, p_limits jsonb, p_at timestamptz, p_hold integer DEFAULT 900)
RETURNS TABLE (allowed boolean, job_id uuid, limits jsonb)
LANGUAGE sql AS $$
  SELECT c.allowed, c.job_id, c.limits
  FROM creditgate.charge_credits_with_limits_at(tests.id_of(p_name), 'image', 10,
    p_limits, NULL, '{}', p_hold, p_at) c $$;

\set lim '''[{"key":"creditgate:user:cory","limit":100,"window_seconds":60},{"key":"creditgate:user:cory","concurrency":2}]'''

SELECT job_id AS j1 FROM tests.charge('cory', :lim, :t0) \gset
SELECT job_id AS j2 FROM tests.charge('cory', :lim, :t0 + interval '1 second') \gset
SELECT isnt(:'j2'::uuid, NULL::uuid, 'two concurrent holds are allowed under concurrency 2');

SELECT tests.fingerprint() AS before \gset
SELECT results_eq(format($$SELECT allowed, job_id, limits -> 1 ->> 'allowed', limits -> 1 ->> 'open', limits -> 1 ->> 'limit',
                                  limits -> 1 ->> 'retry_after_seconds', limits -> 0 ->> 'allowed'
                           FROM tests.charge('cory', %L, %s + interval '2 seconds')$$, :lim, :'t0'),
  $$VALUES (false, NULL::uuid, 'false'::text, '2', '2', '1', 'true')$$,
  'the third is refused: its entry says 2 of 2 are open, retry after 1 s; the rate limit would have allowed it');
SELECT is(tests.fingerprint(), :'before', 'the refusal wrote nothing: no job, no ledger row, no rate limit spent');
SELECT is((SELECT remaining FROM creditgate.rate_limit_at('creditgate:user:cory', 100, 60, 1, false, :t0 + interval '2 seconds')),
  98, 'the rate limit counts only the two allowed requests');
SELECT is(tests.credits_of('cory'), 980, 'and only two charges were taken');

-- A slot frees when a hold settles.
SELECT creditgate.complete_generation_job_at(:'j1', NULL, NULL, :t0 + interval '3 seconds');
SELECT ok((SELECT allowed FROM tests.charge('cory', :lim, :t0 + interval '4 seconds')),
  'after a completion the next charge is allowed');
SELECT ok(NOT (SELECT allowed FROM tests.charge('cory', :lim, :t0 + interval '5 seconds')), 'and the one after is refused again');
SELECT creditgate.refund_credits_at(tests.id_of('cory'), :'j2', NULL, 'failed', :t0 + interval '6 seconds');
SELECT ok((SELECT allowed FROM tests.charge('cory', :lim, :t0 + interval '7 seconds')), 'a refund frees a slot too');

-- An expired hold that no sweeper has released does not count: the charge
-- releases the user's expired holds before it counts.
\set short '''[{"key":"creditgate:user:dana","concurrency":1}]'''
SELECT job_id AS d1 FROM tests.charge('dana', :short, :t0, 60) \gset
SELECT ok(NOT (SELECT allowed FROM tests.charge('dana', :short, :t0 + interval '59 seconds', 60)),
  'one open hold fills concurrency 1');
SELECT is(tests.status_of(:'d1'), 'pending', '(the hold is still pending: nothing swept it)');
SELECT ok((SELECT allowed FROM tests.charge('dana', :short, :t0 + interval '61 seconds', 60)),
  'past its deadline it no longer counts, unswept: the next charge is allowed');
SELECT is(tests.status_of(:'d1'), 'expired', 'and that charge released it first (in the same transaction)');

-- A replay of an allowed charge is not counted again and spends nothing.
SELECT job_id AS r1 FROM creditgate.charge_credits_with_limits_at(tests.id_of('dana'), 'text', 1,
  '[{"key":"creditgate:user:dana","concurrency":2}]', 'replay-1', '{}', 900,
  :t0 + interval '62 seconds') \gset
SELECT results_eq(format($$SELECT allowed, replayed, job_id FROM creditgate.charge_credits_with_limits_at(%L, 'text', 1,
    '[{"key":"creditgate:user:dana","concurrency":2}]', 'replay-1', '{}', 900,
    %s + interval '63 seconds')$$, tests.id_of('dana'), :'t0'),
  format($$VALUES (true, true, %L::uuid)$$, :'r1'), 'a replay with both slots taken returns the original job');

-- A blocked concurrency key refuses like any blocked key.
SELECT creditgate.block_rate_limit_key_at('creditgate:user:dana', NULL, 'abuse', :t0);
SELECT is(tests.error_of(format($$SELECT * FROM tests.charge('dana', %L, %s + interval '70 seconds')$$, :short, :'t0')) ->> 'hint',
  'blocked', 'a blocked key named only by a concurrency limit is 403 blocked');

-- Bad entries.
SELECT is(tests.error_of($$SELECT creditgate.parse_rate_limits('[{"key":"k","concurrency":0}]', 0, true)$$) -> 'details' ->> 'parameter',
  'p_limits[0].concurrency', 'a concurrency of 0 is invalid_argument, naming the field');
SELECT is(tests.error_of($$SELECT creditgate.parse_rate_limits('[{"key":"k","concurrency":2,"limit":3}]', 0, true)$$) ->> 'hint',
  'invalid_argument', 'a concurrency entry with a limit is refused');
SELECT is(tests.error_of($$SELECT creditgate.parse_rate_limits('[{"key":"k","concurrency":2},{"key":"j","concurrency":3}]', 0, true)$$) -> 'details' ->> 'parameter',
  'p_limits[1]', 'a second concurrency entry is refused');
SELECT is(tests.error_of($$SELECT creditgate.parse_rate_limits('[{"key":"k","concurrency":2}]', 1, false)$$) -> 'details' ->> 'parameter',
  'p_limits[0].concurrency', 'apply_rate_limits knows no concurrency field');

SELECT * FROM finish();
ROLLBACK;
