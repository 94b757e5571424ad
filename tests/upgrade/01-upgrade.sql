-- After the migrations ran (twice) over tests/upgrade/fixture.sql: every
-- legacy row and balance kept, the ledger backfilled and reconciled from the
-- first minute, the seed's failure ("null value in column amount") gone, the
-- older rate limiter replaced, the seed's functions working on legacy users,
-- and the legacy tables locked down like fresh ones.
BEGIN;
\ir ../../supabase/tests/database/_helpers.psql
SELECT plan(37);

\set alice '''a11ce000-0000-4000-8000-000000000001''::uuid'
\set bob '''b0b00000-0000-4000-8000-000000000002''::uuid'
\set carol '''ca401000-0000-4000-8000-000000000003''::uuid'
\set dave '''da7e0000-0000-4000-8000-000000000004''::uuid'
\set frank '''f4a4c000-0000-4000-8000-000000000006''::uuid'
\set grace '''96ace000-0000-4000-8000-000000000007''::uuid'
\set zed '''2ed00000-0000-4000-8000-000000000009''::uuid'

-- -----------------------------------------------------------------------------
-- Every row and every balance kept
-- -----------------------------------------------------------------------------
SELECT results_eq($$SELECT id::text, credits FROM public.users ORDER BY id::text$$,
  $$VALUES ('96ace000-0000-4000-8000-000000000007', 0), ('a11ce000-0000-4000-8000-000000000001', 120),
           ('b0b00000-0000-4000-8000-000000000002', 80), ('ca401000-0000-4000-8000-000000000003', 40),
           ('da7e0000-0000-4000-8000-000000000004', 0), ('e5140000-0000-4000-8000-000000000005', 0),
           ('f4a4c000-0000-4000-8000-000000000006', 7)$$,
  'every balance is kept (a NULL balance is 0), and grace, an auth user without a row, got one');
SELECT results_eq(
  $$SELECT legacy_id::text, user_id::text, amount, delta, reason, created_at FROM public.credit_ledger WHERE entry_type = 'legacy' ORDER BY legacy_id$$,
  $$VALUES
    ('00000000-0000-4000-a000-000000000001', 'a11ce000-0000-4000-8000-000000000001', 100, 100, 'purchase', '2024-01-01 10:00:00+00'::timestamptz),
    ('00000000-0000-4000-a000-000000000002', 'a11ce000-0000-4000-8000-000000000001', 50, 50, 'purchase', '2024-01-02 10:00:00+00'),
    ('00000000-0000-4000-a000-000000000003', 'a11ce000-0000-4000-8000-000000000001', -30, -30, 'image', '2024-01-03 10:00:00+00'),
    ('00000000-0000-4000-a000-000000000005', 'b0b00000-0000-4000-8000-000000000002', 50, 50, 'purchase', '2024-01-02 09:00:00+00'),
    ('00000000-0000-4000-a000-000000000006', 'da7e0000-0000-4000-8000-000000000004', 5, 5, 'promo', '2024-01-04 10:00:00+00'),
    ('00000000-0000-4000-a000-000000000007', '2ed00000-0000-4000-8000-000000000009', 20, 20, 'purchase', '2023-12-01 10:00:00+00'),
    ('00000000-0000-4000-a000-000000000008', '2ed00000-0000-4000-8000-000000000009', -20, -20, 'image', '2023-12-02 10:00:00+00')$$,
  'every legacy ledger row is kept with its id (now legacy_id), amount, reason and time; delta is the amount');
SELECT results_eq(
  $$SELECT legacy_id::text FROM public.credit_ledger WHERE entry_type = 'legacy' ORDER BY id$$,
  $$VALUES ('00000000-0000-4000-a000-000000000007'), ('00000000-0000-4000-a000-000000000008'),
           ('00000000-0000-4000-a000-000000000001'), ('00000000-0000-4000-a000-000000000005'),
           ('00000000-0000-4000-a000-000000000002'), ('00000000-0000-4000-a000-000000000003'),
           ('00000000-0000-4000-a000-000000000006')$$,
  'legacy rows got bigint ids in time order');
SELECT results_eq(format($$SELECT delta, balance_after FROM public.credit_ledger WHERE user_id = %s AND entry_type = 'legacy' ORDER BY id$$, :'alice'),
  $$VALUES (100, 100), (50, 150), (-30, 120)$$, 'balance_after is backfilled as the running sum');

-- -----------------------------------------------------------------------------
-- Reconciliation holds from the first minute
-- -----------------------------------------------------------------------------
SELECT results_eq(
  $$SELECT user_id::text, delta, balance_after, (metadata ->> 'ledger_sum_before')::integer FROM public.credit_ledger
    WHERE entry_type = 'opening_balance' ORDER BY user_id::text$$,
  $$VALUES ('b0b00000-0000-4000-8000-000000000002', 30, 80, 50), ('ca401000-0000-4000-8000-000000000003', 40, 40, 0),
           ('da7e0000-0000-4000-8000-000000000004', -5, 0, 5), ('f4a4c000-0000-4000-8000-000000000006', 7, 7, 0)$$,
  'each balance the ledger does not explain got one opening-balance entry (once, though the migrations ran twice)');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'verify_credit_ledger() is empty right after the upgrade');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id = :alice AND entry_type <> 'legacy'), 0,
  'alice''s balance was explained, so she got no entry');

-- -----------------------------------------------------------------------------
-- The schema is the fresh one
-- -----------------------------------------------------------------------------
SELECT col_type_is('public', 'credit_ledger', 'id', 'bigint', 'the ledger id is a bigint');
SELECT col_is_pk('public', 'credit_ledger', 'id', 'and the primary key');
SELECT col_is_pk('public', 'users', 'id', 'users got a primary key');
SELECT col_not_null('public', 'users', 'credits', 'users.credits is NOT NULL');
SELECT col_is_null('public', 'credit_ledger', 'amount', 'amount no longer has to be given');
SELECT is((SELECT convalidated FROM pg_constraint WHERE conname = 'credit_ledger_user_fk'), false,
  'the ledger''s key to users stays NOT VALID for zed''s rows, whose account is gone');
SELECT throws_ok(format($$INSERT INTO public.credit_ledger (user_id, delta, balance_after, operation_type, entry_type)
  VALUES (%s, 1, 1, 'grant', 'grant')$$, :'zed'), '23503', NULL, 'but new rows are checked');
SELECT is_empty($$SELECT rulename FROM pg_rules WHERE tablename = 'credit_ledger'$$, 'the ledger has no rules');
SELECT * FROM tests.refused($$DELETE FROM public.credit_ledger$$, '23001', 'and is append-only, legacy rows included');

-- -----------------------------------------------------------------------------
-- The seed's functions work on legacy users
-- -----------------------------------------------------------------------------
SELECT job_id AS alice_job FROM public.atomic_charge_credits(:alice, 'image', 20) \gset
SELECT is((SELECT credits FROM public.users WHERE id = :alice), 100,
  'atomic_charge_credits works on a legacy user (no "null value in column amount")');
SELECT results_eq(format($$SELECT delta, amount, balance_after FROM public.credit_ledger WHERE job_id = %L$$, :'alice_job'),
  $$VALUES (-20, -20, 100)$$, 'and its ledger row fills the legacy amount for old readers, chaining from the legacy rows');
SELECT is(public.refund_credits(:alice, :'alice_job', 20, 'failed'), 120, 'refund_credits works');
SELECT is(public.grant_credits(:dave, 15, 'promo'), 15, 'grant_credits works on the user whose balance was NULL');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(:frank, 'image', 7)), 0,
  'frank, who has no auth user, can still spend his legacy balance');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'and the ledger still reconciles');

-- -----------------------------------------------------------------------------
-- The older rate limiter is replaced
-- -----------------------------------------------------------------------------
SELECT hasnt_function('public', 'check_rate_limit', ARRAY['text', 'integer'], 'the older check_rate_limit(text, integer) is gone');
SELECT has_column('public', 'rate_limits', 'bucket_costs', 'rate_limits has the new shape');
SELECT policies_are('public', 'rate_limits', ARRAY[]::name[], 'and the policy that let anyone write it is gone');
SELECT results_eq($$SELECT allowed, current_count FROM public.check_rate_limit('a11ce', 'user', 1, 60)$$,
  $$VALUES (true, 1)$$, 'check_rate_limit with the seed''s signature works');

-- -----------------------------------------------------------------------------
-- Locked down like a fresh database
-- -----------------------------------------------------------------------------
SELECT is_empty($$
  SELECT t || ' ' || p || ' for ' || r
  FROM unnest(ARRAY['users', 'credit_ledger', 'rate_limits']) AS t,
       unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p,
       unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
  WHERE has_table_privilege(r, 'public.' || t, p)
$$, 'no client role may write the legacy tables (Supabase had granted them everything)');
SELECT ok(NOT has_function_privilege('anon', 'public.atomic_charge_credits(uuid,text,integer,text,jsonb)', 'EXECUTE'),
  'anon cannot charge');
SELECT set_config('request.jwt.claims', json_build_object('sub', :alice, 'role', 'authenticated')::text, true),
       set_config('role', 'authenticated', true);
SELECT results_eq($$SELECT id FROM public.users$$, format($$VALUES (%s)$$, :'alice'), 'alice reads only her own balance');
SELECT is((SELECT count(DISTINCT user_id)::integer FROM public.credit_ledger), 1, 'and only her own ledger rows');
RESET ROLE;

-- -----------------------------------------------------------------------------
-- New signups and deletions after the upgrade
-- -----------------------------------------------------------------------------
INSERT INTO auth.users (id, email) VALUES ('4e7a0000-0000-4000-8000-000000000008', 'henry@legacy.test');
SELECT results_eq($$SELECT entry_type, delta, balance_after FROM public.credit_ledger WHERE user_id = '4e7a0000-0000-4000-8000-000000000008'$$,
  $$VALUES ('opening_balance'::text, 10, 10)$$,
  'the legacy signup trigger still gives 10 credits, and creditgate records them');
SELECT lives_ok(format($$DELETE FROM auth.users WHERE id = %s$$, :'alice'), 'deleting a legacy auth user works');
SELECT results_eq(format($$SELECT credits, closed_at IS NOT NULL FROM public.users WHERE id = %s$$, :'alice'),
  $$VALUES (0, true)$$, 'and closes the account');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id = :alice AND entry_type = 'legacy'), 3,
  'keeping its legacy history');
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
