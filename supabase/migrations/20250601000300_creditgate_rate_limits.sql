-- =============================================================================
-- creditgate 3/4: rate limits, and a rate limit applied together with a charge.
--
-- Guarantee: for a key, a limit N and a window W (1 s to 86400 s), the costs of
-- the requests allowed in any interval of length W (ends included) add up to
-- at most N. Limit and window are part of the key, so a 100/min and a 5/h
-- policy never share a counter. A denied request consumes and writes nothing.
--
-- How: a sliding window over 20 buckets of W/20. A request at time t counts
-- every bucket that overlaps [t - W, t]; so when a request is allowed at t,
-- every request allowed in [t - W, t] was counted, and no interval of length
-- W can hold more than N. The price of the buckets: a request may be refused
-- up to W/20 before a strict sliding log would allow it, never allowed early.
-- Storage per key is at most 21 (bucket, cost) pairs, and
-- cleanup_expired_rate_limits() deletes keys with nothing left in their window.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Limits
-- -----------------------------------------------------------------------------

-- Buckets per window: W/20 is the most a request can be refused early.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_buckets() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = '' AS $$ SELECT 20 $$;
-- Requests (or cost units) per window: far above any per-user policy, and
-- small enough that no sum of costs in a window can overflow an integer.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = '' AS $$ SELECT 1000000 $$;
-- Windows from one second to one day.
CREATE OR REPLACE FUNCTION creditgate.window_seconds_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = '' AS $$ SELECT 86400 $$;
-- A key names a subject ("user:<uuid>", "ip:<address>"); also an index bound.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_key_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = '' AS $$ SELECT 255 $$;
-- check_rate_limit's key is p_type || ':' || p_identifier: 64 + 1 + 190 = 255.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_type_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = '' AS $$ SELECT 64 $$;
CREATE OR REPLACE FUNCTION creditgate.rate_limit_identifier_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = '' AS $$ SELECT 190 $$;

REVOKE ALL ON FUNCTION creditgate.rate_limit_buckets(), creditgate.rate_limit_max(),
  creditgate.window_seconds_max(), creditgate.rate_limit_key_length_max(),
  creditgate.rate_limit_type_length_max(), creditgate.rate_limit_identifier_length_max() FROM PUBLIC;

/** Milliseconds to whole seconds, rounded up: a client told to wait never comes back early. */
CREATE OR REPLACE FUNCTION creditgate.seconds_ceil(p_milliseconds bigint) RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = ''
AS $$ SELECT ((p_milliseconds + 999) / 1000)::integer $$;
REVOKE ALL ON FUNCTION creditgate.seconds_ceil(bigint) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- The rate limiter
-- -----------------------------------------------------------------------------

/**
 * Applies (p_consume) or only evaluates a request of weight p_cost against
 * p_limit per p_window_seconds for p_key at time p_now. Returns whether it is
 * allowed, the cost used in the window (this request included when allowed
 * and consumed), what remains, when the window is empty again (reset_ms) and,
 * when refused, when this request would be allowed (retry_after_ms).
 * Locks: the (key, limit, window) row, FOR UPDATE, when consuming.
 * Errors: 22023 (also p_cost above p_limit: such a request can never pass).
 */
CREATE OR REPLACE FUNCTION creditgate.rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer, p_consume boolean, p_now timestamptz)
RETURNS TABLE (allowed boolean, used integer, remaining integer, reset_ms bigint, retry_after_ms bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_buckets constant integer := creditgate.rate_limit_buckets();
  v_bucket_ms bigint;
  v_now_ms bigint;
  v_current bigint;
  v_ids bigint[] := '{}'::bigint[];
  v_costs integer[] := '{}'::integer[];
  v_used integer;
  v_allowed boolean;
  v_newest bigint;
  v_retry_ms bigint := 0::bigint;
BEGIN
  PERFORM creditgate.require_text('p_key', p_key, creditgate.rate_limit_key_length_max(), false);
  PERFORM creditgate.require_range('p_limit', p_limit, 1, creditgate.rate_limit_max());
  PERFORM creditgate.require_range('p_window_seconds', p_window_seconds, 1, creditgate.window_seconds_max());
  PERFORM creditgate.require_range('p_cost', p_cost, 1, p_limit);

  -- W is a whole number of seconds, so W/20 is a whole number of milliseconds.
  v_bucket_ms := p_window_seconds::bigint * 1000 / v_buckets;
  v_now_ms := pg_catalog.floor(EXTRACT(EPOCH FROM p_now) * 1000)::bigint;
  v_current := v_now_ms / v_bucket_ms;

  IF p_consume THEN
    INSERT INTO public.rate_limits AS r (key, max_requests, window_seconds, expires_at)
    VALUES (p_key, p_limit, p_window_seconds, p_now)
    ON CONFLICT DO NOTHING;
    SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
    FROM public.rate_limits r
    WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds
    FOR UPDATE;
  ELSE
    SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
    FROM public.rate_limits r
    WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds;
  END IF;

  -- Buckets overlapping [now - W, now]: bucket k covers [k, k+1) * bucket_ms.
  SELECT coalesce(pg_catalog.array_agg(b.id ORDER BY b.id), '{}'),
         coalesce(pg_catalog.array_agg(b.cost ORDER BY b.id), '{}')
  INTO v_ids, v_costs
  FROM ROWS FROM (pg_catalog.unnest(coalesce(v_ids, '{}')), pg_catalog.unnest(coalesce(v_costs, '{}'))) AS b(id, cost)
  WHERE b.id >= v_current - v_buckets;
  SELECT coalesce(sum(c), 0)::integer INTO v_used FROM pg_catalog.unnest(v_costs) AS c;
  v_allowed := v_used + p_cost <= p_limit;

  IF v_allowed AND p_consume THEN
    SELECT pg_catalog.array_agg(x.id ORDER BY x.id), pg_catalog.array_agg(x.cost ORDER BY x.id)
    INTO v_ids, v_costs
    FROM (SELECT b.id, sum(b.cost)::integer AS cost
          FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest(v_ids), pg_catalog.unnest(v_costs))
                UNION ALL SELECT v_current, p_cost) AS b(id, cost)
          GROUP BY b.id) x;
    v_used := v_used + p_cost;
    UPDATE public.rate_limits r
    SET bucket_ids = v_ids,
        bucket_costs = v_costs,
        expires_at = pg_catalog.to_timestamp(
          ((SELECT max(i) FROM pg_catalog.unnest(v_ids) AS i) + v_buckets + 1) * v_bucket_ms / 1000.0)
    WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds;
  END IF;

  SELECT max(i) INTO v_newest FROM pg_catalog.unnest(v_ids) AS i;
  IF NOT v_allowed THEN
    -- The oldest buckets leave the window first; find the first moment
    -- enough of them have left for this request to fit.
    SELECT min((x.id + v_buckets + 1) * v_bucket_ms - v_now_ms) INTO v_retry_ms
    FROM (SELECT b.id, sum(b.cost) OVER (ORDER BY b.id) AS freed
          FROM ROWS FROM (pg_catalog.unnest(v_ids), pg_catalog.unnest(v_costs)) AS b(id, cost)) x
    WHERE v_used - x.freed + p_cost <= p_limit;
  END IF;

  RETURN QUERY SELECT v_allowed, v_used, p_limit - v_used,
    CASE WHEN v_newest IS NULL THEN 0::bigint ELSE (v_newest + v_buckets + 1) * v_bucket_ms - v_now_ms END,
    v_retry_ms;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.rate_limit_at(text, integer, integer, integer, boolean, timestamptz) FROM PUBLIC;

/** apply_rate_limit at time p_now: see creditgate.rate_limit_at. */
CREATE OR REPLACE FUNCTION creditgate.apply_rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT r.allowed, p_limit, r.remaining, creditgate.seconds_ceil(r.reset_ms), creditgate.seconds_ceil(r.retry_after_ms)
  FROM creditgate.rate_limit_at(p_key, p_limit, p_window_seconds, p_cost, true, p_now) r
$$;
REVOKE ALL ON FUNCTION creditgate.apply_rate_limit_at(text, integer, integer, integer, timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('apply_rate_limit',
  'p_key text, p_limit integer, p_window_seconds integer, p_cost integer DEFAULT 1',
  'TABLE(allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)');

/**
 * A request of weight p_cost against p_limit per p_window_seconds for p_key.
 * What the IETF RateLimit and Retry-After headers need: limit, remaining,
 * reset_seconds (until the window is empty), retry_after_seconds (0 when
 * allowed). For service_role.
 */
CREATE OR REPLACE FUNCTION public.apply_rate_limit(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer DEFAULT 1)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT * FROM creditgate.apply_rate_limit_at(p_key, p_limit, p_window_seconds, p_cost, pg_catalog.clock_timestamp())
$$;
REVOKE ALL ON FUNCTION public.apply_rate_limit(text, integer, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.apply_rate_limit(text, integer, integer, integer) TO service_role;

/**
 * The seed's check_rate_limit at time p_now: one request for the key
 * p_type || ':' || p_identifier. current_count is the count in the window
 * after this request; window_end is when the window is empty again.
 * Errors: 22023.
 */
CREATE OR REPLACE FUNCTION creditgate.check_rate_limit_at(
  p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, current_count integer, window_end timestamptz, remaining integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
  PERFORM creditgate.require_text('p_identifier', p_identifier, creditgate.rate_limit_identifier_length_max(), false);
  PERFORM creditgate.require_text('p_type', p_type, creditgate.rate_limit_type_length_max(), false);
  RETURN QUERY
  SELECT r.allowed, r.used, p_now + pg_catalog.make_interval(secs => r.reset_ms / 1000.0), r.remaining
  FROM creditgate.rate_limit_at(p_type || ':' || p_identifier, p_max_requests, p_window_seconds, 1, true, p_now) r;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.check_rate_limit_at(text, text, integer, integer, timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('check_rate_limit',
  'p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer',
  'TABLE(allowed boolean, current_count integer, window_end timestamp with time zone, remaining integer)');

/** The seed's check_rate_limit, same signature and result, correct semantics. For service_role. */
CREATE OR REPLACE FUNCTION public.check_rate_limit(
  p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer)
RETURNS TABLE (allowed boolean, current_count integer, window_end timestamptz, remaining integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT * FROM creditgate.check_rate_limit_at(p_identifier, p_type, p_max_requests, p_window_seconds,
    pg_catalog.clock_timestamp())
$$;
REVOKE ALL ON FUNCTION public.check_rate_limit(text, text, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.check_rate_limit(text, text, integer, integer) TO service_role;
COMMENT ON FUNCTION public.check_rate_limit(text, text, integer, integer) IS
  'At most p_max_requests allowed in any interval of p_window_seconds for (p_type, p_identifier); denied requests are not counted.';

/** Deletes the state of keys with nothing left in their window at p_now; returns how many. */
CREATE OR REPLACE FUNCTION creditgate.cleanup_expired_rate_limits_at(p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_deleted integer;
BEGIN
  DELETE FROM public.rate_limits r WHERE r.expires_at <= p_now;
  GET DIAGNOSTICS v_deleted = ROW_COUNT;
  RETURN v_deleted;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.cleanup_expired_rate_limits_at(timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('cleanup_expired_rate_limits', '', 'integer');

/** Bounded storage: see creditgate.cleanup_expired_rate_limits_at. pg_cron runs it where available. */
CREATE OR REPLACE FUNCTION public.cleanup_expired_rate_limits()
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT creditgate.cleanup_expired_rate_limits_at(pg_catalog.clock_timestamp())
$$;
REVOKE ALL ON FUNCTION public.cleanup_expired_rate_limits() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.cleanup_expired_rate_limits() TO service_role;

-- -----------------------------------------------------------------------------
-- A rate limit and a charge, all or nothing
-- -----------------------------------------------------------------------------

/**
 * Applies the rate limit (p_limit_cost against p_limit per p_window_seconds
 * for p_limit_key), then the charge. Refused by the limit: allowed = false,
 * the job fields NULL, nothing consumed. A charge error (insufficient
 * credits, ...) rolls the whole call back, the limit included. A replay of an
 * idempotent charge returns the original job and consumes no limit.
 * Locks: idempotency claim, the rate_limits row, the users row, the user's jobs.
 * Errors: those of rate_limit_at and charge_credits_at.
 */
CREATE OR REPLACE FUNCTION creditgate.charge_credits_with_limit_at(
  p_user_id uuid, p_operation_type text, p_cost integer, p_limit_key text, p_limit integer,
  p_window_seconds integer, p_idempotency_key text, p_metadata jsonb, p_hold_seconds integer,
  p_limit_cost integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz,
               "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_metadata jsonb := creditgate.clean_metadata(p_metadata);
  v_replay jsonb;
  v_rate record;
  v_charge record;
BEGIN
  PERFORM creditgate.require_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key, p_hold_seconds);
  v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge',
    creditgate.charge_request_hash(p_operation_type, p_cost, v_metadata, p_hold_seconds));

  SELECT r.* INTO v_rate
  FROM creditgate.rate_limit_at(p_limit_key, p_limit, p_window_seconds, p_limit_cost, v_replay IS NULL, p_now) r;

  IF v_replay IS NOT NULL THEN
    RETURN QUERY SELECT true, (v_replay ->> 'job_id')::uuid, (v_replay ->> 'new_balance')::integer, true,
      (v_replay ->> 'expires_at')::timestamptz, p_limit, v_rate.remaining,
      creditgate.seconds_ceil(v_rate.reset_ms), 0;
    RETURN;
  END IF;
  IF NOT v_rate.allowed THEN
    RETURN QUERY SELECT false, NULL::uuid, NULL::integer, false, NULL::timestamptz, p_limit, v_rate.remaining,
      creditgate.seconds_ceil(v_rate.reset_ms), creditgate.seconds_ceil(v_rate.retry_after_ms);
    RETURN;
  END IF;

  SELECT c.* INTO v_charge
  FROM creditgate.charge_credits_at(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_metadata,
    p_hold_seconds, p_now) c;
  RETURN QUERY SELECT true, v_charge.job_id, v_charge.new_balance, v_charge.replayed, v_charge.expires_at,
    p_limit, v_rate.remaining, creditgate.seconds_ceil(v_rate.reset_ms), 0;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.charge_credits_with_limit_at(uuid, text, integer, text, integer, integer, text, jsonb, integer, integer, timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('charge_credits_with_limit',
  $a$p_user_id uuid, p_operation_type text, p_cost integer, p_limit_key text, p_limit integer, p_window_seconds integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900, p_limit_cost integer DEFAULT 1$a$,
  'TABLE(allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamp with time zone, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)');

/** Rate limit and charge in one call, all or nothing: see creditgate.charge_credits_with_limit_at. For service_role. */
CREATE OR REPLACE FUNCTION public.charge_credits_with_limit(
  p_user_id uuid, p_operation_type text, p_cost integer, p_limit_key text, p_limit integer,
  p_window_seconds integer, p_idempotency_key text DEFAULT NULL, p_metadata jsonb DEFAULT '{}'::jsonb,
  p_hold_seconds integer DEFAULT 900, p_limit_cost integer DEFAULT 1)
RETURNS TABLE (allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz,
               "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT * FROM creditgate.charge_credits_with_limit_at(p_user_id, p_operation_type, p_cost, p_limit_key,
    p_limit, p_window_seconds, p_idempotency_key, p_metadata, p_hold_seconds, p_limit_cost,
    pg_catalog.clock_timestamp())
$$;
REVOKE ALL ON FUNCTION public.charge_credits_with_limit(uuid, text, integer, text, integer, integer, text, jsonb, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.charge_credits_with_limit(uuid, text, integer, text, integer, integer, text, jsonb, integer, integer) TO service_role;

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
NOTIFY pgrst, 'reload schema';
