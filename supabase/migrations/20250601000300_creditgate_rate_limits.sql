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
-- Functions on the request path are plpgsql, as in 20250601000200 (a
-- LANGUAGE sql function is parsed and planned again at every call).
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Limits
-- -----------------------------------------------------------------------------

-- Buckets per window: W/20 is the most a request can be refused early.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_buckets() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 20 $$;
-- Requests (or cost units) per window: far above any per-user policy, and
-- small enough that no sum of costs in a window can overflow an integer.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 1000000 $$;
-- Windows from one second to one day.
CREATE OR REPLACE FUNCTION creditgate.window_seconds_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 86400 $$;
-- A key names a subject ("user:<uuid>", "ip:<address>"); also an index bound.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_key_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 255 $$;
-- check_rate_limit's key is p_type || ':' || p_identifier: 64 + 1 + 190 = 255.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_type_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 64 $$;
CREATE OR REPLACE FUNCTION creditgate.rate_limit_identifier_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 190 $$;

REVOKE ALL ON FUNCTION creditgate.rate_limit_buckets(), creditgate.rate_limit_max(),
  creditgate.window_seconds_max(), creditgate.rate_limit_key_length_max(),
  creditgate.rate_limit_type_length_max(), creditgate.rate_limit_identifier_length_max() FROM PUBLIC;

-- The functions below check their arguments inline with these bounds (and,
-- in the combined call, the charge's) as literals, and call the named checks
-- only when one fails, to raise the precise error (see the same block in
-- 20250601000200_creditgate_credits.sql). A changed limit fails this file
-- instead of drifting from the literals.
DO $$
BEGIN
  IF NOT (creditgate.rate_limit_buckets() = 20
          AND creditgate.rate_limit_max() = 1000000
          AND creditgate.window_seconds_max() = 86400
          AND creditgate.rate_limit_key_length_max() = 255
          AND creditgate.rate_limit_type_length_max() = 64
          AND creditgate.rate_limit_identifier_length_max() = 190
          AND creditgate.cost_credits_max() = 1000000000
          AND creditgate.idempotency_key_length_max() = 255
          AND creditgate.operation_type_length_max() = 64
          AND creditgate.metadata_bytes_max() = 4096
          AND creditgate.hold_seconds_max() = 86400) THEN
    RAISE EXCEPTION 'creditgate: a named limit changed: update the literals of the fast paths in 20250601000300_creditgate_rate_limits.sql';
  END IF;
END
$$;

/** Milliseconds to whole seconds, rounded up: a client told to wait never comes back early. */
CREATE OR REPLACE FUNCTION creditgate.seconds_ceil(p_milliseconds bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN ((p_milliseconds + 999) / 1000)::integer; END $$;
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
 * A refusal is decided on a plain read: no lock, no write, no transaction id,
 * so nothing to wait for at commit.
 * Locks: the (key, limit, window) row, FOR UPDATE, only when consuming a
 * request that fits.
 * Errors: 22023 (also p_cost above p_limit: such a request can never pass).
 */
CREATE OR REPLACE FUNCTION creditgate.rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer, p_consume boolean, p_now timestamptz)
RETURNS TABLE (allowed boolean, used integer, remaining integer, reset_ms bigint, retry_after_ms bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_buckets constant integer := 20;  -- creditgate.rate_limit_buckets(), asserted above
  v_bucket_ms bigint;
  v_now_ms bigint;
  v_current bigint;
  v_ids bigint[];
  v_costs integer[];
  v_kept_ids bigint[] := '{}'::bigint[];
  v_kept_costs integer[] := '{}'::integer[];
  v_used integer := 0;
  v_count integer;
  v_position integer;
  v_freed integer := 0;
  v_retry_ms bigint := 0::bigint;
  v_newest bigint;
  v_locked boolean := false;
BEGIN
  IF NOT (pg_catalog.char_length(p_key) BETWEEN 1 AND 255 AND p_limit BETWEEN 1 AND 1000000
          AND p_window_seconds BETWEEN 1 AND 86400 AND p_cost BETWEEN 1 AND p_limit) IS TRUE THEN
    -- Only to raise the precise error: the literals are the named limits.
    PERFORM creditgate.require_text('p_key', p_key, creditgate.rate_limit_key_length_max(), false);
    PERFORM creditgate.require_range('p_limit', p_limit, 1, creditgate.rate_limit_max());
    PERFORM creditgate.require_range('p_window_seconds', p_window_seconds, 1, creditgate.window_seconds_max());
    PERFORM creditgate.require_range('p_cost', p_cost, 1, p_limit);
  END IF;

  -- W is a whole number of seconds, so W/20 is a whole number of milliseconds.
  v_bucket_ms := p_window_seconds::bigint * 1000 / v_buckets;
  v_now_ms := pg_catalog.floor(EXTRACT(EPOCH FROM p_now) * 1000)::bigint;
  v_current := v_now_ms / v_bucket_ms;

  -- A plain read first. For a fixed p_now a key's count in the window only
  -- grows (allowed requests add to it; cleanup deletes only keys with nothing
  -- in their window), so a request that does not fit in this snapshot does
  -- not fit under the lock either: it is refused here, with no lock and no
  -- write. Only a request that fits locks the row and decides again.
  LOOP
    IF v_locked THEN
      SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
      FROM public.rate_limits r
      WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds
      FOR UPDATE;
      IF NOT FOUND THEN
        INSERT INTO public.rate_limits AS r (key, max_requests, window_seconds, expires_at)
        VALUES (p_key, p_limit, p_window_seconds, p_now)
        ON CONFLICT DO NOTHING;
        SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
        FROM public.rate_limits r
        WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds
        FOR UPDATE;
      END IF;
    ELSE
      SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
      FROM public.rate_limits r
      WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds;
    END IF;

    -- Buckets overlapping [now - W, now]: bucket k covers [k, k+1) * bucket_ms.
    v_kept_ids := '{}'::bigint[];
    v_kept_costs := '{}'::integer[];
    v_used := 0;
    FOR v_position IN 1 .. coalesce(pg_catalog.array_length(v_ids, 1), 0) LOOP
      IF v_ids[v_position] >= v_current - v_buckets THEN
        v_kept_ids := v_kept_ids || v_ids[v_position];
        v_kept_costs := v_kept_costs || v_costs[v_position];
        v_used := v_used + v_costs[v_position];
      END IF;
    END LOOP;

    EXIT WHEN v_locked OR p_consume IS NOT TRUE OR v_used + p_cost > p_limit;
    v_locked := true;
  END LOOP;

  IF v_used + p_cost <= p_limit AND p_consume IS TRUE THEN
    -- Add the cost to the current bucket, keeping the buckets in id order.
    v_count := coalesce(pg_catalog.array_length(v_kept_ids, 1), 0);
    v_position := pg_catalog.array_position(v_kept_ids, v_current);
    IF v_position IS NOT NULL THEN
      v_kept_costs[v_position] := v_kept_costs[v_position] + p_cost;
    ELSIF v_count = 0 OR v_kept_ids[v_count] < v_current THEN
      v_kept_ids := v_kept_ids || v_current;
      v_kept_costs := v_kept_costs || p_cost;
    ELSE
      -- The clock went back (tests drive it): insert in order.
      SELECT pg_catalog.array_agg(b.id ORDER BY b.id), pg_catalog.array_agg(b.cost ORDER BY b.id)
      INTO v_kept_ids, v_kept_costs
      FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest(v_kept_ids), pg_catalog.unnest(v_kept_costs))
            UNION ALL SELECT v_current, p_cost) AS b(id, cost);
    END IF;
    v_used := v_used + p_cost;
    v_newest := v_kept_ids[pg_catalog.array_length(v_kept_ids, 1)];
    UPDATE public.rate_limits r
    SET bucket_ids = v_kept_ids,
        bucket_costs = v_kept_costs,
        expires_at = pg_catalog.to_timestamp((v_newest + v_buckets + 1) * v_bucket_ms / 1000.0)
    WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds;
    RETURN QUERY SELECT true, v_used, p_limit - v_used, (v_newest + v_buckets + 1) * v_bucket_ms - v_now_ms, 0::bigint;
    RETURN;
  END IF;

  v_count := coalesce(pg_catalog.array_length(v_kept_ids, 1), 0);
  v_newest := CASE WHEN v_count > 0 THEN v_kept_ids[v_count] END;
  IF v_used + p_cost > p_limit THEN
    -- The oldest buckets leave the window first: the first moment enough of
    -- them have left for this request to fit.
    v_retry_ms := NULL;
    FOR v_position IN 1 .. v_count LOOP
      v_freed := v_freed + v_kept_costs[v_position];
      IF v_used - v_freed + p_cost <= p_limit THEN
        v_retry_ms := (v_kept_ids[v_position] + v_buckets + 1) * v_bucket_ms - v_now_ms;
        EXIT;
      END IF;
    END LOOP;
  END IF;
  RETURN QUERY SELECT v_used + p_cost <= p_limit, v_used, p_limit - v_used,
    CASE WHEN v_newest IS NULL THEN 0::bigint ELSE (v_newest + v_buckets + 1) * v_bucket_ms - v_now_ms END,
    v_retry_ms;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.rate_limit_at(text, integer, integer, integer, boolean, timestamptz) FROM PUBLIC;

/** apply_rate_limit at time p_now: see creditgate.rate_limit_at. */
CREATE OR REPLACE FUNCTION creditgate.apply_rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT r.allowed, p_limit, r.remaining, creditgate.seconds_ceil(r.reset_ms), creditgate.seconds_ceil(r.retry_after_ms)
    FROM creditgate.rate_limit_at(p_key, p_limit, p_window_seconds, p_cost, true, p_now) r;
END;
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
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.apply_rate_limit_at(p_key, p_limit, p_window_seconds, p_cost, pg_catalog.clock_timestamp());
END;
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
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT (pg_catalog.char_length(p_identifier) BETWEEN 1 AND 190
          AND pg_catalog.char_length(p_type) BETWEEN 1 AND 64) IS TRUE THEN
    PERFORM creditgate.require_text('p_identifier', p_identifier, creditgate.rate_limit_identifier_length_max(), false);
    PERFORM creditgate.require_text('p_type', p_type, creditgate.rate_limit_type_length_max(), false);
  END IF;
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
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.check_rate_limit_at(p_identifier, p_type, p_max_requests, p_window_seconds,
      pg_catalog.clock_timestamp());
END;
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
SET search_path = pg_catalog, pg_temp
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
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.cleanup_expired_rate_limits_at(pg_catalog.clock_timestamp());
END;
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
 * Locks: idempotency claim, the rate_limits row (not for a refusal), the
 * users row, the user's jobs.
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
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
  v_replay jsonb;
  v_rate record;
  v_charge record;
BEGIN
  -- The fast paths of creditgate.charge_credits_at (literals asserted above).
  IF NOT (pg_catalog.jsonb_typeof(v_metadata) = 'object'
          AND pg_catalog.octet_length(v_metadata::text) <= 4096) THEN
    v_metadata := creditgate.clean_metadata(p_metadata);
  END IF;
  IF NOT (p_user_id IS NOT NULL
          AND pg_catalog.char_length(p_operation_type) BETWEEN 1 AND 64
          AND p_cost BETWEEN 1 AND 1000000000
          AND (p_idempotency_key IS NULL OR pg_catalog.char_length(p_idempotency_key) BETWEEN 1 AND 255)
          AND p_hold_seconds BETWEEN 1 AND 86400) IS TRUE THEN
    PERFORM creditgate.require_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key, p_hold_seconds);
  END IF;
  IF p_idempotency_key IS NOT NULL THEN
    v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge',
      creditgate.charge_request_hash(p_operation_type, p_cost, v_metadata, p_hold_seconds));
  END IF;

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
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.charge_credits_with_limit_at(p_user_id, p_operation_type, p_cost, p_limit_key,
      p_limit, p_window_seconds, p_idempotency_key, p_metadata, p_hold_seconds, p_limit_cost,
      pg_catalog.clock_timestamp());
END;
$$;
REVOKE ALL ON FUNCTION public.charge_credits_with_limit(uuid, text, integer, text, integer, integer, text, jsonb, integer, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.charge_credits_with_limit(uuid, text, integer, text, integer, integer, text, jsonb, integer, integer) TO service_role;

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
NOTIFY pgrst, 'reload schema';
