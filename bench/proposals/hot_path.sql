-- =============================================================================
-- bench/proposals/hot_path.sql: a proposed change to creditgate's SQL, applied
-- over the migrations (it is NOT one of them). Same behaviour, same errors and
-- messages, same results; fewer function calls, reads and writes per request.
--
-- Measure it:     cargo dev bench --patch bench/proposals/hot_path.sql
-- Check it:       cargo dev bench --patch-check bench/proposals/hot_path.sql
--                 (migrations + this file, then the pgTAP suite and the
--                 model-based concurrency test against the result)
--
-- Where the time went (pg_stat_statements, track = all, `cargo dev bench
-- --analyze`), per charge: ~1.5 ms of executor time against the seed's ~0.4 ms.
-- Every creditgate function is SECURITY DEFINER with SET search_path (pgTAP
-- 01-schema enforces it), so none can be inlined: each call saves and restores
-- the GUC state, and a charge made about 25 of them (the argument checks alone,
-- require_charge_arguments -> require_id/require_text/require_range -> require,
-- with format() and jsonb_build_object() evaluated even when the argument is
-- fine, took ~180 us; looking for expired holds through lock_user ->
-- release_expired_holds -> void_open_holds ~135 us, to find none). The rate
-- limiter took a row lock (a WAL record and a synchronous commit) even to
-- deny, and its table is WAL-logged although losing it loses only counters.
--
-- What this file changes (each a section below):
--   1. Fast paths: every hot function checks its arguments inline and calls
--      the named checks only when one fails (to raise the same error). The
--      bounds are literals, asserted equal to the named limit functions here,
--      so a changed limit fails this file instead of drifting.
--   2. lock_user reads balance and closed_at in one statement and calls the
--      expired-hold release only when an EXISTS finds one.
--   3. charge: no idempotency work without a key; the key row inserted inline;
--      atomic_charge_credits calls the internal function directly (one
--      SECURITY DEFINER wrapper less).
--   4. generation_jobs_open_expiry dropped: the sweeper's scan is served by
--      generation_jobs_open_user_expiry (same predicate, user_id first: it
--      lists open holds by user, which is what the sweeper wants). One index
--      write less per charge and per settlement.
--   5. Rate limits: a denial is decided on a plain read (no lock, no write, no
--      transaction id: nothing to wait for at commit); the bucket arithmetic
--      is plpgsql array work instead of five SQL statements; the table is
--      UNLOGGED (DESIGN.md: losing counters in a crash is acceptable, losing
--      credits is not; credits never live in it). An UNLOGGED table is
--      truncated by crash recovery and not replicated to read replicas; only
--      the primary's RPCs read it.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- 1. The literals of the fast paths, checked against the named limits
-- -----------------------------------------------------------------------------
DO $$
BEGIN
  ASSERT creditgate.cost_credits_max() = 1000000000
     AND creditgate.idempotency_key_length_max() = 255
     AND creditgate.operation_type_length_max() = 64
     AND creditgate.hold_seconds_max() = 86400
     AND creditgate.metadata_bytes_max() = 4096
     AND creditgate.reason_length_max() = 500
     AND creditgate.result_url_length_max() = 2048
     AND creditgate.rate_limit_buckets() = 20
     AND creditgate.rate_limit_max() = 1000000
     AND creditgate.window_seconds_max() = 86400
     AND creditgate.rate_limit_key_length_max() = 255
     AND creditgate.rate_limit_type_length_max() = 64
     AND creditgate.rate_limit_identifier_length_max() = 190,
    'a named limit changed: update the literals of bench/proposals/hot_path.sql';
END
$$;

-- -----------------------------------------------------------------------------
-- 2. lock_user: one read of the row; the release only when there is one
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION creditgate.lock_user(p_user_id uuid, p_now timestamptz, p_open boolean)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_closed_at timestamptz;
  v_balance integer;
BEGIN
  SELECT u.closed_at, u.credits INTO v_closed_at, v_balance FROM public.users u WHERE u.id = p_user_id FOR UPDATE;
  IF NOT FOUND OR (p_open AND v_closed_at IS NOT NULL) THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found',
      pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  -- Most calls find no expired hold: look (an index probe) before releasing.
  IF EXISTS (SELECT FROM public.generation_jobs j
             WHERE j.user_id = p_user_id AND j.status IN ('pending', 'processing') AND j.expires_at <= p_now) THEN
    PERFORM creditgate.release_expired_holds(p_user_id, p_now);
    SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  END IF;
  RETURN v_balance;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.lock_user(uuid, timestamptz, boolean) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- 3. Charge
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION creditgate.charge_credits_at(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text,
  p_metadata jsonb, p_hold_seconds integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
  v_hash text;
  v_replay jsonb;
  v_balance integer;
  v_job_id uuid;
  v_expires_at timestamptz;
BEGIN
  -- Fast path of creditgate.clean_metadata and require_charge_arguments
  -- (the bounds of section 1); they run only to raise the precise error.
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
    v_hash := creditgate.charge_request_hash(p_operation_type, p_cost, v_metadata, p_hold_seconds);
    v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge', v_hash);
    IF v_replay IS NOT NULL THEN
      RETURN QUERY SELECT (v_replay ->> 'job_id')::uuid, (v_replay ->> 'new_balance')::integer, true,
        (v_replay ->> 'expires_at')::timestamptz;
      RETURN;
    END IF;
  END IF;

  v_balance := creditgate.lock_user(p_user_id, p_now, true);
  IF v_balance < p_cost THEN
    PERFORM creditgate.fail('PT402', 'insufficient_credits',
      pg_catalog.format('Insufficient credits: has %s needs %s', v_balance, p_cost),
      pg_catalog.jsonb_build_object('balance', v_balance, 'needed', p_cost));
  END IF;

  v_expires_at := p_now + pg_catalog.make_interval(secs => p_hold_seconds);
  INSERT INTO public.generation_jobs AS j
    (user_id, operation_type, status, cost, idempotency_key, metadata, created_at, expires_at)
  VALUES
    (p_user_id, p_operation_type, 'pending', p_cost, p_idempotency_key, v_metadata, p_now, v_expires_at)
  RETURNING j.id INTO v_job_id;

  v_balance := creditgate.apply_delta(p_user_id, -p_cost, 'charge', p_operation_type,
    p_operation_type || ' generation',
    v_metadata || pg_catalog.jsonb_build_object('job_id', v_job_id, 'idempotency_key', p_idempotency_key),
    v_job_id);

  IF p_idempotency_key IS NOT NULL THEN
    INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
    VALUES (p_user_id, p_idempotency_key, 'charge', 'completed', v_hash,
      pg_catalog.jsonb_build_object('job_id', v_job_id, 'new_balance', v_balance, 'expires_at', v_expires_at),
      v_job_id);
  END IF;
  RETURN QUERY SELECT v_job_id, v_balance, false, v_expires_at;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.charge_credits_at(uuid, text, integer, text, jsonb, integer, timestamptz) FROM PUBLIC;

/** The seed's charge: creditgate.charge_credits_at with the default hold, called directly. */
CREATE OR REPLACE FUNCTION public.atomic_charge_credits(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (job_id uuid, new_balance integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT c.job_id, c.new_balance
  FROM creditgate.charge_credits_at(p_user_id, p_operation_type, p_cost, p_idempotency_key, p_metadata, 900,
    pg_catalog.clock_timestamp()) c
$$;
REVOKE ALL ON FUNCTION public.atomic_charge_credits(uuid, text, integer, text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.atomic_charge_credits(uuid, text, integer, text, jsonb) TO service_role;

-- -----------------------------------------------------------------------------
-- Settlement: the same fast paths
-- -----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION creditgate.complete_generation_job_at(
  p_job_id uuid, p_result_url text, p_actual_cost integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, status text, new_balance integer, refunded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_user_id uuid;
  v_job public.generation_jobs;
  v_captured integer;
  v_balance integer;
BEGIN
  IF NOT (p_job_id IS NOT NULL
          AND (p_result_url IS NULL OR pg_catalog.char_length(p_result_url) BETWEEN 1 AND 2048)
          AND (p_actual_cost IS NULL OR p_actual_cost BETWEEN 0 AND 1000000000)) IS TRUE THEN
    PERFORM creditgate.require_id('p_job_id', p_job_id);
    PERFORM creditgate.require_text('p_result_url', p_result_url, creditgate.result_url_length_max(), true);
    IF p_actual_cost IS NOT NULL THEN
      PERFORM creditgate.require_range('p_actual_cost', p_actual_cost, 0, creditgate.cost_credits_max());
    END IF;
  END IF;

  SELECT j.user_id INTO v_user_id FROM public.generation_jobs j WHERE j.id = p_job_id;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'job_not_found', 'Job not found', pg_catalog.jsonb_build_object('job_id', p_job_id));
  END IF;
  PERFORM creditgate.lock_user(v_user_id, p_now, false);
  SELECT * INTO v_job FROM public.generation_jobs j WHERE j.id = p_job_id FOR UPDATE;
  IF v_job.status NOT IN ('pending', 'processing') THEN
    PERFORM creditgate.require_open(v_job);
  END IF;
  IF p_actual_cost > v_job.cost THEN
    PERFORM creditgate.require(false, 'p_actual_cost cannot exceed the held amount',
      pg_catalog.jsonb_build_object('parameter', 'p_actual_cost', 'value', p_actual_cost, 'held', v_job.cost));
  END IF;

  v_captured := coalesce(p_actual_cost, v_job.cost);
  v_balance := creditgate.settle_job(v_job, 'completed', v_captured, 'capture',
    'Capture: unused part of the hold returned', NULL, p_result_url, p_now);
  RETURN QUERY SELECT v_job.id, 'completed'::text, v_balance, v_job.cost - v_captured;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.complete_generation_job_at(uuid, text, integer, timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION creditgate.refund_credits_at(
  p_user_id uuid, p_job_id uuid, p_amount integer, p_reason text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_job public.generation_jobs;
  v_reason text := coalesce(p_reason, 'no reason given');
BEGIN
  IF NOT (p_user_id IS NOT NULL AND p_job_id IS NOT NULL
          AND (p_amount IS NULL OR p_amount BETWEEN 1 AND 1000000000)
          AND (p_reason IS NULL OR pg_catalog.char_length(p_reason) BETWEEN 1 AND 500)) IS TRUE THEN
    PERFORM creditgate.require_id('p_user_id', p_user_id);
    PERFORM creditgate.require_id('p_job_id', p_job_id);
    IF p_amount IS NOT NULL THEN
      PERFORM creditgate.require_range('p_amount', p_amount, 1, creditgate.cost_credits_max());
    END IF;
    PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), true);
  END IF;

  PERFORM creditgate.lock_user(p_user_id, p_now, false);
  SELECT * INTO v_job FROM public.generation_jobs j WHERE j.id = p_job_id AND j.user_id = p_user_id FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'job_not_found', 'Job not found', pg_catalog.jsonb_build_object('job_id', p_job_id));
  END IF;
  IF v_job.status NOT IN ('pending', 'processing') THEN
    PERFORM creditgate.require_open(v_job);
  END IF;
  IF p_amount IS DISTINCT FROM v_job.cost AND p_amount IS NOT NULL THEN
    PERFORM creditgate.require(false, 'p_amount must equal the held amount',
      pg_catalog.jsonb_build_object('parameter', 'p_amount', 'value', p_amount, 'held', v_job.cost));
  END IF;

  RETURN creditgate.settle_job(v_job, 'failed', 0, 'refund', 'Refund: ' || v_reason, 'Refunded: ' || v_reason, NULL, p_now);
END;
$$;
REVOKE ALL ON FUNCTION creditgate.refund_credits_at(uuid, uuid, integer, text, timestamptz) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- 4. One index less on generation_jobs
-- -----------------------------------------------------------------------------
DROP INDEX IF EXISTS public.generation_jobs_open_expiry;

-- -----------------------------------------------------------------------------
-- 5. Rate limits: a denial writes nothing; counters are not WAL-logged
-- -----------------------------------------------------------------------------
ALTER TABLE public.rate_limits SET UNLOGGED;

CREATE OR REPLACE FUNCTION creditgate.rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer, p_consume boolean, p_now timestamptz)
RETURNS TABLE (allowed boolean, used integer, remaining integer, reset_ms bigint, retry_after_ms bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_buckets constant integer := 20;
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
    PERFORM creditgate.require_text('p_key', p_key, creditgate.rate_limit_key_length_max(), false);
    PERFORM creditgate.require_range('p_limit', p_limit, 1, creditgate.rate_limit_max());
    PERFORM creditgate.require_range('p_window_seconds', p_window_seconds, 1, creditgate.window_seconds_max());
    PERFORM creditgate.require_range('p_cost', p_cost, 1, p_limit);
  END IF;

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

    EXIT WHEN v_locked OR NOT p_consume OR v_used + p_cost > p_limit;
    v_locked := true;
  END LOOP;

  IF v_used + p_cost <= p_limit AND p_consume THEN
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

CREATE OR REPLACE FUNCTION creditgate.check_rate_limit_at(
  p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, current_count integer, window_end timestamptz, remaining integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
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

-- -----------------------------------------------------------------------------
-- The combined call: the charge's fast paths (the rest as in the migration)
-- -----------------------------------------------------------------------------
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
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
  v_replay jsonb;
  v_rate record;
  v_charge record;
BEGIN
  -- The fast paths of creditgate.charge_credits_at (section 3).
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
