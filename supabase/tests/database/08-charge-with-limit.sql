-- A rate limit and a charge in one call, all or nothing: refused by the
-- limit -> allowed = false, no job, nothing consumed; refused by the charge ->
-- an error, and the limit is not consumed either; a replay consumes no limit.
BEGIN;
\ir _helpers.psql
SELECT plan(24);

SELECT tests.create_user('alice'), tests.create_user('bob');
SELECT tests.give('alice', 100), tests.give('bob', 5);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

SELECT results_eq(
  format($$SELECT allowed, new_balance, replayed, expires_at, "limit", remaining, reset_seconds, retry_after_seconds, job_id IS NOT NULL
           FROM creditgate.charge_credits_with_limit_at(%L, 'image', 10, 'user:alice', 2, 60, NULL, '{}', 900, 1, %s)$$,
    tests.id_of('alice'), :'t0'),
  format($$VALUES (true, 90, false, %s + interval '900 seconds', 2, 1, 63, 0, true)$$, :'t0'),
  'within the limit: charged, with the job and the limit''s state');
SELECT results_eq(
  format($$SELECT allowed, new_balance, remaining FROM creditgate.charge_credits_with_limit_at(%L, 'image', 10, 'user:alice', 2, 60, NULL, '{}', 900, 1, %s + interval '1 second')$$,
    tests.id_of('alice'), :'t0'),
  $$VALUES (true, 80, 0)$$, 'the second call uses the last unit');
SELECT tests.fingerprint() AS before_denial \gset
SELECT results_eq(
  format($$SELECT allowed, job_id, new_balance, replayed, expires_at, "limit", remaining, retry_after_seconds
           FROM creditgate.charge_credits_with_limit_at(%L, 'image', 10, 'user:alice', 2, 60, NULL, '{}', 900, 1, %s + interval '2 seconds')$$,
    tests.id_of('alice'), :'t0'),
  $$VALUES (false, NULL::uuid, NULL::integer, false, NULL::timestamptz, 2, 0, 61)$$,
  'over the limit: allowed = false, the job fields NULL, and when to retry');
SELECT is(tests.fingerprint(), :'before_denial', 'and nothing was charged or counted');
SELECT is(tests.credits_of('alice'), 80, '(alice still has 80)');

-- Refused by the charge: the limit is not consumed.
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limit_at(%L, 'image', 10, 'user:bob', 5, 60, NULL, '{}', 900, 1, %s)$$,
  tests.id_of('bob'), :'t0'), 'PT402', 'insufficient credits is an error, as for any charge');
SELECT is((SELECT remaining FROM creditgate.rate_limit_at('user:bob', 5, 60, 1, false, :t0)), 5,
  'and bob''s limit is untouched: all or nothing');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limit_at(%L, 'image', -1, 'user:alice', 2, 60, NULL, '{}', 900, 1, %s + interval '2 seconds')$$,
  tests.id_of('alice'), :'t0'), '22023', 'an invalid charge is refused as such, even when the limit would deny it');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limit_at(%L, 'image', 1, 'user:alice', 2, 60, NULL, '{}', 900, 3, %s + interval '2 seconds')$$,
  tests.id_of('alice'), :'t0'), '22023', 'a limit weight above the limit is refused');

-- Weighted: an expensive operation counts more.
SELECT results_eq(
  format($$SELECT allowed, remaining FROM creditgate.charge_credits_with_limit_at(%L, 'video', 20, 'gpu:alice', 10, 3600, NULL, '{}', 900, 7, %s)$$,
    tests.id_of('alice'), :'t0'),
  $$VALUES (true, 3)$$, 'a request of limit weight 7 of 10 leaves 3');
SELECT results_eq(
  format($$SELECT allowed, remaining FROM creditgate.charge_credits_with_limit_at(%L, 'video', 20, 'gpu:alice', 10, 3600, NULL, '{}', 900, 4, %s)$$,
    tests.id_of('alice'), :'t0'),
  $$VALUES (false, 3)$$, 'one of weight 4 is then denied');

-- Idempotent replays consume no limit.
SELECT job_id AS keyed_job FROM creditgate.charge_credits_with_limit_at(tests.id_of('alice'), 'image', 5, 'user:alice', 2, 60,
  'req-1', '{}', 900, 1, :t0 + interval '70 seconds') \gset
SELECT results_eq(
  format($$SELECT allowed, job_id, new_balance, replayed, remaining FROM creditgate.charge_credits_with_limit_at(%L, 'image', 5, 'user:alice', 2, 60, 'req-1', '{}', 900, 1, %s + interval '71 seconds')$$,
    tests.id_of('alice'), :'t0'),
  format($$VALUES (true, %L::uuid, 55, true, 1)$$, :'keyed_job'),
  'a retry with the same key returns the original job and balance and leaves the limit at 1 remaining');
SELECT results_eq(
  format($$SELECT allowed, remaining FROM creditgate.charge_credits_with_limit_at(%L, 'image', 5, 'user:alice', 2, 60, NULL, '{}', 900, 1, %s + interval '72 seconds')$$,
    tests.id_of('alice'), :'t0'),
  $$VALUES (true, 0)$$, 'so a new request still gets that last unit');
SELECT results_eq(
  format($$SELECT allowed, job_id, replayed FROM creditgate.charge_credits_with_limit_at(%L, 'image', 5, 'user:alice', 2, 60, 'req-1', '{}', 900, 1, %s + interval '73 seconds')$$,
    tests.id_of('alice'), :'t0'),
  format($$VALUES (true, %L::uuid, true)$$, :'keyed_job'),
  'and with the limit used up, the retry still gets its result, not a 429');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limit_at(%L, 'image', 6, 'user:alice', 2, 60, 'req-1', '{}', 900, 1, %s + interval '73 seconds')$$,
  tests.id_of('alice'), :'t0'), 'PT422', 'the same key with another cost is refused');
SELECT is((SELECT job_id FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 5, 'req-1')), :'keyed_job'::uuid,
  'the key is the charge''s key: atomic_charge_credits replays it too');

SELECT tests.as_role('service_role');
SELECT results_eq(
  format($$SELECT allowed, replayed, "limit", remaining FROM public.charge_credits_with_limit(%L, 'image', 1, 'user:bob', 1, 60)$$, tests.id_of('bob')),
  $$VALUES (true, false, 1, 0)$$, 'service_role calls charge_credits_with_limit on the real clock');
SELECT results_eq(
  format($$SELECT allowed, job_id FROM public.charge_credits_with_limit(%L, 'image', 1, 'user:bob', 1, 60)$$, tests.id_of('bob')),
  $$VALUES (false, NULL::uuid)$$, 'and the next one is limited');
RESET ROLE;
SELECT is(tests.credits_of('bob'), 4, 'bob paid for one');

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
