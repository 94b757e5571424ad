-- Who may do what: EXECUTE only where docs/rpc.md says, no direct writes by
-- any client role, rate_limits and idempotency_keys invisible to clients.
-- Each rejection is tried for real, as anon, as alice (authenticated) and as
-- service_role, and followed by a check that nothing changed.
BEGIN;
\ir _helpers.psql
SELECT plan(73);

SELECT tests.create_user('alice');
SELECT tests.give('alice', 100);
SELECT job_id AS alice_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 10, NULL, '{}', 900, now()) \gset

-- -----------------------------------------------------------------------------
-- The privilege matrix, read from the catalog
-- -----------------------------------------------------------------------------
CREATE TEMP TABLE contract (signature text, anon boolean, authenticated boolean, service_role boolean);
INSERT INTO contract VALUES
  ('atomic_charge_credits(uuid,text,integer,text,jsonb)', false, false, true),
  ('charge_credits(uuid,text,integer,text,jsonb,integer)', false, false, true),
  ('complete_generation_job(uuid,text,integer,integer)', false, false, true),
  ('refund_credits(uuid,uuid,integer,text)', false, false, true),
  ('grant_credits(uuid,integer,text,text,jsonb,timestamp with time zone,text,integer)', false, false, true),
  ('get_credit_balance(uuid)', false, false, true),
  ('get_my_credit_balance()', false, true, true),
  ('expire_stale_generation_jobs()', false, false, true),
  ('verify_credit_ledger()', false, false, true),
  ('check_rate_limit(text,text,integer,integer)', false, false, true),
  ('apply_rate_limit(text,integer,integer,integer)', false, false, true),
  ('charge_credits_with_limit(uuid,text,integer,text,integer,integer,text,jsonb,integer,integer)', false, false, true),
  ('cleanup_expired_rate_limits()', false, false, true),
  ('apply_rate_limits(jsonb)', false, false, true),
  ('charge_credits_with_limits(uuid,text,integer,jsonb,text,jsonb,integer)', false, false, true),
  ('apply_token_bucket(text,integer,numeric,integer)', false, false, true),
  ('peek_rate_limit(text,integer,integer)', false, false, true),
  ('reset_rate_limit(text)', false, false, true),
  ('get_rate_limit_usage(text,integer)', false, false, true),
  ('block_rate_limit_key(text,timestamptz,text)', false, false, true),
  ('unblock_rate_limit_key(text)', false, false, true),
  ('get_credit_lots(uuid)', false, false, true),
  ('revoke_credit_lot(uuid,text)', false, false, true),
  ('upsert_credit_plan(text,integer,text,integer,jsonb)', false, false, true),
  ('subscribe_credit_plan(uuid,text,timestamp with time zone)', false, false, true),
  ('cancel_credit_plan(uuid)', false, false, true),
  ('get_credit_events(uuid,bigint,integer)', false, false, true),
  ('set_credit_settings(integer,integer)', false, false, true),
  ('set_low_balance_threshold(uuid,integer)', false, false, true),
  ('process_stripe_event(text,text,jsonb,jsonb)', false, false, true),
  ('claim_credit_event_deliveries(integer,integer)', false, false, true),
  ('record_credit_event_delivery(uuid,bigint,integer,integer,text)', false, false, true);

SELECT is_empty($$
  SELECT c.signature || ' for ' || r.role
  FROM contract c
  CROSS JOIN LATERAL (VALUES ('anon', c.anon), ('authenticated', c.authenticated), ('service_role', c.service_role)) AS r(role, allowed)
  WHERE has_function_privilege(r.role, ('public.' || c.signature)::regprocedure, 'EXECUTE') <> r.allowed
$$, 'EXECUTE on the contract functions is exactly as docs/rpc.md states, for anon, authenticated and service_role');

SELECT is_empty($$
  SELECT p.oid::regprocedure::text FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
  WHERE (p.pronamespace = 'creditgate'::regnamespace
         OR p.oid IN (SELECT ('public.' || c.signature)::regprocedure FROM contract c))
    AND a.grantee = 0
$$, 'no creditgate function is executable by PUBLIC (PostgreSQL''s default grant is revoked)');

SELECT is_empty($$
  SELECT p.oid::regprocedure::text || ' for ' || r.role
  FROM pg_proc p, unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r(role)
  WHERE p.pronamespace = 'creditgate'::regnamespace AND has_function_privilege(r.role, p.oid, 'EXECUTE')
$$, 'no client role may execute an internal function (the clock-driven *_at ones included)');

SELECT ok(NOT has_schema_privilege(r, 'creditgate', 'USAGE'), r || ' cannot use the creditgate schema')
FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r;

SELECT is_empty($$
  SELECT t || ' ' || p || ' for ' || r
  FROM unnest(ARRAY['users', 'generation_jobs', 'credit_ledger', 'idempotency_keys', 'rate_limits', 'credit_settings',
    'credit_user_settings', 'credit_plans', 'credit_lots', 'credit_lot_movements', 'credit_plan_subscriptions', 'credit_events', 'stripe_events', 'credit_webhook_deliveries']) AS t,
       unnest(ARRAY['INSERT', 'UPDATE', 'REFERENCES']) AS p,
       unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
  WHERE has_any_column_privilege(r, 'public.' || t, p)
  UNION ALL
  SELECT t || ' ' || p || ' for ' || r
  FROM unnest(ARRAY['users', 'generation_jobs', 'credit_ledger', 'idempotency_keys', 'rate_limits', 'credit_settings',
    'credit_user_settings', 'credit_plans', 'credit_lots', 'credit_lot_movements', 'credit_plan_subscriptions', 'credit_events', 'stripe_events', 'credit_webhook_deliveries']) AS t,
       unnest(ARRAY['DELETE', 'TRUNCATE', 'TRIGGER']) AS p,
       unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
  WHERE has_table_privilege(r, 'public.' || t, p)
$$, 'no client role may write any creditgate table, nor reference, truncate or trigger it');

SELECT is_empty($$
  SELECT t || ' for ' || r.role
  FROM unnest(ARRAY['users', 'generation_jobs', 'credit_ledger', 'idempotency_keys', 'rate_limits', 'credit_settings',
    'credit_user_settings', 'credit_plans', 'credit_lots', 'credit_lot_movements', 'credit_plan_subscriptions', 'credit_events', 'stripe_events', 'credit_webhook_deliveries']) AS t,
       (VALUES ('anon', ARRAY[]::text[]),
               ('authenticated', ARRAY['users', 'generation_jobs', 'credit_ledger', 'credit_lots', 'credit_events']),
               ('service_role', ARRAY['users', 'generation_jobs', 'credit_ledger', 'idempotency_keys', 'rate_limits',
                 'credit_settings', 'credit_user_settings', 'credit_plans', 'credit_lots', 'credit_lot_movements',
                 'credit_plan_subscriptions', 'credit_events', 'stripe_events', 'credit_webhook_deliveries'])) AS r(role, readable)
  WHERE has_any_column_privilege(r.role, 'public.' || t, 'SELECT') <> (t = ANY (r.readable))
$$, 'SELECT: anon nothing, authenticated its own rows of five tables (lots and events too), service_role everything');

SELECT ok(NOT has_sequence_privilege(r, pg_get_serial_sequence('public.credit_ledger', 'id'), 'USAGE,UPDATE,SELECT'),
  r || ' has no privilege on the ledger id sequence')
FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r;
SELECT is_empty($$
  SELECT s || ' for ' || r FROM unnest(ARRAY[pg_get_serial_sequence('public.credit_lot_movements', 'id'),
    pg_get_serial_sequence('public.credit_events', 'id')]) AS s, unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
  WHERE has_sequence_privilege(r, s, 'USAGE') OR has_sequence_privilege(r, s, 'UPDATE') OR has_sequence_privilege(r, s, 'SELECT')
$$, 'no client role has a privilege on the movements or events id sequences');

-- -----------------------------------------------------------------------------
-- anon: calls nothing, reads nothing
-- -----------------------------------------------------------------------------
SELECT tests.as_role('anon');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1)$$, tests.id_of('alice')),
  '42501', 'anon cannot charge');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 10, 'x')$$, tests.id_of('alice'), :'alice_job'),
  '42501', 'anon cannot refund');
SELECT * FROM tests.refused($$SELECT * FROM public.check_rate_limit('1.2.3.4', 'ip', 5, 60)$$,
  '42501', 'anon cannot touch rate limits');
SELECT * FROM tests.refused($$SELECT public.get_my_credit_balance()$$, '42501', 'anon has no balance to read');
SELECT * FROM tests.refused($$SELECT * FROM public.users$$, '42501', 'anon cannot read users');
SELECT * FROM tests.refused($$SELECT * FROM public.rate_limits$$, '42501', 'anon cannot read rate_limits');
SELECT * FROM tests.refused($$INSERT INTO public.rate_limits (key, max_requests, window_seconds, expires_at)
  VALUES ('ip:1.2.3.4', 5, 60, now())$$, '42501', 'anon cannot write rate_limits (the seed let it)');
RESET ROLE;

-- -----------------------------------------------------------------------------
-- authenticated (alice): reads her own rows, calls only get_my_credit_balance
-- -----------------------------------------------------------------------------
SELECT tests.as_user('alice');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 10, 'x')$$, tests.id_of('alice'), :'alice_job'),
  '42501', 'alice cannot refund herself (the seed let anyone)');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 1000, 'free money')$$, tests.id_of('alice')),
  '42501', 'alice cannot grant herself credits');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', -50)$$, tests.id_of('alice')),
  '42501', 'alice cannot call the charge (with a negative cost, the seed minted credits)');
SELECT * FROM tests.refused(format($$SELECT * FROM public.complete_generation_job(%L)$$, :'alice_job'),
  '42501', 'alice cannot complete her job');
SELECT * FROM tests.refused(format($$SELECT creditgate.grant_credits_at(%L, 5, 'x', NULL, '{}', NULL, NULL, NULL, now())$$, tests.id_of('alice')),
  '42501', 'alice cannot call an internal function');
SELECT * FROM tests.refused(format($$UPDATE public.users SET credits = 1000000 WHERE id = %L$$, tests.id_of('alice')),
  '42501', 'alice cannot update her balance');
SELECT * FROM tests.refused(format($$INSERT INTO public.credit_ledger (user_id, delta, balance_after, operation_type, entry_type)
  VALUES (%L, 5, 95, 'grant', 'grant')$$, tests.id_of('alice')), '42501', 'alice cannot insert ledger rows');
SELECT * FROM tests.refused(format($$DELETE FROM public.generation_jobs WHERE id = %L$$, :'alice_job'),
  '42501', 'alice cannot delete her job');
SELECT * FROM tests.refused($$SELECT * FROM public.idempotency_keys$$, '42501', 'alice cannot read idempotency_keys');
SELECT * FROM tests.refused($$SELECT * FROM public.rate_limits$$, '42501', 'alice cannot read rate_limits');
SELECT is(public.get_my_credit_balance(), 90, 'alice can read her own balance through get_my_credit_balance');
SELECT * FROM tests.refused(format($$SELECT public.revoke_credit_lot(l.id, 'x') FROM public.credit_lots l WHERE l.user_id = %L$$,
  tests.id_of('alice')), '42501', 'alice cannot revoke her lot');
SELECT * FROM tests.refused(format($$SELECT * FROM public.subscribe_credit_plan(%L, 'any')$$, tests.id_of('alice')),
  '42501', 'alice cannot subscribe herself to a plan');
SELECT * FROM tests.refused(format($$SELECT public.set_low_balance_threshold(%L, 5)$$, tests.id_of('alice')),
  '42501', 'alice cannot set her threshold through the function');
SELECT * FROM tests.refused(format($$UPDATE public.credit_lots SET remaining = 1000 WHERE user_id = %L$$, tests.id_of('alice')),
  '42501', 'alice cannot write her lots');
SELECT * FROM tests.refused($$INSERT INTO public.credit_events (user_id, type) SELECT id, 'depleted' FROM public.users$$,
  '42501', 'alice cannot write events');
SELECT * FROM tests.refused($$SELECT * FROM public.credit_lot_movements$$, '42501', 'alice cannot read lot movements');
SELECT is((SELECT count(*)::integer FROM public.credit_lots), 1, 'alice reads her one lot');
RESET ROLE;

-- -----------------------------------------------------------------------------
-- service_role: calls the contract, never writes a table directly
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT * FROM tests.refused(format($$UPDATE public.users SET credits = 0 WHERE id = %L$$, tests.id_of('alice')),
  '42501', 'service_role cannot update a balance directly');
SELECT * FROM tests.refused($$DELETE FROM public.credit_ledger$$, '42501', 'service_role cannot delete ledger rows');
SELECT * FROM tests.refused($$TRUNCATE public.rate_limits$$, '42501', 'service_role cannot truncate rate_limits');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_at(%L, 'image', 1, NULL, '{}', 900, now())$$,
  tests.id_of('alice')), '42501', 'service_role cannot call the clock-driven internals');
SELECT * FROM tests.refused($$SELECT public.get_my_credit_balance()$$, '42501',
  'get_my_credit_balance needs a user in the JWT');
SELECT is(public.grant_credits(tests.id_of('alice'), 5, 'support gesture'), 95, 'service_role can grant');
SELECT is((SELECT count(*)::integer FROM public.users WHERE id = tests.id_of('alice')), 1, 'service_role reads any account');
RESET ROLE;

SELECT is(tests.credits_of('alice'), 95, 'in the end only the service_role grant changed alice''s balance');

SELECT * FROM finish();
ROLLBACK;
