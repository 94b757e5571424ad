-- The schema and the SQL contract (docs/rpc.md): tables, the seed's names,
-- signatures and result shapes, security definer everywhere, plpgsql_check.
BEGIN;
\ir _helpers.psql
SELECT plan(47);

SELECT has_schema('creditgate', 'internals live in the private creditgate schema');
SELECT tables_are('public', ARRAY['users', 'generation_jobs', 'credit_ledger', 'idempotency_keys', 'rate_limits',
    'credit_settings', 'credit_user_settings', 'credit_plans', 'credit_lots', 'credit_lot_movements',
    'credit_plan_subscriptions', 'credit_events', 'stripe_events', 'credit_webhook_deliveries'],
  'public has exactly the creditgate tables');

-- The seed's ledger columns, now all required.
SELECT col_not_null('public', 'credit_ledger', c, 'credit_ledger.' || c || ' is NOT NULL')
FROM unnest(ARRAY['delta', 'balance_after', 'operation_type', 'metadata', 'entry_type', 'created_at']) AS c;
SELECT has_column('public', 'credit_ledger', 'description', 'credit_ledger keeps the seed''s description column');
SELECT col_type_is('public', 'credit_ledger', 'id', 'bigint', 'ledger ids are bigint');
SELECT col_type_is('public', 'credit_ledger', 'delta', 'integer', 'delta is an integer, as the seed expects');
SELECT col_default_is('public', 'credit_ledger', 'created_at', 'clock_timestamp()',
  'ledger timestamps come from the clock, not from transaction start');

-- Every function of the contract, with its exact arguments and result shape.
SELECT is(
  (SELECT pg_get_function_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)
   FROM pg_proc p WHERE p.oid = ('public.' || f.signature)::regprocedure),
  f.expected, f.signature || ' has the contract''s arguments and result')
FROM (VALUES
  ('atomic_charge_credits(uuid,text,integer,text,jsonb)',
   $$p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb -> TABLE(job_id uuid, new_balance integer)$$),
  ('charge_credits(uuid,text,integer,text,jsonb,integer)',
   $$p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900 -> TABLE(job_id uuid, new_balance integer, replayed boolean, expires_at timestamp with time zone)$$),
  ('complete_generation_job(uuid,text,integer,integer)',
   $$p_job_id uuid, p_result_url text DEFAULT NULL::text, p_actual_cost integer DEFAULT NULL::integer, p_actual_units integer DEFAULT NULL::integer -> TABLE(job_id uuid, status text, new_balance integer, refunded integer)$$),
  ('refund_credits(uuid,uuid,integer,text)',
   $$p_user_id uuid, p_job_id uuid, p_amount integer, p_reason text -> integer$$),
  ('grant_credits(uuid,integer,text,text,jsonb,timestamp with time zone,text,integer)',
   $$p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_category text DEFAULT 'paid'::text, p_priority integer DEFAULT 50 -> integer$$),
  ('get_credit_balance(uuid)', $$p_user_id uuid -> integer$$),
  ('get_my_credit_balance()', $$ -> integer$$),
  ('expire_stale_generation_jobs()', $$ -> integer$$),
  ('verify_credit_ledger()', $$ -> TABLE(user_id uuid, problem text, details jsonb)$$),
  ('check_rate_limit(text,text,integer,integer)',
   $$p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer -> TABLE(allowed boolean, current_count integer, window_end timestamp with time zone, remaining integer)$$),
  ('apply_rate_limit(text,integer,integer,integer)',
   $$p_key text, p_limit integer, p_window_seconds integer, p_cost integer DEFAULT 1 -> TABLE(allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)$$),
  ('charge_credits_with_limit(uuid,text,integer,text,integer,integer,text,jsonb,integer,integer)',
   $$p_user_id uuid, p_operation_type text, p_cost integer, p_limit_key text, p_limit integer, p_window_seconds integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900, p_limit_cost integer DEFAULT 1 -> TABLE(allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamp with time zone, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)$$),
  ('cleanup_expired_rate_limits()', $$ -> integer$$),
  ('apply_rate_limits(jsonb)',
   $$p_limits jsonb -> TABLE(key text, allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)$$),
  ('charge_credits_with_limits(uuid,text,integer,jsonb,text,jsonb,integer)',
   $$p_user_id uuid, p_operation_type text, p_cost integer, p_limits jsonb, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900 -> TABLE(allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamp with time zone, limits jsonb)$$),
  ('apply_token_bucket(text,integer,numeric,integer)',
   $$p_key text, p_capacity integer, p_refill_per_second numeric, p_cost integer DEFAULT 1 -> TABLE(allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)$$),
  ('peek_rate_limit(text,integer,integer)',
   $$p_key text, p_limit integer, p_window_seconds integer -> TABLE(allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)$$),
  ('reset_rate_limit(text)', $$p_key text -> integer$$),
  ('get_rate_limit_usage(text,integer)',
   $$p_key_prefix text, p_max_rows integer DEFAULT 100 -> TABLE(key text, "limit" integer, window_seconds integer, used integer, reset_seconds integer)$$),
  ('block_rate_limit_key(text,timestamptz,text)',
   $$p_key text, p_until timestamp with time zone, p_reason text -> TABLE(key text, blocked_until timestamp with time zone, reason text)$$),
  ('unblock_rate_limit_key(text)', $$p_key text -> boolean$$)
) AS f(signature, expected);

SELECT is(
  (SELECT count(*)::integer FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname = 'public' AND p.proname IN ('atomic_charge_credits', 'charge_credits', 'complete_generation_job',
     'refund_credits', 'grant_credits', 'get_credit_balance', 'get_my_credit_balance', 'expire_stale_generation_jobs',
     'verify_credit_ledger', 'check_rate_limit', 'apply_rate_limit', 'charge_credits_with_limit',
     'cleanup_expired_rate_limits', 'apply_rate_limits', 'charge_credits_with_limits', 'apply_token_bucket',
     'peek_rate_limit', 'reset_rate_limit', 'get_rate_limit_usage', 'block_rate_limit_key', 'unblock_rate_limit_key')),
  21, 'each contract function has exactly one version (no older overload left callable)');

-- Security: SECURITY DEFINER, search_path pinned to pg_catalog, pg_temp (every name is
-- qualified; the temporary schema searched last, so a session cannot shadow a type).
SELECT is_empty($$
  SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE (n.nspname = 'creditgate' OR (n.nspname = 'public' AND p.proname IN (
           'atomic_charge_credits', 'charge_credits', 'complete_generation_job', 'refund_credits', 'grant_credits',
           'get_credit_balance', 'get_my_credit_balance', 'expire_stale_generation_jobs', 'verify_credit_ledger',
           'check_rate_limit', 'apply_rate_limit', 'charge_credits_with_limit', 'cleanup_expired_rate_limits',
           'apply_rate_limits', 'charge_credits_with_limits', 'apply_token_bucket', 'peek_rate_limit',
           'reset_rate_limit', 'get_rate_limit_usage', 'block_rate_limit_key', 'unblock_rate_limit_key')))
    AND NOT (p.prosecdef AND p.proconfig = ARRAY['search_path=pg_catalog, pg_temp'])
$$, 'every creditgate function is SECURITY DEFINER with search_path pinned to pg_catalog, pg_temp');
SELECT cmp_ok(
  (SELECT count(*)::integer FROM pg_proc p WHERE p.pronamespace = 'creditgate'::regnamespace), '>=', 40,
  'the check above saw the internal functions');

-- plpgsql_check: no errors in any plpgsql function (trigger functions checked against their table).
SELECT is_empty($$
  SELECT p.oid::regprocedure::text || ': ' || c.message
  FROM pg_proc p
  LEFT JOIN LATERAL (SELECT t.tgrelid FROM pg_trigger t WHERE t.tgfoid = p.oid LIMIT 1) t ON true
  CROSS JOIN LATERAL extensions.plpgsql_check_function_tb(p.oid,
    CASE WHEN p.prorettype = 'trigger'::regtype THEN coalesce(t.tgrelid, 'public.credit_ledger'::regclass) ELSE 0 END) c
  WHERE p.prolang = (SELECT l.oid FROM pg_language l WHERE l.lanname = 'plpgsql')
    AND p.pronamespace IN ('creditgate'::regnamespace, 'public'::regnamespace)
    AND c.level = 'error'
$$, 'plpgsql_check finds no error in any function');

-- The ledger is append-only by triggers, not by the seed's silent rules.
SELECT has_trigger('public', 'credit_ledger', 'credit_ledger_append_only', 'UPDATE and DELETE are refused by a trigger');
SELECT has_trigger('public', 'credit_ledger', 'credit_ledger_append_only_truncate', 'TRUNCATE is refused by a trigger');
SELECT is_empty($$SELECT rulename FROM pg_rules WHERE schemaname = 'public' AND tablename = 'credit_ledger'$$,
  'credit_ledger has no rules (DO INSTEAD NOTHING fails silently)');
SELECT has_trigger('auth', 'users', 'on_auth_user_created_creditgate', 'a new auth user gets an account');
SELECT has_trigger('auth', 'users', 'on_auth_user_deleted_creditgate', 'deleting an auth user closes the account');

-- Row-level security on every table.
SELECT is_empty($$
  SELECT c.relname FROM pg_class c
  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND NOT c.relrowsecurity
    AND c.relname IN ('users', 'generation_jobs', 'credit_ledger', 'idempotency_keys', 'rate_limits')
$$, 'row-level security is enabled on every creditgate table');
SELECT policies_are('public', 'rate_limits', ARRAY[]::name[], 'rate_limits has no policy: no client sees a row');
SELECT policies_are('public', 'credit_ledger', ARRAY['credit_ledger_select_own', 'credit_ledger_only_own'],
  'credit_ledger: a user reads their own rows only');

-- Exactly-once settlement is also a database constraint.
SELECT has_index('public', 'credit_ledger', 'credit_ledger_one_settlement_per_job',
  'a unique index allows one settlement entry per job');

-- The sweeper and the cleanup are scheduled where pg_cron exists (Supabase).
SELECT CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron')
  THEN is(tests.scalar($$SELECT count(*) FROM cron.job
           WHERE jobname IN ('creditgate-expire-holds', 'creditgate-cleanup-rate-limits')$$), '2',
          'pg_cron runs the sweeper and the rate-limit cleanup')
  ELSE skip('pg_cron is not installed in this database', 1) END;

SELECT * FROM finish();
ROLLBACK;
