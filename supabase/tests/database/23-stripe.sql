-- Stripe webhooks (docs/rpc.md, "Stripe"): public.process_stripe_event
-- records each event once (stripe_events, keyed by Stripe's event id) and
-- applies its action once: a checkout grants once per session, refunds and
-- disputes revoke in proportion and never more than remains, a refund that
-- arrives before its purchase is applied when the purchase arrives, plans
-- are subscribed and cancelled, unknown users and malformed actions are
-- recorded for an operator.
BEGIN;
\ir _helpers.psql
SELECT plan(34);

SELECT tests.create_user('sofia');
SELECT tests.create_user('tariq');
SELECT tests.create_user('uma');

CREATE FUNCTION tests.stripe(p_id text, p_type text, p_action jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT public.process_stripe_event(p_id, p_type, p_action, '{"test": true}'::jsonb) $$;
CREATE FUNCTION tests.grant_action(p_name text, p_session text, p_pi text, p_credits integer) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('kind', 'grant', 'user_id', tests.id_of(p_name), 'credits', p_credits,
    'expires_in_days', 365, 'session_id', p_session, 'payment_intent', p_pi)
$$;
CREATE FUNCTION tests.refund_action(p_pi text, p_amount integer, p_refunded integer) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object('kind', 'revoke', 'payment_intent', p_pi, 'amount', p_amount,
    'amount_refunded', p_refunded, 'full', p_refunded >= p_amount)
$$;
CREATE FUNCTION tests.event_status(p_id text) RETURNS text
LANGUAGE sql AS $$ SELECT e.status FROM public.stripe_events e WHERE e.id = p_id $$;

-- Checkout: one grant per session, whatever the events.
SELECT is(tests.stripe('evt_t23_1', 'checkout.session.completed', tests.grant_action('sofia', 'cs_t23_1', 'pi_t23_1', 500)) ->> 'status',
  'processed', 'a paid checkout is processed');
SELECT is(tests.credits_of('sofia'), 500, 'and grants the session''s credits');
SELECT is((SELECT l.metadata ->> 'payment_intent' FROM public.credit_lots l WHERE l.user_id = tests.id_of('sofia')),
  'pi_t23_1', 'the lot records the payment intent');
SELECT ok((SELECT l.expires_at > now() + interval '364 days' AND l.category = 'paid' AND l.idempotency_key = 'stripe:checkout:cs_t23_1'
           FROM public.credit_lots l WHERE l.user_id = tests.id_of('sofia')), 'expiring in 365 days, category paid, keyed by the session');
SELECT is(tests.stripe('evt_t23_1', 'checkout.session.completed', tests.grant_action('sofia', 'cs_t23_1', 'pi_t23_1', 500)),
  jsonb_build_object('status', 'processed', 'replayed', true, 'user_id', tests.id_of('sofia')), 'a retried event is a replay');
SELECT is(tests.stripe('evt_t23_2', 'checkout.session.async_payment_succeeded', tests.grant_action('sofia', 'cs_t23_1', 'pi_t23_1', 500)) ->> 'status',
  'duplicate', 'the async twin of the same session is a duplicate');
SELECT is(tests.credits_of('sofia'), 500, 'and neither granted again');
SELECT is((SELECT count(*)::int FROM public.stripe_events e WHERE e.id IN ('evt_t23_1', 'evt_t23_2')), 2, 'both events are recorded');

-- Refunds: in proportion, cumulative, never more than remains.
SELECT is(tests.stripe('evt_t23_3', 'charge.refunded', tests.refund_action('pi_t23_1', 1000, 200)) ->> 'revoked',
  '100', 'a 20% refund revokes 20% of the purchase');
SELECT is(tests.credits_of('sofia'), 400, 'the balance drops by that');
SELECT is(tests.stripe('evt_t23_4', 'charge.refunded', tests.refund_action('pi_t23_1', 1000, 200)) ->> 'revoked',
  '0', 'another event with the same refunded amount revokes nothing more');
SELECT is(tests.stripe('evt_t23_5', 'charge.refunded', tests.refund_action('pi_t23_1', 1000, 500)) ->> 'revoked',
  '150', 'a refund growing to 50% revokes the difference');
SELECT is((SELECT l.revoked_at FROM public.credit_lots l WHERE l.user_id = tests.id_of('sofia')), NULL,
  'a partial refund does not mark the lot revoked');
SELECT ok((SELECT c.new_balance FROM creditgate.charge_credits_at(tests.id_of('sofia'), 'image', 200, NULL, '{}', 900, now()) c) = 50,
  'sofia spends 200 of what remains');
SELECT is(tests.stripe('evt_t23_6', 'charge.refunded', tests.refund_action('pi_t23_1', 1000, 1000)) ->> 'revoked',
  '50', 'a full refund revokes what remains, never more');
SELECT is(tests.credits_of('sofia'), 0, 'nothing is left of the purchase');
SELECT isnt((SELECT l.revoked_at FROM public.credit_lots l WHERE l.user_id = tests.id_of('sofia')), NULL,
  'a full refund marks the lot revoked');

-- A dispute revokes what remains.
SELECT tests.stripe('evt_t23_7', 'checkout.session.completed', tests.grant_action('tariq', 'cs_t23_2', 'pi_t23_2', 300));
SELECT is(tests.stripe('evt_t23_8', 'charge.dispute.created',
  '{"kind": "revoke", "payment_intent": "pi_t23_2", "full": true, "reason": "Stripe dispute dp_1"}') ->> 'revoked',
  '300', 'a dispute revokes the whole purchase');
SELECT is(tests.credits_of('tariq'), 0, 'tariq has nothing left');

-- Out of order: the refund first, then the purchase.
SELECT is(tests.stripe('evt_t23_9', 'charge.refunded', tests.refund_action('pi_t23_3', 1000, 500)) ->> 'status',
  'no_purchase', 'a refund for an unknown payment is recorded as no_purchase');
SELECT is(tests.stripe('evt_t23_10', 'checkout.session.completed', tests.grant_action('uma', 'cs_t23_3', 'pi_t23_3', 400)) ->> 'balance',
  '200', 'the purchase arriving later grants and applies the earlier refund');
SELECT is(tests.event_status('evt_t23_9'), 'processed', 'the refund event is then processed');

-- Unknown users, malformed and ignored events.
SELECT is(tests.stripe('evt_t23_11', 'checkout.session.completed',
  '{"kind": "grant", "user_id": "00000000-0000-0000-0000-00000000dead", "credits": 10, "session_id": "cs_t23_4"}') ->> 'status',
  'unknown_user', 'a grant for an unknown user is recorded as unknown_user');
SELECT is(tests.stripe('evt_t23_12', 'checkout.session.completed',
  '{"kind": "grant", "user_id": "not-a-uuid", "credits": 10, "session_id": "cs_t23_5"}') ->> 'status',
  'unknown_user', 'so is one whose user id is not a uuid');
SELECT is(tests.stripe('evt_t23_13', 'checkout.session.completed',
  jsonb_build_object('kind', 'grant', 'user_id', tests.id_of('uma'), 'credits', 0, 'session_id', 'cs_t23_6')) ->> 'status',
  'failed', 'a grant the database refuses is recorded as failed');
SELECT is(tests.stripe('evt_t23_14', 'customer.created', '{"kind": "ignore", "reason": "not handled"}') ->> 'status',
  'ignored', 'anything else is ignored (and recorded)');

-- Plans.
SELECT public.upsert_credit_plan('t23-pro', 1000, 'month', 0);
SELECT is(tests.stripe('evt_t23_15', 'invoice.paid', jsonb_build_object('kind', 'subscribe', 'user_id', tests.id_of('tariq'), 'plan', 't23-pro')) ->> 'status',
  'processed', 'a paid invoice for a plan price subscribes');
SELECT is(tests.stripe('evt_t23_16', 'invoice.paid', jsonb_build_object('kind', 'subscribe', 'user_id', tests.id_of('tariq'), 'plan', 't23-pro')) ->> 'renewed',
  'true', 'the next paid invoice is a renewal: nothing changes');
SELECT is(tests.stripe('evt_t23_17', 'customer.subscription.deleted', jsonb_build_object('kind', 'cancel', 'user_id', tests.id_of('tariq'))) ->> 'cancelled',
  'true', 'a deleted subscription cancels the plan');

-- The Stripe customer: a subscription's checkout session names the user and
-- grants nothing; its invoices and its deletion may name only the customer.
SELECT is(tests.stripe('evt_t23_18', 'checkout.session.completed', jsonb_build_object('kind', 'ignore', 'reason', 'a subscription',
  'user_id', tests.id_of('uma'), 'customer', 'cus_t23_uma')) ->> 'status', 'ignored', 'a subscription''s session grants nothing');
SELECT is(tests.stripe('evt_t23_19', 'invoice.paid', jsonb_build_object('kind', 'subscribe', 'user_id', NULL, 'plan', 't23-pro',
  'customer', 'cus_t23_uma')) ->> 'plan', 't23-pro', 'an invoice naming only the customer subscribes the user its session named');
SELECT is(tests.stripe('evt_t23_20', 'customer.subscription.deleted', jsonb_build_object('kind', 'cancel', 'customer', 'cus_t23_uma'))
  ->> 'cancelled', 'true', 'and the deleted subscription cancels it, by customer too');
SELECT is(tests.stripe('evt_t23_21', 'invoice.paid', jsonb_build_object('kind', 'subscribe', 'plan', 't23-pro', 'customer', 'cus_t23_nobody'))
  ->> 'status', 'unknown_user', 'a customer no event linked to a user is unknown_user');

SELECT is_empty($$ SELECT * FROM verify_credit_ledger() v WHERE v.user_id IN (tests.id_of('sofia'), tests.id_of('tariq'), tests.id_of('uma')) $$,
  'the ledger is sound');

SELECT * FROM finish();
ROLLBACK;
