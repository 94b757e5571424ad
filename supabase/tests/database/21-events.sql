-- Balance events (docs/rpc.md, "Balance events"): low_balance when a change
-- crosses the user's threshold (a project default or the user's own),
-- depleted at 0, lot_expiring once per lot (by the sweeper), lot_expired,
-- hold_expired; written in the transaction of the change; each user reads
-- their own (RLS); get_credit_events pages them for the server.
BEGIN;
\ir _helpers.psql
SELECT plan(39);

SELECT tests.create_user('rita');
SELECT tests.create_user('sam');
CREATE FUNCTION tests.events(p_name text) RETURNS text
LANGUAGE sql AS $$
  SELECT coalesce(string_agg(e.type || coalesce(':' || (e.payload ->> 'balance'), ''), ',' ORDER BY e.id), '')
  FROM public.credit_events e WHERE e.user_id = tests.id_of(p_name)
$$;
/** Charges p_cost and completes the job at once (all of it kept): no hold left to expire. */
CREATE FUNCTION tests.spend(p_name text, p_cost integer) RETURNS integer
LANGUAGE sql AS $$
  SELECT d.new_balance FROM creditgate.charge_credits_at(tests.id_of(p_name), 'image', p_cost, NULL, '{}', 900, now()) c,
    LATERAL creditgate.complete_generation_job_at(c.job_id, NULL, NULL, now()) d
$$;

-- -----------------------------------------------------------------------------
-- low_balance and depleted (project default threshold: 10)
-- -----------------------------------------------------------------------------
SELECT is((SELECT low_balance_threshold FROM public.credit_settings), 10, 'the project''s default threshold is 10');
SELECT tests.give('rita', 20);
SELECT tests.spend('rita', 5);
SELECT is(tests.events('rita'), '', '20 -> 15: no event');
SELECT tests.spend('rita', 6);
SELECT is(tests.events('rita'), 'low_balance:9', '15 -> 9 crosses 10: low_balance');
SELECT is((SELECT payload - 'entry_id' FROM public.credit_events WHERE user_id = tests.id_of('rita')),
  '{"balance": 9, "previous_balance": 15, "threshold": 10}'::jsonb, 'its payload');
SELECT is((SELECT (payload ->> 'entry_id')::bigint FROM public.credit_events WHERE user_id = tests.id_of('rita')),
  (SELECT max(id) FROM public.credit_ledger WHERE user_id = tests.id_of('rita')), 'naming the ledger entry that crossed');
SELECT tests.spend('rita', 2);
SELECT is(tests.events('rita'), 'low_balance:9', '9 -> 7: already below, no second event');
SELECT tests.give('rita', 10);
SELECT tests.spend('rita', 8);
SELECT is(tests.events('rita'), 'low_balance:9,low_balance:9', '17 -> 9 crosses again: a second low_balance');
SELECT tests.spend('rita', 9);
SELECT is(tests.events('rita'), 'low_balance:9,low_balance:9,depleted:0', '9 -> 0: depleted');
SELECT tests.give('rita', 30);
SELECT tests.spend('rita', 30);
SELECT is(tests.events('rita'), 'low_balance:9,low_balance:9,depleted:0,low_balance:0,depleted:0',
  '30 -> 0 in one charge: low_balance and depleted');

-- A refused charge writes no event: events share the change's transaction.
SELECT tests.give('rita', 12);
SELECT * FROM tests.refused($$SELECT tests.spend('rita', 13)$$, 'PT402', 'a charge past the balance');
SELECT is(tests.events('rita'), 'low_balance:9,low_balance:9,depleted:0,low_balance:0,depleted:0', 'and no event');

-- The user's own threshold, and back to the project's.
SELECT tests.as_role('service_role');
SELECT is(public.set_low_balance_threshold(tests.id_of('sam'), 50), 50, 'sam''s threshold is 50');
RESET ROLE;
SELECT tests.give('sam', 60);
SELECT tests.spend('sam', 15);
SELECT is(tests.events('sam'), 'low_balance:45', '60 -> 45 crosses sam''s 50');
SELECT is((SELECT payload ->> 'threshold' FROM public.credit_events WHERE user_id = tests.id_of('sam')), '50', 'threshold 50');
SELECT tests.as_role('service_role');
SELECT is(public.set_low_balance_threshold(tests.id_of('sam'), NULL), 10, 'NULL: back to the project''s 10');
SELECT results_eq($$SELECT * FROM public.set_credit_settings(p_low_balance_threshold => 0)$$, $$VALUES (0, 259200)$$,
  'set_credit_settings: threshold 0 (never), the expiry notice unchanged');
RESET ROLE;
SELECT tests.spend('sam', 40);
SELECT is(tests.events('sam'), 'low_balance:45', 'threshold 0: 45 -> 5 writes no low_balance');

-- -----------------------------------------------------------------------------
-- lot_expiring (once per lot, by the sweeper), lot_expired, hold_expired
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT results_eq($$SELECT * FROM public.set_credit_settings(p_lot_expiring_seconds => 3600)$$, $$VALUES (0, 3600)$$,
  'the expiry notice: an hour before');
RESET ROLE;
SELECT creditgate.grant_credits_at(tests.id_of('sam'), 7, 'trial', NULL, '{}', now() + interval '2 hours', 'promotional', 50, now());
SELECT creditgate.expire_stale_generation_jobs_at(now() + interval '30 minutes');
SELECT is((SELECT count(*)::integer FROM public.credit_events WHERE user_id = tests.id_of('sam') AND type = 'lot_expiring'), 0,
  'two hours before: no notice yet');
SELECT creditgate.expire_stale_generation_jobs_at(now() + interval '70 minutes');
SELECT is((SELECT payload - 'lot_id' FROM public.credit_events WHERE user_id = tests.id_of('sam') AND type = 'lot_expiring'),
  jsonb_build_object('category', 'promotional', 'remaining', 7, 'expires_at', now() + interval '2 hours'),
  '50 minutes before: lot_expiring with what remains');
SELECT creditgate.expire_stale_generation_jobs_at(now() + interval '80 minutes');
SELECT is((SELECT count(*)::integer FROM public.credit_events WHERE user_id = tests.id_of('sam') AND type = 'lot_expiring'), 1,
  'once per lot');
SELECT creditgate.expire_stale_generation_jobs_at(now() + interval '2 hours');
SELECT is((SELECT payload ->> 'amount' FROM public.credit_events WHERE user_id = tests.id_of('sam') AND type = 'lot_expired'),
  '7', 'at its expiry the sweeper writes lot_expired');

SELECT job_id AS held FROM creditgate.charge_credits_at(tests.id_of('sam'), 'video', 3, NULL, '{}', 60, now()) \gset
SELECT creditgate.expire_stale_generation_jobs_at(now() + interval '2 minutes');
SELECT is((SELECT payload - 'entry_id' FROM public.credit_events WHERE user_id = tests.id_of('sam') AND type = 'hold_expired'),
  jsonb_build_object('job_id', :'held'::uuid, 'operation_type', 'video', 'cost', 3), 'an expired hold: hold_expired');

-- -----------------------------------------------------------------------------
-- Reading events: each user their own (RLS); get_credit_events for the server
-- -----------------------------------------------------------------------------
SELECT tests.as_user('rita');
SELECT is((SELECT count(*)::integer FROM public.credit_events), 5, 'rita reads her five events');
SELECT is((SELECT count(*)::integer FROM public.credit_events WHERE user_id = tests.id_of('sam')), 0, 'and none of sam''s');
SELECT is((SELECT count(*)::integer FROM public.credit_lots WHERE user_id = tests.id_of('sam')), 0, 'nor his lots');
SELECT ok((SELECT count(*) FROM public.credit_lots) > 0, 'she reads her own lots');
SELECT * FROM tests.refused(format($$SELECT * FROM public.get_credit_events(%L)$$, tests.id_of('rita')), '42501',
  'rita cannot call get_credit_events');
RESET ROLE;
SELECT tests.as_role('anon');
SELECT * FROM tests.refused($$SELECT * FROM public.credit_events$$, '42501', 'anon reads no events');
RESET ROLE;

SELECT tests.as_role('service_role');
SELECT is((SELECT string_agg(type, ',' ORDER BY id) FROM public.get_credit_events(tests.id_of('rita'))),
  'low_balance,low_balance,depleted,low_balance,depleted', 'get_credit_events: oldest first');
SELECT id AS second FROM public.get_credit_events(tests.id_of('rita'), 0, 2) ORDER BY id DESC LIMIT 1 \gset
SELECT is((SELECT string_agg(type, ',' ORDER BY id) FROM public.get_credit_events(tests.id_of('rita'), :second, 2)),
  'depleted,low_balance', 'paged with p_after and p_limit');
SELECT * FROM tests.refused(format($$SELECT * FROM public.get_credit_events(%L, -1)$$, tests.id_of('rita')), '22023', 'p_after -1');
SELECT * FROM tests.refused(format($$SELECT * FROM public.get_credit_events(%L, 0, 1001)$$, tests.id_of('rita')), '22023',
  'p_limit 1001');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'verify_credit_ledger() is clean');

SELECT * FROM finish();
ROLLBACK;
