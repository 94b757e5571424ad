-- Lots on upgraded databases (docs/rpc.md, "Upgrade"). First the legacy
-- fixture itself: every balance from before creditgate became one `legacy`
-- lot. Then a database that the previous version of these migrations (no
-- lots) had migrated, with open holds: that state is rebuilt here (the lot
-- tables dropped, the earlier signatures of grant_credits, grant_credits_at
-- and apply_delta put back, the earlier entry-type check), the migrations run
-- again over it inside the test's transaction, and the holds' credits go back
-- to the legacy lot.
BEGIN;
\ir ../../supabase/tests/database/_helpers.psql
SELECT plan(20);

-- -----------------------------------------------------------------------------
-- The legacy fixture
-- -----------------------------------------------------------------------------
SELECT is_empty($$
  SELECT u.id FROM public.users u
  WHERE u.credits > 0 AND (SELECT array_agg(l.category || ':' || l.granted || ':' || l.remaining || ':' || (l.expires_at IS NULL))
                           FROM public.credit_lots l WHERE l.user_id = u.id)
                          IS DISTINCT FROM ARRAY['legacy:' || u.credits || ':' || u.credits || ':true']
$$, 'every balance from before creditgate is one legacy lot of that balance, never expiring');
SELECT is_empty($$SELECT FROM public.credit_lots l JOIN public.users u ON u.id = l.user_id WHERE u.credits <= 0$$,
  'an empty (or negative) legacy balance has no lot');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger() WHERE problem LIKE '%lot%'$$, 'and the lots reconcile');

-- -----------------------------------------------------------------------------
-- A database the previous version migrated, with open holds
-- -----------------------------------------------------------------------------
SELECT tests.create_user('uma');
SELECT tests.create_user('vic');
SELECT tests.give('uma', 100);
SELECT tests.give('vic', 10);
SELECT job_id AS uma_job FROM creditgate.charge_credits_at(tests.id_of('uma'), 'image', 30, NULL, '{}', 900, now()) \gset
SELECT job_id AS vic_job FROM creditgate.charge_credits_at(tests.id_of('vic'), 'image', 10, NULL, '{}', 900, now()) \gset
SELECT job_id AS done_job FROM creditgate.charge_credits_at(tests.id_of('uma'), 'text', 20, NULL, '{}', 900, now()) \gset
SELECT creditgate.complete_generation_job_at(:'done_job', NULL, 15, now());
-- This fixture's signup trigger may give a starting balance: read what they have.
SELECT tests.credits_of('uma') AS uma_balance, tests.credits_of('vic') AS vic_balance \gset

-- The previous version's state: no lot tables, its signatures, its entry types.
DROP TABLE public.credit_events, public.credit_plan_subscriptions, public.credit_lot_movements, public.credit_lots,
  public.credit_plans, public.credit_user_settings, public.credit_settings CASCADE;
DROP FUNCTION public.grant_credits(uuid, integer, text, text, jsonb, timestamptz, text, integer);
CREATE FUNCTION public.grant_credits(p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb) RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$;
DROP FUNCTION creditgate.grant_credits_at(uuid, integer, text, text, jsonb, timestamptz, text, integer, timestamptz);
CREATE FUNCTION creditgate.grant_credits_at(uuid, integer, text, text, jsonb, timestamptz) RETURNS integer
  LANGUAGE sql AS $$ SELECT 0 $$;
DROP FUNCTION creditgate.apply_delta(uuid, integer, text, text, text, jsonb, uuid);
CREATE FUNCTION creditgate.apply_delta(uuid, integer, text, text, text, jsonb, uuid) RETURNS integer
  LANGUAGE sql AS $$ SELECT 0 $$;
ALTER TABLE public.credit_ledger DROP CONSTRAINT credit_ledger_entry_type_in_list,
  ADD CONSTRAINT credit_ledger_entry_type_listed CHECK (entry_type IN ('charge', 'refund', 'expiry', 'completion', 'grant',
    'opening_balance', 'account_closure', 'legacy'));
SELECT is(to_regclass('public.credit_lots'), NULL, 'the previous version''s state: no lots');

-- The migrations run again.
\o /dev/null
\ir ../../supabase/migrations/20250601000100_creditgate_schema.sql
\ir ../../supabase/migrations/20250601000200_creditgate_credits.sql
\ir ../../supabase/migrations/20250601000300_creditgate_rate_limits.sql
\ir ../../supabase/migrations/20250601000400_creditgate_accounts.sql
\ir ../../supabase/migrations/20250601000500_creditgate_lots.sql
\o

SELECT results_eq(
  $$SELECT category, granted, remaining, expires_at IS NULL, reason FROM public.credit_lots WHERE user_id = tests.id_of('uma')$$,
  format($$VALUES ('legacy'::text, %s, %s, true, 'balance before lots'::text)$$, :uma_balance + 30, :uma_balance),
  'uma: one legacy lot; granted = her balance + her open hold (30), remaining = her balance');
SELECT results_eq(
  $$SELECT granted, remaining FROM public.credit_lots WHERE user_id = tests.id_of('vic')$$,
  format($$VALUES (%s, %s)$$, :vic_balance + 10, :vic_balance), 'vic: a legacy lot of his balance and his hold of 10');
SELECT is((SELECT m.delta FROM public.credit_lot_movements m JOIN public.credit_ledger c ON c.id = m.ledger_id
           WHERE c.job_id = :'uma_job' AND c.entry_type = 'charge'), -30,
  'the open hold''s charge entry draws its 30 from the legacy lot');
SELECT is((SELECT count(*)::integer FROM public.credit_lot_movements m JOIN public.credit_ledger c ON c.id = m.ledger_id
           WHERE c.job_id = :'done_job'), 0, 'a settled job gets no movement');
SELECT is((SELECT count(*)::integer FROM pg_proc WHERE proname = 'grant_credits' AND pronamespace = 'public'::regnamespace), 1,
  'one grant_credits: the five-argument version was replaced');
SELECT is(pg_get_function_result('creditgate.apply_delta(uuid, integer, text, text, text, jsonb, uuid)'::regprocedure),
  'TABLE(new_balance integer, entry_id bigint)', 'apply_delta has its new result');
SELECT is((SELECT lots_since_entry_id FROM public.credit_settings),
  (SELECT max(id) FROM public.credit_ledger), 'entries from before lots are exempt from the movement check');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger and the lots reconcile');

-- The holds settle back into the legacy lot.
SELECT is(creditgate.refund_credits_at(tests.id_of('uma'), :'uma_job', NULL, 'failed', now()), :uma_balance + 30,
  'uma''s hold is refunded');
SELECT is((SELECT remaining FROM public.credit_lots WHERE user_id = tests.id_of('uma')), :uma_balance + 30, 'into her legacy lot');
SELECT is((SELECT refunded FROM creditgate.complete_generation_job_at(:'vic_job', NULL, 4, now())), 6,
  'vic''s hold completes at 4');
SELECT is((SELECT remaining FROM public.credit_lots WHERE user_id = tests.id_of('vic')), :vic_balance + 6,
  'the unused 6 return to his legacy lot');

-- A further run changes nothing; new grants open their own lots.
SELECT md5(string_agg(l::text, ',' ORDER BY l.id)) AS lots_before FROM public.credit_lots l \gset
\o /dev/null
\ir ../../supabase/migrations/20250601000500_creditgate_lots.sql
\o
SELECT is((SELECT md5(string_agg(l::text, ',' ORDER BY l.id)) FROM public.credit_lots l), :'lots_before',
  'a further run changes no lot');
SELECT tests.as_role('service_role');
SELECT is(public.grant_credits(tests.id_of('uma'), 5, 'after the upgrade'), :uma_balance + 35,
  'the seed''s grant call works after the upgrade');
SELECT job_id AS later_job FROM public.charge_credits(tests.id_of('uma'), 'image', :uma_balance + 33) \gset
RESET ROLE;
SELECT is((SELECT string_agg(l.category || ':' || -m.delta, ',' ORDER BY m.id) FROM public.credit_lot_movements m
           JOIN public.credit_lots l ON l.id = m.lot_id
           JOIN public.credit_ledger c ON c.id = m.ledger_id WHERE c.job_id = :'later_job'),
  format('legacy:%s,paid:3', :uma_balance + 30), 'a charge after the upgrade spans the legacy lot (older) and the new one');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger and the lots still reconcile');

SELECT * FROM finish();
ROLLBACK;
