-- Grants (top-ups): idempotent by key, scoped per user, bounded so that no
-- balance, hold or refund can ever overflow an integer.
BEGIN;
\ir _helpers.psql
SELECT plan(43);

SELECT tests.create_user('alice'), tests.create_user('bob'), tests.create_user('whale');
SELECT tests.as_role('service_role');

SELECT is(public.grant_credits(tests.id_of('alice'), 500, 'Stripe: 500 credits', 'evt_1', '{"invoice": "in_1"}'), 500,
  'a grant returns the new balance');
SELECT results_eq(
  format($$SELECT delta, balance_after, operation_type, description, entry_type, metadata
           FROM public.credit_ledger WHERE user_id = %L$$, tests.id_of('alice')),
  $$VALUES (500, 500, 'grant'::text, 'Stripe: 500 credits'::text, 'grant'::text, '{"invoice": "in_1", "idempotency_key": "evt_1"}'::jsonb)$$,
  'and records it in the ledger, with the key');
SELECT tests.fingerprint() AS before_retry \gset
SELECT is(public.grant_credits(tests.id_of('alice'), 500, 'Stripe: 500 credits', 'evt_1', '{"invoice": "in_1"}'), 500,
  'a webhook retry with the same key returns the original balance');
SELECT is(tests.fingerprint(), :'before_retry', 'and grants nothing');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 501, 'Stripe: 500 credits', 'evt_1', '{"invoice": "in_1"}')$$,
  tests.id_of('alice')), 'PT422', 'the same key with another amount is refused with PT422');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 500, 'Stripe: refund', 'evt_1', '{"invoice": "in_1"}')$$,
  tests.id_of('alice')), 'PT422', 'the same key with another reason is refused');
-- The same key for a charge is another key (scopes): 17-idempotency-scope.sql.
SELECT is(public.grant_credits(tests.id_of('bob'), 500, 'Stripe: 500 credits', 'evt_1', '{"invoice": "in_1"}'), 500,
  'bob''s evt_1 is his own grant: keys are scoped per user');
SELECT is(public.grant_credits(tests.id_of('alice'), 7, 'bonus'), 507, 'grants without a key add up');
SELECT is(public.grant_credits(tests.id_of('alice'), 7, 'bonus'), 514, 'each time');

-- Arguments
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 0, 'x')$$, tests.id_of('alice')),
  '22023', 'a grant of 0 is refused');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, -5, 'x')$$, tests.id_of('alice')),
  '22023', 'a negative grant is refused');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, NULL, 'x')$$, tests.id_of('alice')),
  '22023', 'a NULL grant is refused');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, NULL)$$, tests.id_of('alice')),
  '22023', 'a grant needs a reason');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, %L)$$, tests.id_of('alice'), repeat('r', 501)),
  '22023', 'a reason of 501 characters is refused');
SELECT is(public.grant_credits(tests.id_of('alice'), 1, repeat('r', 500)), 515, 'a reason of 500 characters is accepted');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, 'x', %L)$$, tests.id_of('alice'), repeat('k', 256)),
  '22023', 'a key of 256 characters is refused');
SELECT is(public.grant_credits(tests.id_of('alice'), 1, 'x', repeat('k', 255)), 516, 'a key of 255 characters is accepted');
SELECT * FROM tests.refused($$SELECT public.grant_credits('00000000-0000-4000-8000-000000000000', 5, 'x')$$,
  'PT404', 'a grant to an unknown user is refused');

-- -----------------------------------------------------------------------------
-- No integer overflow, anywhere
-- -----------------------------------------------------------------------------
SELECT is(public.grant_credits(tests.id_of('whale'), 1000000000, 'max grant'), 1000000000,
  'a grant of exactly 1000000000 (cost_credits_max) is accepted');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 1000000001, 'x')$$, tests.id_of('whale')),
  '22023', 'a grant of 1000000001 is refused');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 2147483647, 'x')$$, tests.id_of('whale')),
  '22023', 'a grant of 2^31 - 1 is an invalid argument, not an overflow');
SELECT is(public.grant_credits(tests.id_of('whale'), 1000000000, 'max grant'), 2000000000,
  'a balance of exactly 2000000000 (balance_credits_max) is reachable');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 1, 'x')$$, tests.id_of('whale')),
  '22023', 'one credit more is refused');
SELECT is(tests.error_of(format($$SELECT public.grant_credits(%L, 1, 'x')$$, tests.id_of('whale'))) -> 'details',
  '{"parameter": "p_amount", "value": 1, "balance": 2000000000, "held": 0, "max": 2000000000}'::jsonb,
  'with the balance, the open holds and the maximum in the details');

SELECT job_id AS whale_job FROM public.atomic_charge_credits(tests.id_of('whale'), 'video', 1000000000) \gset
SELECT is(tests.credits_of('whale'), 1000000000, 'a hold of 1000000000 leaves 1000000000');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 1, 'x')$$, tests.id_of('whale')),
  '22023', 'a grant is refused while balance + open holds are at the maximum, so the refund below cannot overflow');
SELECT is(public.refund_credits(tests.id_of('whale'), :'whale_job', 1000000000, 'failed'), 2000000000,
  'the refund of the hold brings the balance back to exactly the maximum');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'video', 2147483647)$$, tests.id_of('whale')),
  '22023', 'a charge of 2^31 - 1 is an invalid argument, not an overflow');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
