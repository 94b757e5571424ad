-- Expiry: a hold not settled by its deadline is refunded, by the sweeper or
-- before any balance check of its user, so an expired hold never blocks a
-- charge and no read shows it as spent. Time is driven through the internal
-- creditgate.*_at(..., p_now) functions.
BEGIN;
\ir _helpers.psql
SELECT plan(40);

SELECT tests.create_user(n) FROM unnest(ARRAY['alice', 'bob', 'carol', 'dave', 'erin']) AS n;
SELECT tests.give(n, 100) FROM unnest(ARRAY['alice', 'bob', 'carol', 'dave', 'erin']) AS n;
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

-- -----------------------------------------------------------------------------
-- An expired hold never blocks a charge
-- -----------------------------------------------------------------------------
SELECT job_id AS video_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'video', 60, NULL, '{}', 300, :t0) \gset
SELECT is(creditgate.get_credit_balance_at(tests.id_of('alice'), :t0 + interval '299 seconds'), 40,
  'one second before its deadline the hold still counts');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_at(%L, 'image', 41, NULL, '{}', 300, %s + interval '299 seconds')$$,
  tests.id_of('alice'), :'t0'), 'PT402', 'and a charge needing it is refused');
SELECT is(tests.status_of(:'video_job'), 'pending', 'the job is still pending');

SELECT is((SELECT new_balance FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 41, NULL, '{}', 300, :t0 + interval '300 seconds')), 59,
  'at its deadline the hold is released before the balance check, so the same charge passes: 100 - 41');
SELECT is(tests.status_of(:'video_job'), 'expired', 'the held job is now expired');
SELECT results_eq(
  format($$SELECT entry_type, delta, balance_after FROM public.credit_ledger WHERE user_id = %L ORDER BY id$$, tests.id_of('alice')),
  $$VALUES ('grant'::text, 100, 100), ('charge'::text, -60, 40), ('expiry'::text, 60, 100), ('charge'::text, -41, 59)$$,
  'the ledger shows the release before the new charge');
SELECT results_eq(format($$SELECT captured_credits, refunded_credits, completed_at FROM public.generation_jobs WHERE id = %L$$, :'video_job'),
  format($$VALUES (0, 60, %s + interval '300 seconds')$$, :'t0'), 'the expired job kept nothing, returned 60, settled at the clock''s time');

-- Completing or refunding an expired hold is refused to the caller (status
-- 'expired' in the answer: the client reports job_already_settled), but is
-- not an error: an error would roll back the release.
SELECT tests.fingerprint() AS before_late_calls \gset
SELECT results_eq(format($$SELECT job_id, status, new_balance, refunded FROM creditgate.complete_generation_job_at(%L, NULL, NULL, %s + interval '301 seconds')$$,
  :'video_job', :'t0'), format($$VALUES (%L::uuid, 'expired'::text, 59, 60)$$, :'video_job'),
  'completing a job the sweeper expired: one row, status expired, the hold refunded, the balance');
SELECT is(creditgate.refund_credits_at(tests.id_of('alice'), :'video_job', 60, 'x', :t0 + interval '301 seconds'), 59,
  'refunding it: the balance, no error');
SELECT is(tests.fingerprint(), :'before_late_calls', 'and neither call changed anything');
SELECT * FROM tests.refused(format($$SELECT creditgate.refund_credits_at(%L, %L, 59, 'x', %s + interval '301 seconds')$$,
  tests.id_of('alice'), :'video_job', :'t0'), 'PT409', 'a refund of another amount than the expired hold: job_already_settled');

-- Past its deadline but before any sweep: the call releases the hold itself
-- and keeps that release, while telling the caller it expired.
SELECT job_id AS late_job FROM creditgate.charge_credits_at(tests.id_of('erin'), 'video', 10, NULL, '{}', 60, :t0) \gset
SELECT results_eq(format($$SELECT job_id, status, new_balance, refunded FROM creditgate.complete_generation_job_at(%L, 'https://r/x', 5, %s + interval '61 seconds')$$,
  :'late_job', :'t0'), format($$VALUES (%L::uuid, 'expired'::text, 100, 10)$$, :'late_job'),
  'completing a job past its deadline before the sweeper: status expired, all 10 back, balance 100');
SELECT is(tests.status_of(:'late_job'), 'expired', 'the job is expired now (the release was kept)');
SELECT results_eq(format($$SELECT captured_credits, refunded_credits, result_url FROM public.generation_jobs WHERE id = %L$$, :'late_job'),
  $$VALUES (0, 10, NULL::text)$$, '(nothing captured, no result stored)');
SELECT is(tests.credits_of('erin'), 100, 'erin''s balance is restored');
SELECT job_id AS late_refund FROM creditgate.charge_credits_at(tests.id_of('erin'), 'video', 7, NULL, '{}', 60, :t0) \gset
SELECT is(creditgate.refund_credits_at(tests.id_of('erin'), :'late_refund', NULL, 'late', :t0 + interval '61 seconds'), 100,
  'refunding a job past its deadline: the new balance, credits back');
SELECT is(tests.status_of(:'late_refund'), 'expired', '(the job is expired, not failed)');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger adds up after the late calls');
SELECT job_id AS late_job FROM creditgate.charge_credits_at(tests.id_of('erin'), 'video', 10, NULL, '{}', 60, :t0) \gset
SELECT results_eq(format($$SELECT status FROM creditgate.complete_generation_job_at(%L, NULL, NULL, %s + interval '59 seconds')$$,
  :'late_job', :'t0'), $$VALUES ('completed'::text)$$, 'before its deadline the same job completes');

-- -----------------------------------------------------------------------------
-- The sweeper
-- -----------------------------------------------------------------------------
SELECT creditgate.charge_credits_at(tests.id_of('bob'), 'image', 10, NULL, '{}', 100, :t0);
SELECT creditgate.charge_credits_at(tests.id_of('bob'), 'image', 20, NULL, '{}', 200, :t0);
SELECT job_id AS bob_long_job FROM creditgate.charge_credits_at(tests.id_of('bob'), 'image', 30, NULL, '{}', 1000, :t0) \gset
SELECT creditgate.charge_credits_at(tests.id_of('carol'), 'image', 15, NULL, '{}', 150, :t0);

-- (Counted over the whole table: holds other sessions committed count too.)
CREATE FUNCTION pg_temp.open_holds_due(p_at timestamptz) RETURNS integer LANGUAGE sql AS $$
  SELECT count(*)::integer FROM public.generation_jobs WHERE status = 'pending' AND expires_at <= p_at
$$;
SELECT pg_temp.open_holds_due(:t0 + interval '99 seconds') AS due_early, pg_temp.open_holds_due(:t0 + interval '200 seconds') AS due_later \gset
SELECT is(:due_later - :due_early, 3, '(three of this test''s holds fall due between t0 + 99 s and t0 + 200 s)');
SELECT is(creditgate.expire_stale_generation_jobs_at(:t0 + interval '99 seconds'), :due_early, 'the sweeper returns how many holds it released');
SELECT is(tests.credits_of('bob'), 40, 'none of bob''s was due at t0 + 99 s (he holds 60)');
SELECT is(creditgate.expire_stale_generation_jobs_at(:t0 + interval '200 seconds'), 3,
  'at t0 + 200 s it releases the three holds due by then, across users');
SELECT is(tests.credits_of('bob'), 70, 'bob got 10 + 20 back');
SELECT is(tests.credits_of('carol'), 100, 'carol got 15 back');
SELECT is(tests.status_of(:'bob_long_job'), 'pending', 'a hold not yet due stays open');
SELECT tests.fingerprint() AS after_sweep \gset
SELECT is(creditgate.expire_stale_generation_jobs_at(:t0 + interval '200 seconds'), 0, 'a second sweep releases nothing');
SELECT is(tests.fingerprint(), :'after_sweep', 'and changes nothing');

-- -----------------------------------------------------------------------------
-- Balance reads release first
-- -----------------------------------------------------------------------------
SELECT creditgate.charge_credits_at(tests.id_of('dave'), 'image', 25, NULL, '{}', 10, :t0);
SELECT is(creditgate.get_credit_balance_at(tests.id_of('dave'), :t0 + interval '9 seconds'), 75, 'a balance read counts a live hold');
SELECT is(creditgate.get_credit_balance_at(tests.id_of('dave'), :t0 + interval '10 seconds'), 100,
  'and never shows an expired hold as spent');
SELECT is(tests.credits_of('dave'), 100, 'because the read released it');

-- The public functions read the real clock: a hold taken two hours ago with
-- a one-minute deadline is due now.
SELECT job_id AS old_job FROM creditgate.charge_credits_at(tests.id_of('dave'), 'image', 5, NULL, '{}', 60, now() - interval '2 hours') \gset
SELECT tests.as_user('dave');
SELECT is(public.get_my_credit_balance(), 100, 'get_my_credit_balance releases the user''s own expired hold');
RESET ROLE;
SELECT is(tests.status_of(:'old_job'), 'expired', '(it was released)');
SELECT job_id AS erin_old_job FROM creditgate.charge_credits_at(tests.id_of('erin'), 'image', 5, NULL, '{}', 60, now() - interval '2 hours') \gset
SELECT tests.as_role('service_role');
SELECT cmp_ok(public.expire_stale_generation_jobs(), '>=', 1, 'the public sweeper releases what is due on the real clock');
SELECT is(tests.status_of(:'bob_long_job'), 'pending', 'but not bob''s hold, due in 2030');
SELECT is(tests.status_of(:'erin_old_job'), 'expired', 'erin''s two-hour-old hold is released');
SELECT is(public.get_credit_balance(tests.id_of('erin')), 90, 'get_credit_balance reads the released balance');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
