-- Charges: a hold that debits now and opens a job; errors with their
-- SQLSTATEs and details; every limit at its bound and one past it; idempotency
-- keys scoped per user, with replay and PT422.
BEGIN;
\ir _helpers.psql
SELECT plan(68);

SELECT tests.create_user('alice'), tests.create_user('bob'), tests.create_user('carol');
SELECT tests.give('alice', 100), tests.give('bob', 50);
SELECT tests.as_role('service_role');

-- -----------------------------------------------------------------------------
-- A charge
-- -----------------------------------------------------------------------------
SELECT job_id AS job, new_balance AS balance
FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 30, NULL, '{"model": "flux"}') \gset
SELECT is(:balance, 70, 'atomic_charge_credits returns the new balance');
SELECT is(tests.credits_of('alice'), 70, 'and the balance is debited at once (the hold)');
SELECT results_eq(
  format($$SELECT user_id, operation_type, status, cost, metadata, expires_at - created_at
           FROM public.generation_jobs WHERE id = %L$$, :'job'),
  format($$VALUES (%L::uuid, 'image'::text, 'pending'::text, 30, '{"model": "flux"}'::jsonb, interval '900 seconds')$$,
    tests.id_of('alice')),
  'it opens a pending job holding the cost, with a 15-minute deadline');
SELECT results_eq(
  format($$SELECT delta, balance_after, operation_type, description, entry_type, job_id, metadata ->> 'job_id', metadata ->> 'model'
           FROM public.credit_ledger WHERE user_id = %L AND entry_type = 'charge'$$, tests.id_of('alice')),
  format($$VALUES (-30, 70, 'image'::text, 'image generation'::text, 'charge'::text, %L::uuid, %L::text, 'flux'::text)$$,
    :'job', :'job'),
  'and appends one ledger row: delta -30, balance_after 70, the job in column and metadata');

SELECT results_eq(
  format($$SELECT new_balance, replayed, expires_at > now() + interval '59 seconds' AND expires_at < clock_timestamp() + interval '61 seconds'
           FROM public.charge_credits(%L, 'transcription', 20, NULL, '{}', 60)$$, tests.id_of('alice')),
  $$VALUES (50, false, true)$$,
  'charge_credits takes a hold length and reports replayed = false and the deadline');

-- -----------------------------------------------------------------------------
-- Refusals, each leaving everything as it was
-- -----------------------------------------------------------------------------
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 51)$$, tests.id_of('alice')),
  'PT402', 'a charge above the balance is refused with PT402 (HTTP 402)');
SELECT is(tests.error_of(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 51)$$, tests.id_of('alice'))),
  '{"code": "PT402", "message": "Insufficient credits: has 50 needs 51", "details": {"balance": 50, "needed": 51}, "hint": "insufficient_credits"}'::jsonb,
  'it keeps the seed''s message and carries {"balance","needed"} and the code insufficient_credits');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(tests.id_of('bob'), 'image', 50)), 0,
  'a charge of exactly the balance is allowed and leaves 0');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1)$$, tests.id_of('bob')),
  'PT402', 'one credit more is refused');
SELECT * FROM tests.refused($$SELECT * FROM public.atomic_charge_credits('00000000-0000-4000-8000-000000000000', 'image', 1)$$,
  'PT404', 'an unknown user is refused with PT404');
SELECT is(tests.error_of($$SELECT * FROM public.atomic_charge_credits('00000000-0000-4000-8000-000000000000', 'image', 1)$$) - 'details',
  '{"code": "PT404", "message": "User not found", "hint": "user_not_found"}'::jsonb,
  'with the seed''s message "User not found" and the code user_not_found');
SELECT * FROM tests.refused($$SELECT * FROM public.atomic_charge_credits(NULL, 'image', 1)$$,
  '22023', 'a NULL user is an invalid argument');

-- -----------------------------------------------------------------------------
-- Limits: at the bound, and one past it
-- -----------------------------------------------------------------------------
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 0)$$, tests.id_of('alice')),
  '22023', 'a cost of 0 is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', -10)$$, tests.id_of('alice')),
  '22023', 'a negative cost is refused (in the seed it minted credits)');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', NULL)$$, tests.id_of('alice')),
  '22023', 'a NULL cost is refused');
SELECT is(tests.error_of(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', -10)$$, tests.id_of('alice'))) -> 'details',
  '{"parameter": "p_cost", "value": -10, "min": 1, "max": 1000000000}'::jsonb, 'and the details name the parameter and its bounds');
SELECT tests.give('carol', 1000000000);
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(tests.id_of('carol'), 'image', 1000000000)), 0,
  'a cost of exactly 1000000000 (cost_credits_max) is accepted');
SELECT tests.give('carol', 1000000000);
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1000000001)$$, tests.id_of('carol')),
  '22023', 'a cost of 1000000001 is refused, even with the balance for it');

SELECT is((SELECT new_balance FROM public.atomic_charge_credits(tests.id_of('alice'), repeat('o', 64), 1)), 49,
  'an operation type of 64 characters is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, %L, 1)$$, tests.id_of('alice'), repeat('o', 65)),
  '22023', 'an operation type of 65 characters is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, '', 1)$$, tests.id_of('alice')),
  '22023', 'an empty operation type is refused');

SELECT is((SELECT new_balance FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 1, repeat('k', 255))), 48,
  'an idempotency key of 255 characters is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1, %L)$$, tests.id_of('alice'), repeat('k', 256)),
  '22023', 'an idempotency key of 256 characters is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1, '')$$, tests.id_of('alice')),
  '22023', 'an empty idempotency key is refused');

SELECT is(octet_length(jsonb_build_object('pad', repeat('x', 4085))::text), 4096, '(a metadata object of 4096 bytes)');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 1, NULL,
  jsonb_build_object('pad', repeat('x', 4085)))), 47, 'metadata of exactly 4096 bytes is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1, NULL, %L)$$,
  tests.id_of('alice'), jsonb_build_object('pad', repeat('x', 4086))), '22023', 'metadata of 4097 bytes is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1, NULL, '[1, 2]')$$,
  tests.id_of('alice')), '22023', 'metadata that is not a JSON object is refused');
SELECT is((SELECT new_balance FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 1, NULL, NULL)), 46,
  'NULL metadata is taken as {}');

SELECT is((SELECT new_balance FROM public.charge_credits(tests.id_of('alice'), 'image', 1, NULL, '{}', 86400)), 45,
  'a hold of 86400 seconds (hold_seconds_max) is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM public.charge_credits(%L, 'image', 1, NULL, '{}', 86401)$$, tests.id_of('alice')),
  '22023', 'a hold of 86401 seconds is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.charge_credits(%L, 'image', 1, NULL, '{}', 0)$$, tests.id_of('alice')),
  '22023', 'a hold of 0 seconds is refused');

-- -----------------------------------------------------------------------------
-- Idempotency keys
-- -----------------------------------------------------------------------------
SELECT job_id AS keyed_job, new_balance AS keyed_balance
FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 5, 'order-1', '{"prompt": "cat"}') \gset
SELECT is(:keyed_balance, 40, 'a charge with a key is made once');
SELECT tests.fingerprint() AS before_retry \gset
SELECT results_eq(
  format($$SELECT job_id, new_balance FROM public.atomic_charge_credits(%L, 'image', 5, 'order-1', '{"prompt": "cat"}')$$,
    tests.id_of('alice')),
  format($$VALUES (%L::uuid, 40)$$, :'keyed_job'),
  'a retry with the same key and request returns the original job and balance (the seed raised 23505)');
SELECT is(tests.fingerprint(), :'before_retry', 'and charges nothing, writes nothing');
SELECT results_eq(
  format($$SELECT job_id, new_balance, replayed FROM public.charge_credits(%L, 'image', 5, 'order-1', '{"prompt": "cat"}')$$,
    tests.id_of('alice')),
  format($$VALUES (%L::uuid, 40, true)$$, :'keyed_job'),
  'charge_credits says replayed = true');
SELECT tests.give('alice', 10);
SELECT results_eq(
  format($$SELECT job_id, new_balance FROM public.atomic_charge_credits(%L, 'image', 5, 'order-1', '{"prompt": "cat"}')$$,
    tests.id_of('alice')),
  format($$VALUES (%L::uuid, 40)$$, :'keyed_job'),
  'a later retry still returns the original balance, not the current one');
SELECT is(tests.credits_of('alice'), 50, 'and the current balance is untouched');

SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 6, 'order-1', '{"prompt": "cat"}')$$,
  tests.id_of('alice')), 'PT422', 'the same key with another cost is refused with PT422');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'video', 5, 'order-1', '{"prompt": "cat"}')$$,
  tests.id_of('alice')), 'PT422', 'the same key with another operation type is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 5, 'order-1', '{"prompt": "dog"}')$$,
  tests.id_of('alice')), 'PT422', 'the same key with other metadata is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.charge_credits(%L, 'image', 5, 'order-1', '{"prompt": "cat"}', 60)$$,
  tests.id_of('alice')), 'PT422', 'the same key with another hold length is refused');
-- The same key for a grant is another key (scopes): 17-idempotency-scope.sql.
SELECT is(tests.error_of(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 6, 'order-1', '{"prompt": "cat"}')$$,
  tests.id_of('alice'))) ->> 'hint', 'idempotency_key_reused', 'with the code idempotency_key_reused');

SELECT isnt((SELECT job_id FROM public.atomic_charge_credits(tests.id_of('carol'), 'image', 5, 'order-1', '{"prompt": "cat"}')),
  :'keyed_job'::uuid, 'keys are scoped per user: carol''s order-1 is a charge of her own (the seed''s keys were global)');
SELECT is(tests.credits_of('carol'), 999999995, 'and it charged carol');

SELECT public.refund_credits(tests.id_of('alice'), :'keyed_job', 5, 'model failed');
SELECT results_eq(
  format($$SELECT job_id, new_balance FROM public.atomic_charge_credits(%L, 'image', 5, 'order-1', '{"prompt": "cat"}')$$,
    tests.id_of('alice')),
  format($$VALUES (%L::uuid, 40)$$, :'keyed_job'),
  'a retry after the job was refunded still returns the original job: a key never charges twice');
SELECT is(tests.credits_of('alice'), 55, 'and the balance keeps the refund');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'after all of it, the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
