-- =============================================================================
-- creditgate: Stripe purchases (the `stripe-webhook` Edge Function).
-- Contract: docs/rpc.md ("Stripe"); design: docs/design.md ("Stripe webhooks").
--
-- The function verifies Stripe's signature, reads the event, decides what it
-- asks for (an "action": grant, revoke, subscribe, cancel, ignore) and calls
-- public.process_stripe_event once. That one transaction records the event
-- in public.stripe_events (its primary key is Stripe's event id: a retried or
-- concurrently duplicated delivery finds the row and changes nothing) and
-- applies the action, so an event is applied exactly once or not at all.
-- Runs fresh and again (changing nothing).
-- =============================================================================

/** Every Stripe event the webhook accepted (signature valid), and what came of it. */
CREATE TABLE IF NOT EXISTS public.stripe_events (
  id text PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 255),
  type text NOT NULL,
  -- processing (inside the transaction only), processed, duplicate (another
  -- event already granted this object), ignored, unknown_user (no such
  -- creditgate user: an operator must look), no_purchase (a refund or dispute
  -- for a payment with no lot yet: applied when the checkout arrives),
  -- failed (the action was refused, e.g. a malformed amount: see error).
  status text NOT NULL CHECK (status IN ('processing', 'processed', 'duplicate', 'ignored', 'unknown_user',
                                         'no_purchase', 'failed')),
  user_id uuid,
  -- the Stripe customer (cus_...), when the event names one: later events of
  -- the customer that name no user are applied to this row's user
  customer text,
  payment_intent text,
  error text,
  result jsonb NOT NULL DEFAULT '{}'::jsonb,
  received_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  payload jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS stripe_events_payment_intent ON public.stripe_events (payment_intent)
  WHERE payment_intent IS NOT NULL;
CREATE INDEX IF NOT EXISTS stripe_events_status ON public.stripe_events (status, received_at);
CREATE INDEX IF NOT EXISTS stripe_events_customer ON public.stripe_events (customer, received_at)
  WHERE customer IS NOT NULL AND user_id IS NOT NULL;
-- The refund path finds a purchase's lot by its payment intent.
CREATE INDEX IF NOT EXISTS credit_lots_stripe_payment_intent ON public.credit_lots ((metadata ->> 'payment_intent'))
  WHERE metadata ? 'payment_intent';

REVOKE ALL ON TABLE public.stripe_events FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.stripe_events TO service_role;
ALTER TABLE public.stripe_events ENABLE ROW LEVEL SECURITY;

/**
 * Grants a Checkout Session's credits once per session: idempotency key
 * `stripe:checkout:<session id>`, so `checkout.session.completed` and its
 * `async_payment_succeeded` twin grant once. Then applies refunds and
 * disputes recorded before the purchase (status no_purchase), so the
 * outcome does not depend on the order Stripe delivered them in.
 */
CREATE OR REPLACE FUNCTION creditgate.stripe_grant(p_user_id uuid, p_action jsonb, p_event_id text, p_now timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_session text := p_action ->> 'session_id';
  v_key text;
  v_pi text := p_action ->> 'payment_intent';
  v_amount integer;
  v_days integer;
  v_balance integer;
  v_lot uuid;
  v_prior record;
  v_revoked jsonb;
BEGIN
  IF v_session IS NULL OR v_session = '' THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', 'The checkout session has no id', '{}'::jsonb);
  END IF;
  v_key := 'stripe:checkout:' || v_session;
  -- The user's row first (the lock order everywhere): a concurrent event for
  -- the same session (the async twin) waits here, then sees this grant's lot.
  PERFORM creditgate.lock_user(p_user_id, p_now, false);
  IF EXISTS (SELECT 1 FROM public.credit_lots l WHERE l.user_id = p_user_id AND l.idempotency_key = v_key) THEN
    RETURN pg_catalog.jsonb_build_object('status', 'duplicate', 'session_id', v_session);
  END IF;
  v_amount := (p_action ->> 'credits')::integer;
  v_days := (p_action ->> 'expires_in_days')::integer;
  IF v_days IS NOT NULL AND v_days <= 0 THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', 'expires_in_days must be positive', '{}'::jsonb);
  END IF;
  v_balance := public.grant_credits(p_user_id, v_amount, 'Stripe purchase', v_key,
    pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('source', 'stripe', 'payment_intent', v_pi,
      'checkout_session', v_session, 'stripe_event', p_event_id, 'price_id', p_action ->> 'price_id')),
    CASE WHEN v_days IS NULL THEN NULL ELSE p_now + pg_catalog.make_interval(days => v_days) END,
    coalesce(p_action ->> 'category', 'paid'), coalesce((p_action ->> 'priority')::integer, 50));
  SELECT l.id INTO v_lot FROM public.credit_lots l WHERE l.user_id = p_user_id AND l.idempotency_key = v_key;
  -- Refunds or disputes that arrived first.
  IF v_pi IS NOT NULL THEN
    FOR v_prior IN
      SELECT e.id, e.result -> 'action' AS action FROM public.stripe_events e
      WHERE e.payment_intent = v_pi AND e.status = 'no_purchase' ORDER BY e.received_at, e.id FOR UPDATE
    LOOP
      v_revoked := creditgate.stripe_revoke(v_prior.action, p_now);
      UPDATE public.stripe_events e
      SET status = 'processed', user_id = p_user_id,
          result = e.result || v_revoked || pg_catalog.jsonb_build_object('applied_by', p_event_id)
      WHERE e.id = v_prior.id;
      v_balance := (v_revoked ->> 'balance')::integer;
    END LOOP;
  END IF;
  RETURN pg_catalog.jsonb_build_object('status', 'processed', 'lot_id', v_lot, 'granted', v_amount,
    'balance', v_balance, 'session_id', v_session);
END;
$$;
REVOKE ALL ON FUNCTION creditgate.stripe_grant(uuid, jsonb, text, timestamptz) FROM PUBLIC, anon, authenticated;

/**
 * Takes back a purchase's credits after a refund or dispute. The purchase is
 * the lot whose metadata.payment_intent is the action's. A refund revokes,
 * in total over all its events, floor(granted * amount_refunded / amount)
 * (Stripe's amount_refunded is cumulative, so a retried or repeated event
 * asks for the same total and takes nothing more); `full` (a full refund, a
 * dispute) asks for all of it. Never more than the lot still holds. A full
 * revocation sets revoked_at (credits that come back to the lot later leave
 * again); a partial one does not.
 */
CREATE OR REPLACE FUNCTION creditgate.stripe_revoke(p_action jsonb, p_now timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_pi text := p_action ->> 'payment_intent';
  v_full boolean := coalesce((p_action ->> 'full')::boolean, false);
  v_amount bigint := (p_action ->> 'amount')::bigint;
  v_refunded bigint := (p_action ->> 'amount_refunded')::bigint;
  v_lot public.credit_lots;
  v_was_revoked timestamptz;
  v_balance integer;
  v_already integer;
  v_want integer;
  v_take integer := 0;
BEGIN
  SELECT * INTO v_lot FROM public.credit_lots l
  WHERE l.metadata ? 'payment_intent' AND l.metadata ->> 'payment_intent' = v_pi
  ORDER BY l.created_at, l.id LIMIT 1;
  IF v_pi IS NULL OR NOT FOUND THEN
    RETURN pg_catalog.jsonb_build_object('status', 'no_purchase', 'action', p_action);
  END IF;
  v_balance := creditgate.lock_user(v_lot.user_id, p_now, false);
  SELECT * INTO v_lot FROM public.credit_lots l WHERE l.id = v_lot.id FOR UPDATE;
  v_was_revoked := v_lot.revoked_at;
  SELECT coalesce(-sum(m.delta), 0)::integer INTO v_already
  FROM public.credit_lot_movements m JOIN public.credit_ledger e ON e.id = m.ledger_id
  WHERE m.lot_id = v_lot.id AND e.entry_type = 'lot_revocation';
  IF v_full OR v_amount IS NULL OR v_amount <= 0 OR v_refunded >= v_amount THEN
    v_full := true;
    v_want := v_lot.granted;
  ELSE
    v_want := pg_catalog.floor(v_lot.granted::numeric * greatest(v_refunded, 0) / v_amount)::integer;
  END IF;
  v_take := least(greatest(v_want - v_already, 0), v_lot.remaining);
  IF v_take > 0 THEN
    v_balance := creditgate.take_from_lot(v_lot.id, v_take, 'lot_revocation',
      'Lot revoked: ' || coalesce(p_action ->> 'reason', 'Stripe refund'), false, p_now);
  END IF;
  UPDATE public.credit_lots l
  SET revoked_at = CASE WHEN v_full THEN coalesce(v_was_revoked, p_now) ELSE v_was_revoked END
  WHERE l.id = v_lot.id;
  RETURN pg_catalog.jsonb_build_object('status', 'processed', 'user_id', v_lot.user_id, 'lot_id', v_lot.id,
    'revoked', v_take, 'balance', v_balance, 'full', v_full);
END;
$$;
REVOKE ALL ON FUNCTION creditgate.stripe_revoke(jsonb, timestamptz) FROM PUBLIC, anon, authenticated;

/**
 * Records Stripe event p_event_id and applies p_action once. p_action (built
 * by the webhook from the event and its settings):
 *   {"kind": "grant", "user_id", "credits", "expires_in_days"?, "category"?, "priority"?,
 *    "session_id", "payment_intent"?, "price_id"?}
 *   {"kind": "revoke", "payment_intent", "amount"?, "amount_refunded"?, "full"?, "reason"?}
 *   {"kind": "subscribe", "user_id", "plan"}      (already on that plan: a renewal, nothing to do)
 *   {"kind": "cancel", "user_id"}
 *   {"kind": "ignore", "reason"}               (status ignored)
 *   {"kind": "invalid", "reason"}              (status failed: e.g. malformed metadata)
 * Any action may carry "customer" (Stripe's cus_... id), recorded on the
 * event; a grant, subscribe or cancel that names no user_id gets the user
 * of the customer's latest earlier event that had one (an ignore may carry
 * user_id too, so a subscription's checkout session links the customer).
 * Returns {status, replayed, ...}: replayed true when the event was seen
 * before (nothing changed; status is what happened then). A user id that is
 * not a creditgate user: status unknown_user. A refused action (22023, PT404):
 * status failed, with the error. Anything else raises (nothing recorded:
 * Stripe retries). For service_role.
 */
CREATE OR REPLACE FUNCTION public.process_stripe_event(p_event_id text, p_type text, p_action jsonb, p_payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_kind text := p_action ->> 'kind';
  v_user_text text := p_action ->> 'user_id';
  v_user uuid;
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_result jsonb;
  v_seen public.stripe_events;
BEGIN
  IF p_event_id IS NULL OR char_length(p_event_id) NOT BETWEEN 1 AND 255 OR p_type IS NULL
     OR p_action IS NULL OR pg_catalog.jsonb_typeof(p_action) <> 'object' THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', 'p_event_id, p_type and p_action (an object) are required',
      '{}'::jsonb);
  END IF;
  INSERT INTO public.stripe_events (id, type, status, customer, payment_intent, payload)
  VALUES (p_event_id, p_type, 'processing', p_action ->> 'customer', p_action ->> 'payment_intent',
          coalesce(p_payload, '{}'::jsonb))
  ON CONFLICT (id) DO NOTHING;
  IF NOT FOUND THEN
    SELECT * INTO v_seen FROM public.stripe_events e WHERE e.id = p_event_id;
    RETURN pg_catalog.jsonb_build_object('status', v_seen.status, 'replayed', true, 'user_id', v_seen.user_id);
  END IF;

  IF v_user_text ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    v_user := v_user_text::uuid;
  END IF;
  -- No user named: the user an earlier event of the same Stripe customer had
  -- (a subscription's checkout session names it; its invoices may not).
  IF v_user IS NULL AND p_action ->> 'customer' IS NOT NULL THEN
    SELECT e.user_id INTO v_user FROM public.stripe_events e
    WHERE e.customer = p_action ->> 'customer' AND e.user_id IS NOT NULL AND e.id <> p_event_id
    ORDER BY e.received_at DESC LIMIT 1;
  END IF;
  IF coalesce(v_kind, '') NOT IN ('grant', 'subscribe', 'cancel') AND NOT EXISTS (SELECT 1 FROM public.users u WHERE u.id = v_user) THEN
    v_user := NULL;   -- an ignored event keeps the customer's user only if there is one
  END IF;
  IF v_kind IN ('grant', 'subscribe', 'cancel') THEN
    IF v_user IS NULL OR NOT EXISTS (SELECT 1 FROM public.users u WHERE u.id = v_user) THEN
      v_result := pg_catalog.jsonb_build_object('status', 'unknown_user',
        'error', 'no creditgate user ' || coalesce(pg_catalog.quote_literal(v_user_text), '(none given)'), 'action', p_action);
      v_user := NULL;
    END IF;
  END IF;

  IF v_result IS NULL THEN
    BEGIN
      CASE v_kind
        WHEN 'grant' THEN
          v_result := creditgate.stripe_grant(v_user, p_action, p_event_id, v_now);
        WHEN 'revoke' THEN
          v_result := creditgate.stripe_revoke(p_action, v_now);
        WHEN 'subscribe' THEN
          IF EXISTS (SELECT 1 FROM public.credit_plan_subscriptions s
                     WHERE s.user_id = v_user AND s.plan = p_action ->> 'plan') THEN
            v_result := pg_catalog.jsonb_build_object('status', 'processed', 'renewed', true, 'plan', p_action ->> 'plan');
          ELSE
            SELECT pg_catalog.jsonb_build_object('status', 'processed', 'plan', s.plan, 'lot_id', s.lot_id,
                     'granted', s.granted, 'balance', s.new_balance)
            INTO v_result FROM public.subscribe_credit_plan(v_user, p_action ->> 'plan') s;
          END IF;
        WHEN 'cancel' THEN
          v_result := pg_catalog.jsonb_build_object('status', 'processed',
            'cancelled', public.cancel_credit_plan(v_user));
        WHEN 'invalid' THEN
          v_result := pg_catalog.jsonb_build_object('status', 'failed', 'error', p_action ->> 'reason', 'action', p_action);
        ELSE
          v_result := pg_catalog.jsonb_build_object('status', 'ignored', 'reason', coalesce(p_action ->> 'reason', 'not handled'));
      END CASE;
    EXCEPTION WHEN SQLSTATE '22023' OR SQLSTATE 'PT404' OR SQLSTATE '22P02' OR SQLSTATE '22003' OR SQLSTATE '23514' THEN
      v_result := pg_catalog.jsonb_build_object('status', 'failed', 'error', SQLERRM, 'action', p_action);
    END;
  END IF;

  UPDATE public.stripe_events e
  SET status = v_result ->> 'status',
      user_id = coalesce(v_user, (v_result ->> 'user_id')::uuid),
      error = v_result ->> 'error',
      result = v_result
  WHERE e.id = p_event_id;
  RETURN v_result || pg_catalog.jsonb_build_object('replayed', false);
END;
$$;
SELECT creditgate.expose('public.process_stripe_event(text, text, jsonb, jsonb)', 'service_role');
