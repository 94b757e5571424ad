-- After the migrations ran over tests/upgrade/seed-half-applied/fixture.sql:
-- the seed's leftovers (rules, trigger, cascades, global key index, open jobs,
-- functions, rate limiter) are replaced, the rows and balances kept.
BEGIN;
\ir ../../../supabase/tests/database/_helpers.psql
SELECT plan(31);

\set alice '''a11ce000-0000-4000-8000-000000000001''::uuid'
\set bob '''b0b00000-0000-4000-8000-000000000002''::uuid'

SELECT results_eq($$SELECT id, delta, amount, balance_after, type, entry_type FROM public.credit_ledger ORDER BY id$$,
  format($$VALUES (1::bigint, 100, 100, 100, 'purchase'::text, 'legacy'::text), (2, -40, -40, 60, 'image', 'legacy'),
                  (3, -5, -5, 55, 'image', 'legacy'), (4, 10, 10, 10, NULL, 'opening_balance')$$),
  'serial ids are kept, delta and balance_after backfilled, bob''s unexplained 10 opened (amount kept filled)');
SELECT col_type_is('public', 'credit_ledger', 'id', 'bigint', 'the serial id became a bigint');
SELECT results_eq($$SELECT id, credits FROM public.users ORDER BY id$$,
  format($$VALUES (%s, 55), (%s, 10)$$, :'alice', :'bob'), 'every balance is kept');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

-- The seed's leftovers
SELECT is_empty($$SELECT rulename FROM pg_rules WHERE tablename = 'credit_ledger'$$, 'the DO INSTEAD NOTHING rules are gone');
SELECT hasnt_trigger('public', 'credit_ledger', 'verify_ledger_before_insert', 'the seed''s insert trigger is gone');
SELECT hasnt_function('public', 'verify_ledger_delta', ARRAY[]::text[], 'and its function');
SELECT is_empty($$SELECT conname FROM pg_constraint WHERE confrelid = 'auth.users'::regclass AND connamespace = 'public'::regnamespace$$,
  'no key to auth.users remains (its ON DELETE CASCADE would delete history)');
SELECT is((SELECT string_agg(conname || ' ON DELETE ' || confdeltype::text, ', ') FROM pg_constraint
           WHERE conrelid = 'public.credit_ledger'::regclass AND confrelid = 'public.users'::regclass),
  'credit_ledger_user_fk ON DELETE a', 'the ledger''s cascading key to users became a plain one (NO ACTION)');
SELECT hasnt_index('public', 'generation_jobs', 'idx_generation_jobs_idempotency', 'the global idempotency index is gone');
SELECT policies_are('public', 'generation_jobs', ARRAY['generation_jobs_select_own', 'generation_jobs_only_own'],
  'the seed''s job policies are replaced');
SELECT results_eq($$SELECT id::text, status, captured_credits, completed_at IS NOT NULL, expires_at IS NOT NULL FROM public.generation_jobs ORDER BY id$$,
  $$VALUES ('00000000-0000-4000-b000-000000000001', 'completed'::text, 40, true, true),
           ('00000000-0000-4000-b000-000000000002', 'failed', NULL, true, true),
           ('00000000-0000-4000-b000-000000000003', 'failed', NULL, true, true)$$,
  'the job the seed never completed is captured (not refunded by the sweeper), the refunded ones stay failed');
SELECT is(creditgate.expire_stale_generation_jobs_at('2100-01-01'), 0, 'so the sweeper has nothing to release');
SELECT has_column('public', 'rate_limits', 'bucket_costs', 'rate_limits has the new shape');
SELECT policies_are('public', 'rate_limits', ARRAY[]::name[], 'and no USING (true) policy');
SELECT col_default_is('public', 'users', 'credits', '10', 'the legacy signup default is kept');

-- The functions are creditgate's
SELECT is((SELECT bool_and(prosecdef) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
           AND proname IN ('atomic_charge_credits', 'refund_credits', 'check_rate_limit', 'cleanup_expired_rate_limits')), true,
  'the seed''s functions are replaced by SECURITY DEFINER ones');
SELECT ok(NOT has_function_privilege('anon', 'public.refund_credits(uuid,uuid,integer,text)', 'EXECUTE'), 'anon cannot refund');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(:alice, 'image', 5)), 50, 'atomic_charge_credits works');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%s, 'image', 5, 'k1')$$, :'alice'),
  'PT422', 'a seed-era key (no request fingerprint) cannot be replayed and is refused');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(:bob, 'image', 5, 'k1')), 5,
  'keys are per user now: bob can use k1 (the seed''s global index refused it)');
SELECT results_eq($$SELECT allowed, current_count FROM public.check_rate_limit('1.2.3.4', 'ip', 3, 60)$$,
  $$VALUES (true, 1)$$, 'check_rate_limit works, on fresh state');

-- Signups and deletions
INSERT INTO auth.users (id, email) VALUES ('c0000000-0000-4000-8000-000000000003', 'carol@seed.test');
SELECT results_eq($$SELECT credits FROM public.users WHERE id = 'c0000000-0000-4000-8000-000000000003'$$, $$VALUES (10)$$,
  'a new signup gets the legacy default of 10');
SELECT results_eq($$SELECT entry_type, delta FROM public.credit_ledger WHERE user_id = 'c0000000-0000-4000-8000-000000000003'$$,
  $$VALUES ('opening_balance'::text, 10)$$, 'recorded as an opening balance');
SELECT lives_ok(format($$DELETE FROM auth.users WHERE id = %s$$, :'alice'), 'deleting alice''s auth user works');
SELECT results_eq(format($$SELECT credits, closed_at IS NOT NULL FROM public.users WHERE id = %s$$, :'alice'),
  $$VALUES (0, true)$$, 'her account is closed, not deleted by the old cascade');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id = :alice AND entry_type = 'legacy'), 3,
  'and her history is kept');
SELECT is((SELECT count(*)::integer FROM public.generation_jobs WHERE user_id = :alice), 3, 'with her jobs');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles after all of it');

-- search_path hardening reaches upgraded databases too: every SECURITY DEFINER
-- function of public and creditgate runs with search_path = pg_catalog, pg_temp
-- (the project's own legacy trigger function handle_new_user, not creditgate's, is left as it was).
SELECT is_empty(
  $$SELECT p.oid::regprocedure::text FROM pg_proc p
    WHERE p.prosecdef AND p.pronamespace IN ('public'::regnamespace, 'creditgate'::regnamespace)
      AND p.proname <> 'handle_new_user'
      AND p.proconfig IS DISTINCT FROM ARRAY['search_path=pg_catalog, pg_temp']$$,
  'upgraded: every SECURITY DEFINER function of public and creditgate has search_path = pg_catalog, pg_temp');

SELECT * FROM finish();
ROLLBACK;
