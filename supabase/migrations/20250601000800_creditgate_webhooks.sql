-- =============================================================================
-- creditgate: signed webhooks out (each public.credit_events row, delivered to
-- CREDITGATE_WEBHOOK_URL by the `credits` function's POST /webhooks/deliver).
-- Contract: docs/rpc.md ("Webhooks out"); design: docs/design.md ("Webhooks out").
--
-- The queue: one public.credit_webhook_deliveries row per event, written by
-- a trigger on credit_events in the transaction that wrote the event (so no
-- event committed is missed, and none rolled back is sent). The trigger
-- queues only while a drain has run in the last 7 days (creditgate.webhook_queue):
-- a project with no webhook URL never drains, so nothing accumulates. Drains
-- claim due rows with FOR UPDATE SKIP LOCKED and lease them (next_attempt_at
-- moves to the lease's end), so two concurrent drains never hold the same
-- delivery; a drain that dies leaves a lease that runs out, and the delivery
-- is claimed again (at least once, with the same event id). Outcomes:
-- delivered; or retried with exponential backoff (10 s doubling, capped at
-- 1 h); or, after 16 attempts, failed, with the last HTTP status and error
-- for an operator. Delivered rows go after 7 days, failed ones after 30.
-- Runs fresh and again (changing nothing).
-- =============================================================================

/** Webhook deliveries of balance events: one row per event queued. */
CREATE TABLE IF NOT EXISTS public.credit_webhook_deliveries (
  user_id uuid NOT NULL,
  event_id bigint NOT NULL,
  -- pending (waiting or leased to a drain), delivered (a 2xx answer), failed (given up)
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
  -- attempts made (claims); a claim counts before the POST is sent
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  -- when the delivery is next due: the backoff's end, or a claim's lease end
  next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  last_http_status integer,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  delivered_at timestamptz,
  failed_at timestamptz,
  PRIMARY KEY (user_id, event_id)
);
CREATE INDEX IF NOT EXISTS credit_webhook_deliveries_due ON public.credit_webhook_deliveries (next_attempt_at)
  WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS credit_webhook_deliveries_done ON public.credit_webhook_deliveries (status, created_at)
  WHERE status <> 'pending';
COMMENT ON TABLE public.credit_webhook_deliveries IS
  'Webhook deliveries of credit_events (docs/rpc.md, "Webhooks out"): status failed rows are what an operator looks at.';

REVOKE ALL ON TABLE public.credit_webhook_deliveries FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.credit_webhook_deliveries TO service_role;
ALTER TABLE public.credit_webhook_deliveries ENABLE ROW LEVEL SECURITY;

/** When a drain last ran: events are queued while it is recent. One row. */
CREATE TABLE IF NOT EXISTS creditgate.webhook_queue (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  drained_at timestamptz NOT NULL
);
REVOKE ALL ON TABLE creditgate.webhook_queue FROM PUBLIC, anon, authenticated, service_role;

/** The retry schedule: the wait after failed attempt p_attempt (1, 2, ...): 10 s doubling, at most 1 h. */
CREATE OR REPLACE FUNCTION creditgate.webhook_retry_delay(p_attempt integer)
RETURNS interval
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT pg_catalog.make_interval(secs => LEAST(3600, 10 * pg_catalog.power(2, LEAST(GREATEST(p_attempt, 1) - 1, 20))))
$$;
REVOKE ALL ON FUNCTION creditgate.webhook_retry_delay(integer) FROM PUBLIC, anon, authenticated;

/** The retry bound (a policy, not an input limit): a delivery fails for good after this many attempts. */
CREATE OR REPLACE FUNCTION creditgate.webhook_give_up_after()
RETURNS integer
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 16 $$;
REVOKE ALL ON FUNCTION creditgate.webhook_give_up_after() FROM PUBLIC, anon, authenticated;

/** Trigger on credit_events: queues the event's delivery while webhooks are drained. */
CREATE OR REPLACE FUNCTION creditgate.queue_credit_event_delivery()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF EXISTS (SELECT FROM creditgate.webhook_queue q WHERE q.drained_at > NEW.created_at - interval '7 days') THEN
    INSERT INTO public.credit_webhook_deliveries (user_id, event_id, next_attempt_at, created_at)
    VALUES (NEW.user_id, NEW.id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.queue_credit_event_delivery() FROM PUBLIC, anon, authenticated;

DROP TRIGGER IF EXISTS credit_events_queue_delivery ON public.credit_events;
CREATE TRIGGER credit_events_queue_delivery AFTER INSERT ON public.credit_events
  FOR EACH ROW EXECUTE FUNCTION creditgate.queue_credit_event_delivery();

/**
 * Claims up to p_limit due deliveries for one drain, leased for
 * p_lease_seconds (no other drain claims them meanwhile), oldest first.
 * Marks the queue as drained (events are queued from now on), gives up on
 * leases that ran out at the last attempt, and prunes old finished rows.
 * The clock is p_now (tests); the public function passes clock_timestamp().
 */
CREATE OR REPLACE FUNCTION creditgate.claim_credit_event_deliveries_at(p_limit integer, p_lease_seconds integer,
  p_now timestamptz)
RETURNS TABLE (event_id bigint, user_id uuid, type text, payload jsonb, created_at timestamptz, attempt integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', 'p_limit must be from 1 to 1000',
      pg_catalog.jsonb_build_object('field', 'p_limit'));
  END IF;
  IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND 3600 THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', 'p_lease_seconds must be from 1 to 3600',
      pg_catalog.jsonb_build_object('field', 'p_lease_seconds'));
  END IF;

  -- Queue from now on (written at most once a minute: concurrent drains do
  -- not queue up behind this row).
  UPDATE creditgate.webhook_queue q SET drained_at = p_now WHERE q.drained_at < p_now - interval '1 minute';
  IF NOT FOUND THEN
    INSERT INTO creditgate.webhook_queue (id, drained_at) VALUES (true, p_now) ON CONFLICT (id) DO NOTHING;
  END IF;

  -- A lease that ran out on the last attempt: no outcome came back; give up.
  UPDATE public.credit_webhook_deliveries d
  SET status = 'failed', failed_at = p_now,
      last_error = coalesce(d.last_error || '; ', '') || 'the last attempt''s lease ran out with no outcome'
  WHERE d.status = 'pending' AND d.next_attempt_at <= p_now AND d.attempts >= creditgate.webhook_give_up_after();

  -- Finished rows do not stay forever.
  DELETE FROM public.credit_webhook_deliveries d
  WHERE (d.user_id, d.event_id) IN (
    SELECT o.user_id, o.event_id FROM public.credit_webhook_deliveries o
    WHERE (o.status = 'delivered' AND o.created_at < p_now - interval '7 days')
       OR (o.status = 'failed' AND o.created_at < p_now - interval '30 days')
    LIMIT 1000);

  RETURN QUERY
  WITH due AS (
    SELECT d.user_id, d.event_id FROM public.credit_webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= p_now
    ORDER BY d.next_attempt_at, d.event_id
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  ), leased AS (
    UPDATE public.credit_webhook_deliveries d
    SET attempts = d.attempts + 1, next_attempt_at = p_now + pg_catalog.make_interval(secs => p_lease_seconds)
    FROM due WHERE d.user_id = due.user_id AND d.event_id = due.event_id
    RETURNING d.user_id, d.event_id, d.attempts
  )
  SELECT l.event_id, l.user_id, e.type, e.payload, e.created_at, l.attempts
  FROM leased l JOIN public.credit_events e ON e.id = l.event_id AND e.user_id = l.user_id
  ORDER BY l.event_id;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.claim_credit_event_deliveries_at(integer, integer, timestamptz)
  FROM PUBLIC, anon, authenticated;

/**
 * Claims due webhook deliveries for a drain (see the _at function). Returns
 * each event with its attempt number, which the drain passes back to
 * record_credit_event_delivery. For service_role.
 */
CREATE OR REPLACE FUNCTION public.claim_credit_event_deliveries(p_limit integer, p_lease_seconds integer)
RETURNS TABLE (event_id bigint, user_id uuid, type text, payload jsonb, created_at timestamptz, attempt integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT * FROM creditgate.claim_credit_event_deliveries_at(p_limit, p_lease_seconds, pg_catalog.clock_timestamp())
$$;
SELECT creditgate.expose('public.claim_credit_event_deliveries(integer, integer)', 'service_role');

/**
 * Records the outcome of attempt p_attempt of a delivery: a 2xx p_http_status
 * delivers it; anything else (another status, or none with p_error: a
 * timeout, a refused connection) schedules the next attempt after the
 * backoff, or gives up after creditgate.webhook_give_up_after() attempts.
 * A failure reported for an older attempt than the row's (its lease ran out
 * and another drain claimed it) changes nothing; a success always
 * delivers. Returns the delivery's status: pending, delivered, failed.
 */
CREATE OR REPLACE FUNCTION creditgate.record_credit_event_delivery_at(p_user_id uuid, p_event_id bigint,
  p_attempt integer, p_http_status integer, p_error text, p_now timestamptz)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_row public.credit_webhook_deliveries;
  v_ok boolean := p_http_status BETWEEN 200 AND 299;
BEGIN
  IF p_attempt IS NULL OR p_attempt < 1 OR (p_http_status IS NULL AND p_error IS NULL)
     OR p_http_status NOT BETWEEN 100 AND 599 THEN
    PERFORM creditgate.fail('22023', 'invalid_argument',
      'p_attempt (from 1) and an outcome (p_http_status from 100 to 599, or p_error) are required',
      pg_catalog.jsonb_build_object('field', 'p_http_status'));
  END IF;
  SELECT * INTO v_row FROM public.credit_webhook_deliveries d
  WHERE d.user_id = p_user_id AND d.event_id = p_event_id FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', 'no webhook delivery for this user and event',
      pg_catalog.jsonb_build_object('field', 'p_event_id', 'event_id', p_event_id));
  END IF;
  IF v_row.status <> 'pending' OR p_attempt > v_row.attempts OR (NOT v_ok AND p_attempt < v_row.attempts) THEN
    RETURN v_row.status;
  END IF;
  IF v_ok THEN
    UPDATE public.credit_webhook_deliveries d
    SET status = 'delivered', delivered_at = p_now, last_http_status = p_http_status, last_error = NULL
    WHERE d.user_id = p_user_id AND d.event_id = p_event_id;
    RETURN 'delivered';
  END IF;
  IF v_row.attempts >= creditgate.webhook_give_up_after() THEN
    UPDATE public.credit_webhook_deliveries d
    SET status = 'failed', failed_at = p_now, last_http_status = p_http_status, last_error = pg_catalog.left(p_error, 1000)
    WHERE d.user_id = p_user_id AND d.event_id = p_event_id;
    RETURN 'failed';
  END IF;
  UPDATE public.credit_webhook_deliveries d
  SET next_attempt_at = p_now + creditgate.webhook_retry_delay(v_row.attempts),
      last_http_status = p_http_status, last_error = pg_catalog.left(p_error, 1000)
  WHERE d.user_id = p_user_id AND d.event_id = p_event_id;
  RETURN 'pending';
END;
$$;
REVOKE ALL ON FUNCTION creditgate.record_credit_event_delivery_at(uuid, bigint, integer, integer, text, timestamptz)
  FROM PUBLIC, anon, authenticated;

/** Records a delivery attempt's outcome (see the _at function). For service_role. */
CREATE OR REPLACE FUNCTION public.record_credit_event_delivery(p_user_id uuid, p_event_id bigint, p_attempt integer,
  p_http_status integer, p_error text)
RETURNS text
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT creditgate.record_credit_event_delivery_at(p_user_id, p_event_id, p_attempt, p_http_status, p_error,
    pg_catalog.clock_timestamp())
$$;
SELECT creditgate.expose('public.record_credit_event_delivery(uuid, bigint, integer, integer, text)', 'service_role');
