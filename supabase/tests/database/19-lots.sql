-- Credit lots (docs/rpc.md, "Lots"): every grant opens a lot; the balance is
-- the sum of the lots; charges draw in spending order and may span lots;
-- settlements give back to the lots drawn; expiry and revocation leave with
-- entries of their own; credits returning to an expired or revoked lot leave
-- again at once; hostile inputs change nothing. The clock is driven through
-- the creditgate.*_at twins, from :t0 (this transaction's start).
BEGIN;
\ir _helpers.psql
SELECT plan(76);

SELECT now() AS t0 \gset
SELECT tests.create_user('lena');
SELECT tests.create_user('omar');

/** The lot of p_name granted with reason p_reason. */
CREATE FUNCTION tests.lot(p_name text, p_reason text) RETURNS uuid
LANGUAGE sql AS $$ SELECT l.id FROM public.credit_lots l WHERE l.user_id = tests.id_of(p_name) AND l.reason = p_reason $$;
/** A lot's remaining credits. */
CREATE FUNCTION tests.remaining(p_lot uuid) RETURNS integer
LANGUAGE sql AS $$ SELECT l.remaining FROM public.credit_lots l WHERE l.id = p_lot $$;
/** The movements of ledger entry p_entry as 'reason:delta', in order. */
CREATE FUNCTION tests.moves(p_entry bigint) RETURNS text
LANGUAGE sql AS $$
  SELECT string_agg(l.reason || ':' || m.delta, ',' ORDER BY m.id)
  FROM public.credit_lot_movements m JOIN public.credit_lots l ON l.id = m.lot_id WHERE m.ledger_id = p_entry
$$;
/** The user's latest ledger entry id. */
CREATE FUNCTION tests.last_entry(p_name text) RETURNS bigint
LANGUAGE sql AS $$ SELECT max(l.id) FROM public.credit_ledger l WHERE l.user_id = tests.id_of(p_name) $$;
/** True when the user's balance is the sum of their lots. */
CREATE FUNCTION tests.lots_add_up(p_name text) RETURNS boolean
LANGUAGE sql AS $$
  SELECT u.credits = (SELECT coalesce(sum(l.remaining), 0) FROM public.credit_lots l WHERE l.user_id = u.id)
  FROM public.users u WHERE u.id = tests.id_of(p_name)
$$;

-- -----------------------------------------------------------------------------
-- A grant opens a lot; the seed's five-argument calls keep working
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT is(public.grant_credits(tests.id_of('omar'), 7, 'positional five', 'k5', '{"a": 1}'::jsonb), 7,
  'grant_credits with the seed''s five positional arguments');
SELECT is(public.grant_credits(p_user_id => tests.id_of('omar'), p_amount => 3, p_reason => 'named three'), 10,
  'grant_credits with named arguments (as PostgREST calls it)');
SELECT is(public.grant_credits(tests.id_of('omar'), 7, 'positional five', 'k5', '{"a": 1}'::jsonb), 7,
  'a keyed grant replays: the original balance, nothing added');
RESET ROLE;
SELECT results_eq(
  format($$SELECT category, priority, granted, remaining, expires_at IS NULL, idempotency_key, metadata
           FROM public.credit_lots WHERE user_id = %L ORDER BY created_at$$, tests.id_of('omar')),
  $$VALUES ('paid'::text, 50, 7, 7, true, 'k5'::text, '{"a": 1}'::jsonb), ('paid', 50, 3, 3, true, NULL, '{}')$$,
  'each grant opened one lot: paid, priority 50, never expiring, with its key and metadata');
SELECT is((SELECT grant_entry_id FROM public.credit_lots WHERE id = tests.lot('omar', 'named three')),
  tests.last_entry('omar'), 'a lot names the ledger entry that opened it');
SELECT is((SELECT k.request_hash FROM public.idempotency_keys k WHERE k.user_id = tests.id_of('omar') AND k.key = 'k5'),
  md5(jsonb_build_object('amount', 7, 'reason', 'positional five', 'metadata', '{"a": 1}'::jsonb)::text),
  'a grant with the default lot terms has the fingerprint of before lots (old keys still replay)');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 7, 'positional five', 'k5', '{"a": 1}', NULL, 'paid', 10)$$,
  tests.id_of('omar')), 'PT422', 'the same key with another priority is another request');

-- -----------------------------------------------------------------------------
-- Spending order: priority, soonest expiry (never last), oldest
-- -----------------------------------------------------------------------------
SELECT creditgate.grant_credits_at(tests.id_of('lena'), 10, 'B paid', NULL, '{}', NULL, NULL, NULL, :'t0');
SELECT creditgate.grant_credits_at(tests.id_of('lena'), 4, 'C expiring 1h', NULL, '{}', :'t0'::timestamptz + interval '1 hour',
  'paid', 50, :'t0');
SELECT creditgate.grant_credits_at(tests.id_of('lena'), 5, 'A promo', NULL, '{}', :'t0'::timestamptz + interval '2 hours',
  'promotional', 10, :'t0');
SELECT creditgate.grant_credits_at(tests.id_of('lena'), 3, 'D expiring 3h', NULL, '{}', :'t0'::timestamptz + interval '3 hours',
  NULL, NULL, :'t0');
SELECT creditgate.grant_credits_at(tests.id_of('lena'), 6, 'E paid later', NULL, '{}', NULL, 'gift_card', 50,
  :'t0'::timestamptz + interval '1 second');
SELECT is(tests.credits_of('lena'), 28, 'five grants: 28 credits');
SELECT results_eq(
  format($$SELECT reason, spendable FROM creditgate.get_credit_lots_at(%L, %L)$$, tests.id_of('lena'), :'t0'),
  $$VALUES ('A promo'::text, true), ('C expiring 1h', true), ('D expiring 3h', true), ('B paid', true), ('E paid later', true)$$,
  'get_credit_lots lists spendable lots in spending order: priority, soonest expiry, never-expiring last, oldest');
SELECT ok(tests.lots_add_up('lena'), 'the balance is the sum of the lots');

SELECT job_id AS spanning_job FROM creditgate.charge_credits_at(tests.id_of('lena'), 'image', 12, NULL, '{}', 86400, :'t0') \gset
SELECT is(tests.moves(tests.last_entry('lena')), 'A promo:-5,C expiring 1h:-4,D expiring 3h:-3',
  'a charge of 12 spans three lots, drawn in spending order');
SELECT is(tests.credits_of('lena'), 16, 'the balance is down by the cost');
SELECT ok(tests.lots_add_up('lena'), 'and still the sum of the lots');

SELECT is((SELECT refunded FROM creditgate.complete_generation_job_at(:'spanning_job', NULL, 6, :'t0')), 6,
  'completing at 6 returns 6');
SELECT is(tests.moves(tests.last_entry('lena')), 'D expiring 3h:3,C expiring 1h:3',
  'the unused part goes back to the lots drawn last first');
SELECT is(ARRAY[tests.remaining(tests.lot('lena', 'A promo')), tests.remaining(tests.lot('lena', 'C expiring 1h')),
                tests.remaining(tests.lot('lena', 'D expiring 3h'))], ARRAY[0, 3, 3],
  'the kept 6 stay with the lots drawn first');

SELECT job_id AS refunded_job FROM creditgate.charge_credits_at(tests.id_of('lena'), 'image', 4, NULL, '{}', 900, :'t0') \gset
SELECT is(tests.moves(tests.last_entry('lena')), 'C expiring 1h:-3,D expiring 3h:-1', 'a charge of 4: C, then D');
SELECT is(creditgate.refund_credits_at(tests.id_of('lena'), :'refunded_job', NULL, 'failed', :'t0'), 22,
  'a refund returns the whole hold');
SELECT is(tests.moves(tests.last_entry('lena')), 'D expiring 3h:1,C expiring 1h:3', 'each lot gets back what it gave');

-- One lot covering the charge: one movement, the spending-order index.
SELECT creditgate.charge_credits_at(tests.id_of('omar'), 'text', 2, NULL, '{}', 900, :'t0');
SELECT is((SELECT count(*)::integer FROM public.credit_lot_movements WHERE ledger_id = tests.last_entry('omar')), 1,
  'a charge one lot covers touches that lot only');
SET LOCAL enable_seqscan = off;
CREATE FUNCTION tests.plan_of(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE v_line text; v_plan text := '';
BEGIN
  FOR v_line IN EXECUTE 'EXPLAIN ' || p_sql LOOP v_plan := v_plan || v_line || E'\n'; END LOOP;
  RETURN v_plan;
END $$;
SELECT ok(tests.plan_of(format($$SELECT l.id, l.remaining FROM public.credit_lots l WHERE l.user_id = %L AND l.spendable
  ORDER BY l.priority, l.expires_at, l.created_at, l.id FOR UPDATE$$, tests.id_of('lena'))) LIKE '%credit_lots_spending_order%'
  AND tests.plan_of(format($$SELECT l.id, l.remaining FROM public.credit_lots l WHERE l.user_id = %L AND l.spendable
  ORDER BY l.priority, l.expires_at, l.created_at, l.id FOR UPDATE$$, tests.id_of('lena'))) NOT LIKE '%Sort%',
  'the spendable lots of a user come from one index, already in spending order (no sort)');
RESET enable_seqscan;

-- -----------------------------------------------------------------------------
-- Expiry: what remains leaves with an entry of its own, before any balance check
-- -----------------------------------------------------------------------------
SELECT is(creditgate.get_credit_balance_at(tests.id_of('lena'), :'t0'::timestamptz + interval '90 minutes'), 19,
  'at 1h30 the balance read expires C first: 22 - 3');
SELECT results_eq(
  format($$SELECT entry_type, operation_type, delta, metadata ->> 'lot_id' FROM public.credit_ledger WHERE id = %s$$,
    tests.last_entry('lena')),
  format($$VALUES ('lot_expiry'::text, 'lot_expiry'::text, -3, %L::text)$$, tests.lot('lena', 'C expiring 1h')),
  'a lot_expiry entry for what remained of C, naming the lot');
SELECT is(tests.moves(tests.last_entry('lena')), 'C expiring 1h:-3', 'its movement takes C to 0');
SELECT isnt((SELECT expired_at FROM public.credit_lots WHERE id = tests.lot('lena', 'C expiring 1h')), NULL,
  'C is marked expired');
SELECT is((SELECT payload ->> 'amount' FROM public.credit_events WHERE user_id = tests.id_of('lena') AND type = 'lot_expired'),
  '3', 'and a lot_expired event says how much left');
SELECT is(creditgate.get_credit_balance_at(tests.id_of('lena'), :'t0'::timestamptz + interval '90 minutes'), 19,
  'a second read changes nothing');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id = tests.id_of('lena') AND entry_type = 'lot_expiry'),
  1, 'one lot_expiry entry');

-- A hold keeps its credits: the lot it drew from expires under it with
-- nothing in it, and what comes back later expires at once.
SELECT job_id AS held_job FROM creditgate.charge_credits_at(tests.id_of('lena'), 'image', 3, NULL, '{}', 86400,
  :'t0'::timestamptz + interval '90 minutes') \gset
SELECT is(tests.moves(tests.last_entry('lena')), 'D expiring 3h:-3', 'a charge at 1h30 draws D (A is empty, C expired)');
SELECT is(creditgate.expire_stale_generation_jobs_at(:'t0'::timestamptz + interval '4 hours'), 1,
  'the sweeper at 4h: omar''s hold expires, lena''s (a day long) does not');
SELECT is(tests.credits_of('lena'), 16, 'and D, empty while its credits are held, expires nothing');
SELECT is(creditgate.refund_credits_at(tests.id_of('lena'), :'held_job', NULL, 'failed', :'t0'::timestamptz + interval '4 hours'),
  16, 'refunding the hold at 4h: the 3 credits come back to D and expire at once');
SELECT results_eq(
  format($$SELECT entry_type, delta FROM public.credit_ledger WHERE user_id = %L ORDER BY id DESC LIMIT 2$$, tests.id_of('lena')),
  $$VALUES ('lot_expiry'::text, -3), ('refund', 3)$$,
  'the refund entry, then a lot_expiry entry right after it');
SELECT is(tests.remaining(tests.lot('lena', 'D expiring 3h')), 0, 'D holds nothing');

-- An expired hold whose lot has expired too: hold_expired, then lot_expired.
SELECT creditgate.grant_credits_at(tests.id_of('lena'), 2, 'F short', NULL, '{}', :'t0'::timestamptz + interval '5 hours',
  NULL, 0, :'t0'::timestamptz + interval '4 hours');
SELECT job_id AS expiring_job FROM creditgate.charge_credits_at(tests.id_of('lena'), 'image', 2, NULL, '{}', 7200,
  :'t0'::timestamptz + interval '4 hours') \gset
SELECT is(creditgate.expire_stale_generation_jobs_at(:'t0'::timestamptz + interval '7 hours'), 1, 'the sweeper at 7h expires the hold');
SELECT results_eq(
  format($$SELECT entry_type, delta FROM public.credit_ledger WHERE user_id = %L ORDER BY id DESC LIMIT 2$$, tests.id_of('lena')),
  $$VALUES ('lot_expiry'::text, -2), ('expiry', 2)$$, 'the hold comes back to F, which had expired: it leaves at once');
SELECT is((SELECT string_agg(type, ',' ORDER BY id) FROM public.credit_events
           WHERE user_id = tests.id_of('lena') AND type IN ('hold_expired', 'lot_expired')
             AND id > (SELECT max(id) - 2 FROM public.credit_events WHERE user_id = tests.id_of('lena'))),
  'hold_expired,lot_expired', 'events: hold_expired, then lot_expired');

-- -----------------------------------------------------------------------------
-- Revoke
-- -----------------------------------------------------------------------------
SELECT is(creditgate.revoke_credit_lot_at(tests.lot('lena', 'B paid'), 'chargeback', :'t0'::timestamptz + interval '7 hours'),
  6, 'revoking B takes its 10 back: 16 - 10');
SELECT results_eq(
  format($$SELECT entry_type, delta, description FROM public.credit_ledger WHERE id = %s$$, tests.last_entry('lena')),
  $$VALUES ('lot_revocation'::text, -10, 'Lot revoked: chargeback'::text)$$, 'a lot_revocation entry');
SELECT * FROM tests.refused(format($$SELECT 1 / (creditgate.revoke_credit_lot_at(%L, 'again', %L) - 6)$$,
  tests.lot('lena', 'B paid'), :'t0'::timestamptz + interval '7 hours'), '22012',
  'a second revoke returns the same balance');
SELECT is(creditgate.revoke_credit_lot_at(tests.lot('lena', 'B paid'), 'again', :'t0'::timestamptz + interval '7 hours'), 6,
  'a second revoke changes nothing');
SELECT is(tests.credits_of('lena'), 6, 'the balance is E''s 6');

-- A hold drawn from a lot revoked meanwhile: its credits are revoked when they come back.
SELECT job_id AS revoked_job FROM creditgate.charge_credits_at(tests.id_of('lena'), 'image', 4, NULL, '{}', 900,
  :'t0'::timestamptz + interval '7 hours') \gset
SELECT is(creditgate.revoke_credit_lot_at(tests.lot('lena', 'E paid later'), 'fraud', :'t0'::timestamptz + interval '7 hours'), 0,
  'revoking E takes only what remains (2), never the 4 held');
SELECT is(creditgate.refund_credits_at(tests.id_of('lena'), :'revoked_job', NULL, 'failed', :'t0'::timestamptz + interval '7 hours'),
  0, 'the refund''s 4 come back to the revoked E and leave at once');
SELECT results_eq(
  format($$SELECT entry_type, delta FROM public.credit_ledger WHERE user_id = %L ORDER BY id DESC LIMIT 2$$, tests.id_of('lena')),
  $$VALUES ('lot_revocation'::text, -4), ('refund', 4)$$, 'refund, then lot_revocation');
SELECT ok(tests.lots_add_up('lena'), 'the balance is still the sum of the lots');
SELECT results_eq(
  format($$SELECT reason, remaining, spendable FROM creditgate.get_credit_lots_at(%L, %L) ORDER BY reason$$, tests.id_of('lena'),
    :'t0'::timestamptz + interval '7 hours'),
  $$VALUES ('A promo'::text, 0, false), ('B paid', 0, false), ('C expiring 1h', 0, false), ('D expiring 3h', 0, false),
           ('E paid later', 0, false), ('F short', 0, false)$$,
  'every lot of lena is empty now');

-- -----------------------------------------------------------------------------
-- Hostile inputs: stable codes, nothing changed
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, 'x', NULL, '{}', NULL, 'paid', -1)$$, tests.id_of('omar')),
  '22023', 'priority -1');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, 'x', NULL, '{}', NULL, 'paid', 101)$$, tests.id_of('omar')),
  '22023', 'priority 101');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, 'x', NULL, '{}', NULL, 'Paid Credits', 50)$$,
  tests.id_of('omar')), '22023', 'a category that is not a lowercase word');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, 'x', NULL, '{}', NULL, %L, 50)$$,
  tests.id_of('omar'), repeat('a', 33)), '22023', 'a category of 33 characters');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 5, 'x', NULL, '{}', now() - interval '1 second')$$,
  tests.id_of('omar')), '22023', 'an expiry in the past');
SELECT * FROM tests.refused($$SELECT public.revoke_credit_lot(NULL, 'x')$$, '22023', 'revoke without a lot');
SELECT * FROM tests.refused(format($$SELECT public.revoke_credit_lot(%L, NULL)$$, tests.lot('omar', 'named three')), '22023',
  'revoke without a reason');
SELECT * FROM tests.refused(format($$SELECT public.revoke_credit_lot(%L, %L)$$, tests.lot('omar', 'named three'), repeat('r', 501)),
  '22023', 'revoke with a reason of 501 characters');
SELECT * FROM tests.refused($$SELECT public.revoke_credit_lot(gen_random_uuid(), 'x')$$, 'PT404', 'revoke of an unknown lot');
SELECT is(tests.error_of($$SELECT public.revoke_credit_lot('00000000-0000-4000-8000-000000000000', 'x')$$) ->> 'hint',
  'lot_not_found', 'its code is lot_not_found');
SELECT * FROM tests.refused($$SELECT * FROM public.get_credit_lots(NULL)$$, '22023', 'get_credit_lots without a user');
SELECT * FROM tests.refused($$SELECT * FROM public.get_credit_lots(gen_random_uuid())$$, 'PT404', 'get_credit_lots of an unknown user');
RESET ROLE;

-- -----------------------------------------------------------------------------
-- Closing an account empties every lot, open holds first refunded into theirs
-- -----------------------------------------------------------------------------
SELECT creditgate.grant_credits_at(tests.id_of('omar'), 4, 'closing promo', NULL, '{}', now() + interval '1 day', 'promotional', 0,
  now());
SELECT job_id AS omar_open FROM creditgate.charge_credits_at(tests.id_of('omar'), 'image', 6, NULL, '{}', 86400, now()) \gset
SELECT cmp_ok(tests.credits_of('omar'), '>', 0, 'omar has credits and an open hold');
DELETE FROM auth.users WHERE id = tests.id_of('omar');
SELECT is((SELECT sum(remaining)::integer FROM public.credit_lots WHERE user_id = tests.id_of('omar')), 0,
  'the closure leaves every lot of omar empty');
SELECT is((SELECT -sum(m.delta)::integer FROM public.credit_lot_movements m JOIN public.credit_ledger l ON l.id = m.ledger_id
           WHERE l.user_id = tests.id_of('omar') AND l.entry_type = 'account_closure'),
  (SELECT -delta FROM public.credit_ledger WHERE user_id = tests.id_of('omar') AND entry_type = 'account_closure'),
  'the account_closure entry takes its credits from the lots');

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'verify_credit_ledger() is clean');

SELECT * FROM finish();
ROLLBACK;
