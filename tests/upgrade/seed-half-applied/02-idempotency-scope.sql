-- Idempotency scopes after the migrations ran over the seed's idempotency_keys
-- (UNIQUE (key, user_id), `operation` = the charge's operation type, no
-- response): every row kept, each a charge (the seed keyed only charges), the
-- seed's unique constraint replaced by the primary key (user_id, operation, key).
BEGIN;
\ir ../../../supabase/tests/database/_helpers.psql
SELECT plan(17);

\set alice '''a11ce000-0000-4000-8000-000000000001''::uuid'
\set bob '''b0b00000-0000-4000-8000-000000000002''::uuid'

SELECT results_eq(
  $$SELECT user_id::text, key, operation, status, request_hash, response, job_id, created_at FROM public.idempotency_keys ORDER BY key$$,
  $$VALUES ('a11ce000-0000-4000-8000-000000000001'::text, 'k1'::text, 'charge'::text, 'started'::text, NULL::text, NULL::jsonb, NULL::uuid,
            '2024-01-02 10:00:00+00'::timestamptz),
           ('b0b00000-0000-4000-8000-000000000002', 'k2', 'charge', 'started', NULL, NULL, NULL, '2024-01-02 11:00:00+00')$$,
  'the seed''s keys are kept, each in the charge scope: alice''s ''image'' and bob''s charge whose operation type was ''grant'' (no response: a seed charge)');
SELECT results_eq(
  $$SELECT user_id::text, idempotency_key, operation_type FROM public.generation_jobs WHERE idempotency_key IS NOT NULL ORDER BY idempotency_key$$,
  $$VALUES ('a11ce000-0000-4000-8000-000000000001'::text, 'k1'::text, 'image'::text), ('b0b00000-0000-4000-8000-000000000002', 'k2', 'grant')$$,
  'the operation types the seed had written as `operation` are still on the jobs');

SELECT col_is_pk('public', 'idempotency_keys', ARRAY['user_id', 'operation', 'key'],
  'the primary key is (user_id, operation, key)');
SELECT is(
  (SELECT string_agg(u.columns, ' | ') FROM (
     SELECT string_agg(a.attname::text, ',' ORDER BY k.position) AS columns
     FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, position), pg_attribute a
     WHERE i.indrelid = 'public.idempotency_keys'::regclass AND i.indisunique
       AND a.attrelid = i.indrelid AND a.attnum = k.attnum
     GROUP BY i.indexrelid) u),
  'user_id,operation,key', 'and the only unique index: the seed''s UNIQUE (key, user_id) is gone');
SELECT hasnt_index('public', 'idempotency_keys', 'idempotency_keys_key_user_id_key', 'by its name too');
SELECT col_not_null('public', 'idempotency_keys', 'operation', 'the seed''s nullable operation is NOT NULL');
SELECT is((SELECT convalidated FROM pg_constraint WHERE conname = 'idempotency_keys_scope_known'), true,
  'the scope check holds for every upgraded row (validated)');

SELECT tests.as_role('service_role');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%s, 'image', 5, 'k1')$$, :'alice'),
  'PT422', 'a seed-era charge key is still refused for a charge');
SELECT is(public.grant_credits(:alice, 5, 'purchase', 'k1'), 60, 'but a grant keyed k1 succeeds: another scope');
SELECT is(public.grant_credits(:alice, 5, 'purchase', 'k1'), 60, 'and replays');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%s, 6, 'purchase', 'k1')$$, :'alice'),
  'PT422', 'another grant with k1 is refused within the grant scope');
SELECT * FROM tests.refused(format($$SELECT * FROM public.charge_credits(%s, 'grant', 5, 'k2')$$, :'bob'),
  'PT422', 'bob''s seed-era k2 is refused for a charge');
SELECT is(public.grant_credits(:bob, 5, 'purchase', 'k2'), 15, 'and free for a grant');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
