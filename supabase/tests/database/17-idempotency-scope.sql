-- Idempotency keys are scoped per user AND per kind of request: 'charge'
-- (charge_credits, atomic_charge_credits, charge_credits_with_limit(s)) and
-- 'grant' (grant_credits). A purchase webhook's grant keyed by its Stripe
-- event id and a charge that used the same string are two keys: both succeed,
-- each replays within its own scope, and a different request with the same
-- key is still PT422 idempotency_key_reused within the scope.
BEGIN;
\ir _helpers.psql
SELECT plan(48);

SELECT tests.create_user('alice'), tests.create_user('bob'), tests.create_user('carol');
SELECT tests.give('alice', 100), tests.give('bob', 5);
SELECT tests.as_role('service_role');

-- -----------------------------------------------------------------------------
-- A charge keyed evt_123, then a grant keyed evt_123
-- -----------------------------------------------------------------------------
SELECT job_id AS alice_job FROM public.charge_credits(tests.id_of('alice'), 'image', 10, 'evt_123') \gset
SELECT is(tests.credits_of('alice'), 90, 'charge then grant: the charge keyed evt_123 is made');
SELECT is(public.grant_credits(tests.id_of('alice'), 10, 'r', 'evt_123'), 100,
  'and grant_credits(alice, 10, ''r'', ''evt_123'') succeeds (it was PT422 idempotency_key_reused)');
SELECT results_eq(
  format($$SELECT entry_type, delta, metadata ->> 'idempotency_key' FROM public.credit_ledger
           WHERE user_id = %L AND entry_type IN ('charge', 'grant') AND metadata ->> 'idempotency_key' = 'evt_123' ORDER BY id$$,
    tests.id_of('alice')),
  $$VALUES ('charge'::text, -10, 'evt_123'::text), ('grant', 10, 'evt_123')$$,
  'one charge and one grant, both keyed evt_123');

-- Replays, each in its own scope.
SELECT tests.fingerprint() AS before_replays \gset
SELECT results_eq(
  format($$SELECT job_id, new_balance, replayed FROM public.charge_credits(%L, 'image', 10, 'evt_123')$$, tests.id_of('alice')),
  format($$VALUES (%L::uuid, 90, true)$$, :'alice_job'),
  'the charge replays: its original job and balance (90, from before the grant), replayed = true');
SELECT is(public.grant_credits(tests.id_of('alice'), 10, 'r', 'evt_123'), 100,
  'the grant replays: its original balance');
SELECT results_eq(
  format($$SELECT job_id, new_balance FROM public.atomic_charge_credits(%L, 'image', 10, 'evt_123')$$, tests.id_of('alice')),
  format($$VALUES (%L::uuid, 90)$$, :'alice_job'),
  'atomic_charge_credits shares the charge scope: the same request replays the same job');
SELECT results_eq(
  format($$SELECT job_id, new_balance, replayed FROM public.charge_credits_with_limits(%L, 'image', 10, '[]', 'evt_123')$$,
    tests.id_of('alice')),
  format($$VALUES (%L::uuid, 90, true)$$, :'alice_job'),
  'so does charge_credits_with_limits');
SELECT is(tests.fingerprint(), :'before_replays', 'the replays charged and granted nothing, wrote nothing');
SELECT is(tests.credits_of('alice'), 100, 'alice''s balance: 100 - 10 + 10');

-- A different request with the same key is still PT422, within the scope.
SELECT * FROM tests.refused(format($$SELECT * FROM public.charge_credits(%L, 'image', 11, 'evt_123')$$, tests.id_of('alice')),
  'PT422', 'a charge keyed evt_123 with another cost is refused');
SELECT is(tests.error_of(format($$SELECT * FROM public.charge_credits(%L, 'image', 11, 'evt_123')$$, tests.id_of('alice'))),
  jsonb_build_object('code', 'PT422', 'message', 'This idempotency key was already used for a different request',
    'details', jsonb_build_object('idempotency_key', 'evt_123', 'operation', 'charge'), 'hint', 'idempotency_key_reused'),
  'with the code idempotency_key_reused, naming the charge scope');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 11, 'r', 'evt_123')$$, tests.id_of('alice')),
  'PT422', 'a grant keyed evt_123 with another amount is refused');
SELECT is(tests.error_of(format($$SELECT public.grant_credits(%L, 10, 'other reason', 'evt_123')$$, tests.id_of('alice'))),
  jsonb_build_object('code', 'PT422', 'message', 'This idempotency key was already used for a different request',
    'details', jsonb_build_object('idempotency_key', 'evt_123', 'operation', 'grant'), 'hint', 'idempotency_key_reused'),
  'with the code idempotency_key_reused, naming the grant scope');
SELECT * FROM tests.refused(
  format($$SELECT * FROM public.charge_credits_with_limit(%L, 'image', 10, 'scope-test', 5, 60, 'evt_123', '{"x": 1}')$$,
    tests.id_of('alice')),
  'PT422', 'charge_credits_with_limit with another request is refused in the charge scope (and spends no limit)');

-- -----------------------------------------------------------------------------
-- The other order: a grant keyed evt_123, then a charge keyed evt_123
-- -----------------------------------------------------------------------------
SELECT is(public.grant_credits(tests.id_of('bob'), 10, 'r', 'evt_123'), 15, 'grant then charge: the grant keyed evt_123 is made');
SELECT job_id AS bob_job FROM public.charge_credits(tests.id_of('bob'), 'image', 15, 'evt_123') \gset
SELECT is(tests.credits_of('bob'), 0, 'and a charge keyed evt_123 succeeds (it was PT422)');
SELECT tests.fingerprint() AS before_bob_replays \gset
SELECT is(public.grant_credits(tests.id_of('bob'), 10, 'r', 'evt_123'), 15, 'the grant replays its original balance');
SELECT results_eq(
  format($$SELECT job_id, new_balance, replayed FROM public.charge_credits(%L, 'image', 15, 'evt_123')$$, tests.id_of('bob')),
  format($$VALUES (%L::uuid, 0, true)$$, :'bob_job'),
  'the charge replays its original job');
SELECT is(tests.fingerprint(), :'before_bob_replays', 'and nothing was granted or charged twice');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 10, 'r', 'evt_123', '{"invoice": "in_2"}')$$, tests.id_of('bob')),
  'PT422', 'a grant keyed evt_123 with other metadata is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'video', 15, 'evt_123')$$, tests.id_of('bob')),
  'PT422', 'a charge keyed evt_123 with another operation type is refused');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id = tests.id_of('bob')
           AND metadata ->> 'idempotency_key' = 'evt_123'), 2, 'bob: one grant and one charge for evt_123, no more');

-- Keys are still per user: carol's evt_123 is hers, in each scope.
SELECT is(public.grant_credits(tests.id_of('carol'), 10, 'r', 'evt_123'), 10, 'carol''s grant evt_123 is her own');
SELECT is((SELECT new_balance FROM public.charge_credits(tests.id_of('carol'), 'image', 3, 'evt_123')), 7,
  'and so is her charge evt_123');

SELECT results_eq(
  format($$SELECT operation, key, job_id IS NOT NULL, response FROM public.idempotency_keys WHERE user_id = %L ORDER BY operation$$,
    tests.id_of('alice')),
  format($$VALUES ('charge'::text, 'evt_123'::text, true, (SELECT response FROM public.idempotency_keys
             WHERE user_id = %L AND operation = 'charge')), ('grant', 'evt_123', false, '{"new_balance": 100}'::jsonb)$$,
    tests.id_of('alice')),
  'alice has two rows for evt_123: the charge (pointing at its job) and the grant');
RESET ROLE;

-- -----------------------------------------------------------------------------
-- The schema: unique per (user_id, scope, key), scope one of two
-- -----------------------------------------------------------------------------
SELECT col_is_pk('public', 'idempotency_keys', ARRAY['user_id', 'operation', 'key'],
  'the primary key of idempotency_keys is (user_id, operation, key): operation is the scope');
SELECT is(
  (SELECT string_agg(u.columns, ' | ') FROM (
     SELECT string_agg(a.attname::text, ',' ORDER BY k.position) AS columns
     FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, position), pg_attribute a
     WHERE i.indrelid = 'public.idempotency_keys'::regclass AND i.indisunique
       AND a.attrelid = i.indrelid AND a.attnum = k.attnum
     GROUP BY i.indexrelid) u),
  'user_id,operation,key',
  'it is the only unique index: none on (user_id, key) is left');
SELECT col_not_null('public', 'idempotency_keys', 'operation', 'every key has a scope');
SELECT is((SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'idempotency_keys_scope_known'
           AND conrelid = 'public.idempotency_keys'::regclass),
  $$CHECK ((operation = ANY (ARRAY['charge'::text, 'grant'::text])))$$, 'the scope is charge or grant');
SELECT throws_ok(format($$INSERT INTO public.idempotency_keys (user_id, key, operation, request_hash, response)
  VALUES (%L, 'evt_123', 'grant', 'h', '{}')$$, tests.id_of('alice')), '23505', NULL,
  'the database itself refuses a second grant row for alice''s evt_123');
SELECT throws_ok(format($$INSERT INTO public.idempotency_keys (user_id, key, operation, request_hash, response)
  VALUES (%L, 'evt_124', 'refund', 'h', '{}')$$, tests.id_of('alice')), '23514', NULL,
  'and a row of an unknown scope');

-- The internal claim and record refuse an unknown scope (invalid_argument), changing nothing.
SELECT * FROM tests.refused(format($$SELECT creditgate.claim_idempotency_key(%L, 'evt_123', 'refund', 'h')$$, tests.id_of('alice')),
  '22023', 'claim_idempotency_key refuses a scope other than charge and grant');
SELECT * FROM tests.refused(format($$SELECT creditgate.claim_idempotency_key(%L, 'evt_123', NULL, 'h')$$, tests.id_of('alice')),
  '22023', 'and a NULL scope');
SELECT is(tests.error_of(format($$SELECT creditgate.claim_idempotency_key(%L, 'evt_123', 'refund', 'h')$$, tests.id_of('alice'))) ->> 'hint',
  'invalid_argument', 'with the code invalid_argument');
SELECT * FROM tests.refused(format($$SELECT creditgate.record_idempotency_key(%L, 'evt_125', 'Charge', 'h', '{}', NULL)$$, tests.id_of('alice')),
  '22023', 'record_idempotency_key refuses an unknown scope too');

-- -----------------------------------------------------------------------------
-- In flight: a running charge holds its key in the charge scope only
-- -----------------------------------------------------------------------------
CREATE EXTENSION IF NOT EXISTS dblink WITH SCHEMA extensions;
SELECT dblink_connect('first_request', format('host=127.0.0.1 port=%s dbname=%s user=postgres password=postgres',
  current_setting('port'), current_database()));
SELECT dblink_exec('first_request', 'BEGIN');
SELECT * FROM dblink('first_request', format($$
  INSERT INTO auth.users (id, email) VALUES (%L, 'frank@example.test');
  SELECT creditgate.grant_credits_at(%L, 100, 'setup', NULL, '{}', NULL, NULL, NULL, now())::text$$,
  tests.id_of('frank'), tests.id_of('frank'))) AS t(balance text);
SELECT is((SELECT new_balance FROM dblink('first_request', format(
    $$SELECT new_balance FROM public.charge_credits(%L, 'image', 10, 'evt_9')$$, tests.id_of('frank')))
    AS t(new_balance integer)), 90, 'a charge keyed evt_9 is still running in another session');
SELECT is(tests.error_of(format($$SELECT * FROM public.charge_credits(%L, 'image', 10, 'evt_9')$$, tests.id_of('frank'))) ->> 'hint',
  'idempotency_in_flight', 'a charge with that key is in flight (409)');
SELECT is(tests.error_of(format($$SELECT public.grant_credits(%L, 10, 'r', 'evt_9')$$, tests.id_of('frank'))) ->> 'hint',
  'user_not_found', 'a grant with that key is not: it goes on to the user (whom this session cannot see yet)');
SELECT dblink_exec('first_request', 'ROLLBACK');
SELECT dblink_disconnect('first_request');

-- charge_checked writes creditgate.charge_request_hash out: the same fingerprint.
SELECT tests.create_user('hana');
SELECT tests.give('hana', 10);
SELECT job_id FROM public.charge_credits(tests.id_of('hana'), 'image', 2, 'hash-1', '{"a": 1}', 600);
SELECT is((SELECT k.request_hash FROM public.idempotency_keys k
           WHERE k.user_id = tests.id_of('hana') AND k.operation = 'charge' AND k.key = 'hash-1'),
          creditgate.charge_request_hash('image', 2, '{"a": 1}', 600),
  'a charge stores creditgate.charge_request_hash''s fingerprint');

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'after all of it, the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
