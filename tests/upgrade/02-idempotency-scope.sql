-- Idempotency scopes on the upgraded legacy database (tests/upgrade/fixture.sql
-- had no idempotency_keys: the migrations created it), then the upgrade of a
-- database that an earlier version of these migrations had migrated: its
-- idempotency_keys unique per (user_id, key), with the rows that version's
-- charges and grants wrote. The schema migration runs again over it (as a
-- re-run of the migrations would), here inside the test's transaction.
BEGIN;
\ir ../../supabase/tests/database/_helpers.psql
SELECT plan(19);

\set bob '''b0b00000-0000-4000-8000-000000000002''::uuid'
\set carol '''ca401000-0000-4000-8000-000000000003''::uuid'

/** The unique indexes of idempotency_keys, each as its columns in order. */
CREATE FUNCTION tests.idempotency_unique_indexes() RETURNS text
LANGUAGE sql AS $$
  SELECT string_agg(u.columns, ' | ' ORDER BY u.columns) FROM (
    SELECT string_agg(a.attname::text, ',' ORDER BY k.position) AS columns
    FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, position), pg_attribute a
    WHERE i.indrelid = 'public.idempotency_keys'::regclass AND i.indisunique
      AND a.attrelid = i.indrelid AND a.attnum = k.attnum
    GROUP BY i.indexrelid) u
$$;

-- -----------------------------------------------------------------------------
-- The legacy upgrade: scoped from the start
-- -----------------------------------------------------------------------------
SELECT col_is_pk('public', 'idempotency_keys', ARRAY['user_id', 'operation', 'key'],
  'upgraded legacy database: the primary key of idempotency_keys is (user_id, operation, key)');
SELECT is(tests.idempotency_unique_indexes(), 'user_id,operation,key', 'and it is the only unique index');
SELECT tests.as_role('service_role');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(:carol, 'image', 10, 'evt_123')), 30,
  'a legacy user''s charge keyed evt_123');
SELECT is(public.grant_credits(:carol, 10, 'r', 'evt_123'), 40, 'and her grant keyed evt_123 both succeed');
SELECT is(public.grant_credits(:carol, 10, 'r', 'evt_123'), 40, 'each replays in its scope: the grant');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(:carol, 'image', 10, 'evt_123')), 30, 'and the charge');
SELECT is((SELECT credits FROM public.users WHERE id = :carol), 40, 'nothing was charged or granted twice');
RESET ROLE;

-- -----------------------------------------------------------------------------
-- A database migrated by the earlier version: unique per (user_id, key)
-- -----------------------------------------------------------------------------
DELETE FROM public.idempotency_keys WHERE user_id = :carol;
ALTER TABLE public.idempotency_keys
  DROP CONSTRAINT idempotency_keys_pkey,
  DROP CONSTRAINT idempotency_keys_scope_known,
  ADD PRIMARY KEY (user_id, key);
COMMENT ON COLUMN public.idempotency_keys.operation IS NULL;
SELECT is(tests.idempotency_unique_indexes(), 'user_id,key', 'the earlier shape: unique per (user_id, key)');

-- What that version's functions wrote: the same rows as today's ('charge'
-- with its job, 'grant' with its new balance), one key per (user, key).
SELECT tests.as_role('service_role');
SELECT job_id AS bob_job FROM public.charge_credits(:bob, 'image', 10, 'evt_1') \gset
SELECT public.grant_credits(:bob, 20, 'Stripe', 'evt_2');
SELECT job_id AS bob_limited_job FROM public.charge_credits_with_limits(:bob, 'text', 1, '[]', 'evt_3') \gset
RESET ROLE;
CREATE TEMPORARY TABLE earlier_rows ON COMMIT DROP AS
  SELECT user_id, key, status, request_hash, response, job_id, created_at FROM public.idempotency_keys;

-- The migrations run again.
\o /dev/null
\ir ../../supabase/migrations/20250601000100_creditgate_schema.sql
\o
SELECT results_eq(
  $$SELECT key, operation, job_id FROM public.idempotency_keys WHERE user_id = 'b0b00000-0000-4000-8000-000000000002' ORDER BY key$$,
  format($$VALUES ('evt_1'::text, 'charge'::text, %L::uuid), ('evt_2', 'grant', NULL), ('evt_3', 'charge', %L)$$,
    :'bob_job', :'bob_limited_job'),
  'every row keeps its scope: the charges (pointing at their jobs) and the grant');
SELECT is_empty(
  $$SELECT user_id, key, status, request_hash, response, job_id, created_at FROM public.idempotency_keys
    EXCEPT SELECT * FROM earlier_rows$$,
  'no row changed');
SELECT is((SELECT count(*)::integer FROM public.idempotency_keys), (SELECT count(*)::integer FROM earlier_rows), 'and none was lost');
SELECT col_is_pk('public', 'idempotency_keys', ARRAY['user_id', 'operation', 'key'],
  'the primary key (user_id, key) was replaced by (user_id, operation, key)');
SELECT is(tests.idempotency_unique_indexes(), 'user_id,operation,key', 'and no unique index on (user_id, key) is left');
SELECT is((SELECT convalidated FROM pg_constraint WHERE conname = 'idempotency_keys_scope_known'), true, 'the scope check is back, validated');

-- And again: nothing changes.
SELECT md5(string_agg(k::text, ',' ORDER BY k.user_id, k.operation, k.key)) AS rows_before FROM public.idempotency_keys k \gset
\o /dev/null
\ir ../../supabase/migrations/20250601000100_creditgate_schema.sql
\o
SELECT is((SELECT md5(string_agg(k::text, ',' ORDER BY k.user_id, k.operation, k.key)) FROM public.idempotency_keys k),
  :'rows_before', 'a further run changes no row');

SELECT tests.as_role('service_role');
SELECT is(public.grant_credits(:bob, 5, 'Stripe', 'evt_1'), 94, 'after it, a grant keyed like an earlier charge succeeds');
SELECT results_eq($$SELECT job_id, replayed FROM public.charge_credits('b0b00000-0000-4000-8000-000000000002', 'image', 10, 'evt_1')$$,
  format($$VALUES (%L::uuid, true)$$, :'bob_job'), 'and the earlier charge still replays its job');
SELECT is(public.grant_credits(:bob, 20, 'Stripe', 'evt_2'), 90, 'the earlier grant still replays its balance');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
