-- =============================================================================
-- creditgate 3/4: rate limits, and a rate limit applied together with a charge;
-- token buckets, blocked keys and the operator's tools (peek, reset, usage).
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

-- The limits (rate_limit_max() and the others) are in 20250601000200, with
-- every other limit.

/** Milliseconds to whole seconds, rounded up: a client told to wait never comes back early. */
CREATE OR REPLACE FUNCTION creditgate.seconds_ceil(p_milliseconds bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN ((p_milliseconds + 999) / 1000)::integer; END $$;

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
 * so nothing to wait for at commit. A request that fits writes the state it
 * computed from that read with one guarded statement: an UPDATE whose WHERE
 * requires the buckets still be the ones read (PostgreSQL re-checks it on
 * the newest row version when another transaction changed the row
 * meanwhile), or, for a key with no row, an INSERT ... ON CONFLICT DO
 * NOTHING. Equal buckets are an equal state, so that write is exactly what a
 * locked read-modify-write would write; only when the guard fails does it
 * lock the row and decide again. Common cases: two statements.
 * Locks: the (key, limit, window) row: the guarded write's; FOR UPDATE only
 * when the guard failed.
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
  v_buckets constant integer := creditgate.rate_limit_buckets();
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
  v_read_ids bigint[];
  v_read_costs integer[];
BEGIN
  -- Callers check a caller's key against rate_limit_key_length_max() (255);
  -- here the bound is that of a stored key (check_rate_limit's encoded pairs).
  IF NOT (pg_catalog.char_length(p_key) BETWEEN 1 AND creditgate.rate_limit_stored_key_length_max()
          AND p_limit BETWEEN 1 AND creditgate.rate_limit_max()
          AND p_window_seconds BETWEEN 1 AND creditgate.window_seconds_max()
          AND p_cost BETWEEN 1 AND p_limit) IS TRUE THEN
    PERFORM creditgate.require_text('p_key', p_key, creditgate.rate_limit_stored_key_length_max(), false);
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
  -- not fit later either: it is refused here, with no lock and no write. A
  -- request that fits tries the guarded write (below); if the row changed
  -- since the read, it locks the row and decides again.
  SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
  FROM public.rate_limits r
  WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds;
  -- What the guarded write requires unchanged (NULL: there was no row).
  v_read_ids := v_ids;
  v_read_costs := v_costs;

  -- Buckets overlapping [now - W, now]: bucket k covers [k, k+1) * bucket_ms.
  FOR v_position IN 1 .. coalesce(pg_catalog.array_length(v_ids, 1), 0) LOOP
    IF v_ids[v_position] >= v_current - v_buckets THEN
      v_kept_ids := v_kept_ids || v_ids[v_position];
      v_kept_costs := v_kept_costs || v_costs[v_position];
      v_used := v_used + v_costs[v_position];
    END IF;
  END LOOP;

  -- At most twice: the guarded write, then (the row changed since the read)
  -- the write under the row's lock.
  WHILE v_used + p_cost <= p_limit AND p_consume IS TRUE LOOP
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
    v_newest := v_kept_ids[pg_catalog.array_length(v_kept_ids, 1)];
    IF v_locked THEN
      UPDATE public.rate_limits r
      SET bucket_ids = v_kept_ids,
          bucket_costs = v_kept_costs,
          expires_at = pg_catalog.to_timestamp((v_newest + v_buckets + 1) * v_bucket_ms / 1000.0)
      WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds;
    ELSIF v_read_ids IS NULL THEN
      INSERT INTO public.rate_limits AS r (key, max_requests, window_seconds, bucket_ids, bucket_costs, expires_at)
      VALUES (p_key, p_limit, p_window_seconds, v_kept_ids, v_kept_costs,
              pg_catalog.to_timestamp((v_newest + v_buckets + 1) * v_bucket_ms / 1000.0))
      ON CONFLICT DO NOTHING;
    ELSE
      UPDATE public.rate_limits r
      SET bucket_ids = v_kept_ids,
          bucket_costs = v_kept_costs,
          expires_at = pg_catalog.to_timestamp((v_newest + v_buckets + 1) * v_bucket_ms / 1000.0)
      WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds
        AND r.bucket_ids = v_read_ids AND r.bucket_costs = v_read_costs;
    END IF;
    IF v_locked OR FOUND THEN
      v_used := v_used + p_cost;
      RETURN QUERY SELECT true, v_used, p_limit - v_used, (v_newest + v_buckets + 1) * v_bucket_ms - v_now_ms, 0::bigint;
      RETURN;
    END IF;
    -- The row changed (or appeared) since the read: lock it and decide again.
    v_locked := true;
    LOOP
      SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs
      FROM public.rate_limits r
      WHERE r.key = p_key AND r.max_requests = p_limit AND r.window_seconds = p_window_seconds
      FOR UPDATE;
      EXIT WHEN FOUND;
      INSERT INTO public.rate_limits AS r (key, max_requests, window_seconds, expires_at)
      VALUES (p_key, p_limit, p_window_seconds, p_now)
      ON CONFLICT DO NOTHING;
    END LOOP;
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
  END LOOP;

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

/**
 * Checks a key given by a caller of apply_rate_limit(s): 1 to 255 characters
 * and not in the reserved namespace 'creditgate:' (check_rate_limit's encoded
 * pairs and the Edge Function's own keys live there). p_name names the
 * parameter in the error; p_allow_reserved lets the Edge Function's path
 * (charge_credits_with_limit[s]) use 'creditgate:' keys, except
 * check_rate_limit's 'creditgate:check:'.
 * Errors: 22023 invalid_argument.
 */
CREATE OR REPLACE FUNCTION creditgate.require_rate_limit_key(p_name text, p_key text, p_allow_reserved boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_text(p_name, p_key, creditgate.rate_limit_key_length_max(), false);
  IF pg_catalog.starts_with(p_key, 'creditgate:')
     AND (p_allow_reserved IS NOT TRUE OR pg_catalog.starts_with(p_key, 'creditgate:check:')) THEN
    PERFORM creditgate.require(false,
      pg_catalog.format('%s: the key prefix ''%s'' is reserved for creditgate''s own limits', p_name,
        CASE WHEN p_allow_reserved IS TRUE THEN 'creditgate:check:' ELSE 'creditgate:' END),
      pg_catalog.jsonb_build_object('parameter', p_name, 'reserved_prefix',
        CASE WHEN p_allow_reserved IS TRUE THEN 'creditgate:check:' ELSE 'creditgate:' END));
  END IF;
END;
$$;

-- -----------------------------------------------------------------------------
-- Blocked keys: an operator's decision (block_rate_limit_key) that a limit
-- key may not pass, whatever its counters say, until a time or for good.
-- LOGGED, unlike the counters: a crash must not lift a block. In the private
-- creditgate schema: no client role can even name it.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS creditgate.rate_limit_blocks (
  key text PRIMARY KEY,
  -- 'infinity': blocked until unblocked.
  blocked_until timestamptz NOT NULL,
  reason text NOT NULL,
  blocked_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  CONSTRAINT rate_limit_blocks_key_length CHECK (char_length(key) BETWEEN 1 AND 255),
  CONSTRAINT rate_limit_blocks_reason_length CHECK (char_length(reason) BETWEEN 1 AND 500)
);
CREATE INDEX IF NOT EXISTS rate_limit_blocks_blocked_until ON creditgate.rate_limit_blocks (blocked_until);
ALTER TABLE creditgate.rate_limit_blocks ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE creditgate.rate_limit_blocks FROM PUBLIC, anon, authenticated, service_role;
COMMENT ON TABLE creditgate.rate_limit_blocks IS
  'Limit keys an operator blocked (block_rate_limit_key): every limit naming one refuses with PT403 blocked until blocked_until.';

-- Token buckets (apply_token_bucket): per (key, capacity, refill rate), the
-- GCRA's theoretical arrival time. Transient like rate_limits, so UNLOGGED.
CREATE UNLOGGED TABLE IF NOT EXISTS creditgate.token_buckets (
  key text NOT NULL,
  capacity integer NOT NULL,
  refill_per_second numeric NOT NULL,
  -- Microseconds since the epoch at which the bucket is full again.
  full_at_us numeric NOT NULL,
  -- full_at_us rounded up to a second: when the row is worth nothing.
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (key, capacity, refill_per_second),
  CONSTRAINT token_buckets_key_length CHECK (char_length(key) BETWEEN 1 AND 255),
  CONSTRAINT token_buckets_capacity_range CHECK (capacity BETWEEN 1 AND 1000000),
  CONSTRAINT token_buckets_refill_range CHECK (refill_per_second BETWEEN 0.00001 AND 1000000)
);
CREATE INDEX IF NOT EXISTS token_buckets_expires_at ON creditgate.token_buckets (expires_at);
ALTER TABLE creditgate.token_buckets ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE creditgate.token_buckets FROM PUBLIC, anon, authenticated, service_role;
COMMENT ON TABLE creditgate.token_buckets IS
  'Token-bucket state (apply_token_bucket), invisible to clients: per (key, capacity, refill rate) when the bucket is full again.';

/**
 * Raises PT403 `blocked` if one of p_keys is blocked at p_now (the first
 * blocked one in p_keys' order), DETAIL {"key", "until" (null: until
 * unblocked), "reason"}. One index lookup per key; nothing locked.
 */
CREATE OR REPLACE FUNCTION creditgate.require_not_blocked(p_keys text[], p_now timestamptz)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_key text;
  v_until timestamptz;
  v_reason text;
BEGIN
  SELECT b.key, b.blocked_until, b.reason INTO v_key, v_until, v_reason
  FROM creditgate.rate_limit_blocks b
  WHERE b.key = ANY (p_keys) AND b.blocked_until > p_now
  ORDER BY pg_catalog.array_position(p_keys, b.key)
  LIMIT 1;
  IF v_key IS NOT NULL THEN
    PERFORM creditgate.fail('PT403', 'blocked',
      pg_catalog.format('the limit key %s is blocked %s: %s', v_key,
        CASE WHEN pg_catalog.isfinite(v_until) THEN 'until ' || pg_catalog.to_char(v_until AT TIME ZONE 'UTC',
          'YYYY-MM-DD"T"HH24:MI:SS"Z"') ELSE 'until unblocked' END, v_reason),
      pg_catalog.jsonb_build_object('key', v_key,
        'until', CASE WHEN pg_catalog.isfinite(v_until) THEN pg_catalog.to_jsonb(v_until) END,
        'reason', v_reason));
  END IF;
END;
$$;

/** apply_rate_limit at time p_now: see creditgate.rate_limit_at. */
CREATE OR REPLACE FUNCTION creditgate.apply_rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_cost integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF NOT (pg_catalog.char_length(p_key) BETWEEN 1 AND creditgate.rate_limit_key_length_max()
          AND NOT pg_catalog.starts_with(p_key, 'creditgate:')) IS TRUE THEN
    PERFORM creditgate.require_rate_limit_key('p_key', p_key, false);
  END IF;
  PERFORM creditgate.require_not_blocked(ARRAY[p_key], p_now);
  RETURN QUERY
    SELECT r.allowed, p_limit, r.remaining, ((r.reset_ms + 999) / 1000)::integer, ((r.retry_after_ms + 999) / 1000)::integer
    FROM creditgate.rate_limit_at(p_key, p_limit, p_window_seconds, p_cost, true, p_now) r;
END;
$$;

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
SELECT creditgate.expose('public.apply_rate_limit(text, integer, integer, integer)', 'service_role');

/**
 * The stored key of check_rate_limit's (p_type, p_identifier): in the reserved
 * namespace, with the type length-prefixed, so that no two pairs share a key
 * (('b:c', 'a') and ('c', 'a:b') differ) and no apply_rate_limit key is one.
 */
CREATE OR REPLACE FUNCTION creditgate.check_rate_limit_key(p_type text, p_identifier text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN 'creditgate:check:' || pg_catalog.char_length(p_type) || ':' || p_type || ':' || p_identifier;
END;
$$;

/**
 * The seed's check_rate_limit at time p_now: one request for the pair
 * (p_type, p_identifier), stored under creditgate.check_rate_limit_key. current_count is the count in the window
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
  IF NOT (pg_catalog.char_length(p_identifier) BETWEEN 1 AND creditgate.rate_limit_identifier_length_max()
          AND pg_catalog.char_length(p_type) BETWEEN 1 AND creditgate.rate_limit_type_length_max()) IS TRUE THEN
    PERFORM creditgate.require_text('p_identifier', p_identifier, creditgate.rate_limit_identifier_length_max(), false);
    PERFORM creditgate.require_text('p_type', p_type, creditgate.rate_limit_type_length_max(), false);
  END IF;
  -- The key as creditgate.check_rate_limit_key builds it, written out: one
  -- function call less on the hottest path (a pgTAP test keeps them equal).
  RETURN QUERY
  SELECT r.allowed, r.used, p_now + pg_catalog.make_interval(secs => r.reset_ms / 1000.0), r.remaining
  FROM creditgate.rate_limit_at(
    'creditgate:check:' || pg_catalog.char_length(p_type) || ':' || p_type || ':' || p_identifier,
    p_max_requests, p_window_seconds, 1, true, p_now) r;
END;
$$;

SELECT creditgate.drop_other_versions('check_rate_limit',
  'p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer',
  'TABLE(allowed boolean, current_count integer, window_end timestamp with time zone, remaining integer)');

/**
 * The seed's check_rate_limit, same signature and result, correct semantics.
 * For service_role. The body of creditgate.check_rate_limit_at at the clock's
 * time, written out (one SECURITY DEFINER call less per decision).
 */
CREATE OR REPLACE FUNCTION public.check_rate_limit(
  p_identifier text, p_type text, p_max_requests integer, p_window_seconds integer)
RETURNS TABLE (allowed boolean, current_count integer, window_end timestamptz, remaining integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_now timestamptz := pg_catalog.clock_timestamp();
BEGIN
  IF NOT (pg_catalog.char_length(p_identifier) BETWEEN 1 AND creditgate.rate_limit_identifier_length_max()
          AND pg_catalog.char_length(p_type) BETWEEN 1 AND creditgate.rate_limit_type_length_max()) IS TRUE THEN
    PERFORM creditgate.require_text('p_identifier', p_identifier, creditgate.rate_limit_identifier_length_max(), false);
    PERFORM creditgate.require_text('p_type', p_type, creditgate.rate_limit_type_length_max(), false);
  END IF;
  RETURN QUERY
  SELECT r.allowed, r.used, v_now + pg_catalog.make_interval(secs => r.reset_ms / 1000.0), r.remaining
  FROM creditgate.rate_limit_at(
    'creditgate:check:' || pg_catalog.char_length(p_type) || ':' || p_type || ':' || p_identifier,
    p_max_requests, p_window_seconds, 1, true, v_now) r;
END;
$$;
SELECT creditgate.expose('public.check_rate_limit(text, text, integer, integer)', 'service_role');
COMMENT ON FUNCTION public.check_rate_limit(text, text, integer, integer) IS
  'At most p_max_requests allowed in any interval of p_window_seconds for (p_type, p_identifier); denied requests are not counted.';

/**
 * Deletes the state of keys with nothing left in their window at p_now, token
 * buckets that are full again, and blocks that have ended; returns how many
 * rows in all.
 */
CREATE OR REPLACE FUNCTION creditgate.cleanup_expired_rate_limits_at(p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_deleted integer;
  v_more integer;
BEGIN
  DELETE FROM public.rate_limits r WHERE r.expires_at <= p_now;
  GET DIAGNOSTICS v_deleted = ROW_COUNT;
  -- Token buckets full again, and blocks that have ended.
  DELETE FROM creditgate.token_buckets t WHERE t.expires_at <= p_now;
  GET DIAGNOSTICS v_more = ROW_COUNT;
  v_deleted := v_deleted + v_more;
  DELETE FROM creditgate.rate_limit_blocks b WHERE b.blocked_until <= p_now;
  GET DIAGNOSTICS v_more = ROW_COUNT;
  RETURN v_deleted + v_more;
END;
$$;

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
SELECT creditgate.expose('public.cleanup_expired_rate_limits()', 'service_role');

-- -----------------------------------------------------------------------------
-- Several rate limits at once, all or nothing
-- -----------------------------------------------------------------------------

/**
 * Checks p_limits, a JSON array of entries, p_min to
 * rate_limits_per_call_max() of them, and returns it normalised. An entry is
 * - a rate limit {"key", "limit", "window_seconds", "cost"} (cost optional,
 *   default 1), with "units": true a unit limit (cost is the estimate the
 *   hold reserves, corrected at completion: see creditgate.correct_units);
 * - a concurrency limit {"key", "concurrency"} (1 to 1000): at most that
 *   many open holds of the charged user (at most one such entry);
 * - either with "plan": "user" | "operation" | "concurrency" | "units": a
 *   default that the subscribed plan's limits of that section replace
 *   (creditgate.resolve_plan_limits); {"key", "plan"} alone (and "cost",
 *   "units" for units) is a placeholder: no default, but the plan's limits
 *   of that section apply under its key.
 * No other fields. Keys follow creditgate.require_rate_limit_key (p_allow_reserved).
 * The same (key, limit, window_seconds) twice is refused: it would count twice.
 * Normalised entries carry cost, and units/plan/concurrency only when given.
 * Only charge_credits_with_limits (p_allow_reserved) accepts the last three kinds.
 * Errors: 22023 invalid_argument, naming the entry (p_limits[i], from 0).
 */
CREATE OR REPLACE FUNCTION creditgate.parse_rate_limits(p_limits jsonb, p_min integer, p_allow_reserved boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_count integer;
  v_entry jsonb;
  v_name text;
  v_field text;
  v_values integer[];
  v_value jsonb;
  v_number numeric;
  v_index integer;
  v_position integer;
  v_out jsonb := '[]'::jsonb;
  v_seen text[] := '{}'::text[];
  v_identity text;
  v_extra jsonb;
  v_concurrency boolean := false;
  v_ok boolean;
  v_key text;
  v_limit numeric;
  v_window numeric;
  v_cost numeric;
BEGIN
  -- Each check is first one inline expression; the checks that name the
  -- offending field (creditgate.require and friends, a SECURITY DEFINER call
  -- each) run only when it fails, to raise the error.
  IF pg_catalog.jsonb_typeof(p_limits) IS DISTINCT FROM 'array' THEN
    PERFORM creditgate.require(false, 'p_limits must be a JSON array',
      pg_catalog.jsonb_build_object('parameter', 'p_limits', 'type', pg_catalog.jsonb_typeof(p_limits)));
  END IF;
  v_count := pg_catalog.jsonb_array_length(p_limits);
  IF NOT (v_count BETWEEN p_min AND creditgate.rate_limits_per_call_max()) IS TRUE THEN
    PERFORM creditgate.require(false,
      pg_catalog.format('p_limits must have %s to %s entries', p_min, creditgate.rate_limits_per_call_max()),
      pg_catalog.jsonb_build_object('parameter', 'p_limits', 'entries', v_count, 'min', p_min,
        'max', creditgate.rate_limits_per_call_max()));
  END IF;

  FOR v_index IN 0 .. v_count - 1 LOOP
    v_entry := p_limits -> v_index;
    v_extra := '{}'::jsonb;
    -- The fast check: an object of known fields, a key as require_rate_limit_key
    -- wants it, whole numbers in range.
    v_ok := CASE WHEN pg_catalog.jsonb_typeof(v_entry) = 'object'
                   AND (v_entry - 'key' - 'limit' - 'window_seconds' - 'cost') = '{}'::jsonb
                   AND pg_catalog.jsonb_typeof(v_entry -> 'key') = 'string'
                   AND pg_catalog.jsonb_typeof(v_entry -> 'limit') = 'number'
                   AND pg_catalog.jsonb_typeof(v_entry -> 'window_seconds') = 'number'
                   AND pg_catalog.jsonb_typeof(coalesce(v_entry -> 'cost', '1'::jsonb)) = 'number'
                 THEN true ELSE false END;
    IF v_ok THEN
      v_key := v_entry ->> 'key';
      v_limit := (v_entry ->> 'limit')::numeric;
      v_window := (v_entry ->> 'window_seconds')::numeric;
      v_cost := coalesce((v_entry ->> 'cost')::numeric, 1);
      v_ok := pg_catalog.char_length(v_key) BETWEEN 1 AND creditgate.rate_limit_key_length_max()
        AND (NOT pg_catalog.starts_with(v_key, 'creditgate:')
             OR (p_allow_reserved IS TRUE AND NOT pg_catalog.starts_with(v_key, 'creditgate:check:')))
        AND v_limit = pg_catalog.trunc(v_limit) AND v_limit BETWEEN 1 AND creditgate.rate_limit_max()
        AND v_window = pg_catalog.trunc(v_window) AND v_window BETWEEN 1 AND creditgate.window_seconds_max()
        AND v_cost = pg_catalog.trunc(v_cost) AND v_cost BETWEEN 1 AND v_limit;
    END IF;
    IF v_ok IS TRUE THEN
      v_values := ARRAY[v_limit::integer, v_window::integer, v_cost::integer];
    ELSE
      v_name := pg_catalog.format('p_limits[%s]', v_index);
      PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_entry) = 'object',
        v_name || ' must be a JSON object {"key", "limit", "window_seconds", "cost"}',
        pg_catalog.jsonb_build_object('parameter', v_name, 'type', pg_catalog.jsonb_typeof(v_entry)));
      SELECT pg_catalog.min(k) INTO v_field FROM pg_catalog.jsonb_object_keys(v_entry) AS f(k)
      WHERE k NOT IN ('key', 'limit', 'window_seconds', 'cost')
        AND (p_allow_reserved IS NOT TRUE OR k NOT IN ('units', 'concurrency', 'plan'));
      PERFORM creditgate.require(v_field IS NULL,
        pg_catalog.format('%s has an unknown field "%s" (allowed: key, limit, window_seconds, cost%s)', v_name, v_field,
          CASE WHEN p_allow_reserved IS TRUE THEN ', units, concurrency, plan' ELSE '' END),
        pg_catalog.jsonb_build_object('parameter', v_name || '.' || v_field));
      PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_entry -> 'key') = 'string',
        v_name || '.key must be a string', pg_catalog.jsonb_build_object('parameter', v_name || '.key'));
      PERFORM creditgate.require_rate_limit_key(v_name || '.key', v_entry ->> 'key', p_allow_reserved);

      IF p_allow_reserved IS TRUE AND (v_entry ? 'units' OR v_entry ? 'concurrency' OR v_entry ? 'plan') THEN
        v_extra := creditgate.parse_limit_extras(v_entry, v_name);
        IF v_extra ? 'concurrency' THEN
          PERFORM creditgate.require(NOT v_concurrency,
            v_name || ' is a second concurrency limit: one may appear', pg_catalog.jsonb_build_object('parameter', v_name));
          v_concurrency := true;
          v_out := v_out || pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_object('key', v_entry ->> 'key') || v_extra);
          CONTINUE;
        END IF;
        IF v_extra ? 'placeholder' THEN
          v_out := v_out || pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_object('key', v_entry ->> 'key') || v_extra);
          CONTINUE;
        END IF;
      END IF;

      v_values := '{}'::integer[];
      FOREACH v_field IN ARRAY ARRAY['limit', 'window_seconds', 'cost'] LOOP
        v_value := coalesce(v_entry -> v_field, CASE WHEN v_field = 'cost' THEN '1'::jsonb END);
        PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_value) = 'number',
          pg_catalog.format('%s.%s must be an integer', v_name, v_field),
          pg_catalog.jsonb_build_object('parameter', v_name || '.' || v_field, 'value', v_value));
        v_number := (v_value #>> '{}')::numeric;
        PERFORM creditgate.require(v_number = pg_catalog.trunc(v_number) AND v_number BETWEEN 1 AND 1000000000,
          pg_catalog.format('%s.%s must be an integer', v_name, v_field),
          pg_catalog.jsonb_build_object('parameter', v_name || '.' || v_field, 'value', v_value));
        v_values := v_values || v_number::integer;
      END LOOP;
      PERFORM creditgate.require_range(v_name || '.limit', v_values[1], 1, creditgate.rate_limit_max());
      PERFORM creditgate.require_range(v_name || '.window_seconds', v_values[2], 1, creditgate.window_seconds_max());
      PERFORM creditgate.require_range(v_name || '.cost', v_values[3], 1, v_values[1]);
    END IF;

    v_identity := pg_catalog.jsonb_build_array(v_entry ->> 'key', v_values[1], v_values[2])::text;
    v_position := pg_catalog.array_position(v_seen, v_identity);
    IF v_position IS NOT NULL THEN
      v_name := pg_catalog.format('p_limits[%s]', v_index);
      PERFORM creditgate.require(false,
        pg_catalog.format('%s repeats p_limits[%s]: the same key, limit and window_seconds may appear once',
          v_name, v_position - 1),
        pg_catalog.jsonb_build_object('parameter', v_name, 'same_as', pg_catalog.format('p_limits[%s]', v_position - 1)));
    END IF;
    v_seen := v_seen || v_identity;
    v_out := v_out || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
      'key', v_entry ->> 'key', 'limit', v_values[1], 'window_seconds', v_values[2], 'cost', v_values[3]) || v_extra);
  END LOOP;
  RETURN v_out;
END;
$$;

/**
 * The units/concurrency/plan fields of a p_limits entry p_entry (named
 * p_name in errors), normalised: {"units": true}, {"concurrency": n},
 * {"plan": section}, and {"placeholder": true} for {"key", "plan"} with no
 * limit (a units placeholder keeps its "cost", the estimate). A concurrency
 * entry has no limit, window_seconds or cost; "units" is true or absent and
 * needs a limit or a units placeholder; "plan" "concurrency" goes with a
 * concurrency entry (or placeholder), "units" with a unit limit.
 * Errors: 22023 invalid_argument.
 */
CREATE OR REPLACE FUNCTION creditgate.parse_limit_extras(p_entry jsonb, p_name text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_out jsonb := '{}'::jsonb;
  v_plan text;
  v_number numeric;
BEGIN
  IF p_entry ? 'plan' THEN
    PERFORM creditgate.require(p_entry ->> 'plan' IN ('user', 'operation', 'concurrency', 'units')
        AND pg_catalog.jsonb_typeof(p_entry -> 'plan') = 'string',
      p_name || '.plan must be "user", "operation", "concurrency" or "units"',
      pg_catalog.jsonb_build_object('parameter', p_name || '.plan', 'value', p_entry -> 'plan'));
    v_plan := p_entry ->> 'plan';
    v_out := v_out || pg_catalog.jsonb_build_object('plan', v_plan);
  END IF;
  IF p_entry ? 'units' THEN
    PERFORM creditgate.require(p_entry -> 'units' = 'true'::jsonb, p_name || '.units must be true (or absent)',
      pg_catalog.jsonb_build_object('parameter', p_name || '.units', 'value', p_entry -> 'units'));
    PERFORM creditgate.require(v_plan IS NULL OR v_plan = 'units', p_name || ': a unit limit''s plan section is "units"',
      pg_catalog.jsonb_build_object('parameter', p_name || '.plan', 'value', v_plan));
    v_out := v_out || '{"units": true}'::jsonb;
  ELSIF v_plan = 'units' THEN
    PERFORM creditgate.require(false, p_name || ': the plan section "units" needs "units": true',
      pg_catalog.jsonb_build_object('parameter', p_name || '.units'));
  END IF;
  IF p_entry ? 'concurrency' THEN
    PERFORM creditgate.require(NOT (p_entry ?| ARRAY['limit', 'window_seconds', 'cost', 'units']),
      p_name || ': a concurrency limit has only "key", "concurrency" and "plan"',
      pg_catalog.jsonb_build_object('parameter', p_name));
    PERFORM creditgate.require(v_plan IS NULL OR v_plan = 'concurrency',
      p_name || ': a concurrency limit''s plan section is "concurrency"',
      pg_catalog.jsonb_build_object('parameter', p_name || '.plan', 'value', v_plan));
    v_number := CASE WHEN pg_catalog.jsonb_typeof(p_entry -> 'concurrency') = 'number'
                     THEN (p_entry ->> 'concurrency')::numeric END;
    PERFORM creditgate.require(v_number = pg_catalog.trunc(v_number) AND v_number BETWEEN 1 AND 1000,
      p_name || '.concurrency must be an integer from 1 to 1000',
      pg_catalog.jsonb_build_object('parameter', p_name || '.concurrency', 'value', p_entry -> 'concurrency',
        'min', 1, 'max', 1000));
    RETURN v_out || pg_catalog.jsonb_build_object('concurrency', v_number::integer);
  END IF;
  PERFORM creditgate.require(v_plan IS DISTINCT FROM 'concurrency' OR NOT (p_entry ? 'limit'),
    p_name || ': the plan section "concurrency" goes with a concurrency limit or a placeholder',
    pg_catalog.jsonb_build_object('parameter', p_name || '.plan'));
  IF v_plan IS NOT NULL AND NOT (p_entry ? 'limit') THEN
    PERFORM creditgate.require(NOT (p_entry ? 'window_seconds') AND (v_plan = 'units' OR NOT (p_entry ? 'cost')),
      p_name || ': a placeholder has only "key" and "plan" (and "units", "cost" for units)',
      pg_catalog.jsonb_build_object('parameter', p_name));
    IF v_plan = 'units' THEN
      v_number := CASE WHEN pg_catalog.jsonb_typeof(p_entry -> 'cost') = 'number'
                       THEN (p_entry ->> 'cost')::numeric END;
      PERFORM creditgate.require(v_number = pg_catalog.trunc(v_number) AND v_number BETWEEN 1 AND creditgate.rate_limit_max(),
        p_name || '.cost (the units estimate) must be an integer from 1 to ' || creditgate.rate_limit_max(),
        pg_catalog.jsonb_build_object('parameter', p_name || '.cost', 'value', p_entry -> 'cost'));
      v_out := v_out || pg_catalog.jsonb_build_object('cost', v_number::integer);
    END IF;
    RETURN v_out || '{"placeholder": true}'::jsonb;
  END IF;
  RETURN v_out;
END;
$$;

/**
 * One result entry {"key", "allowed", "limit", "remaining", "reset_seconds",
 * "retry_after_seconds"} from creditgate.rate_limit_at's answer p_rate for
 * the normalised entry p_entry. p_mode: 'consumed' (the answer of a
 * consuming call), 'would' (a plain read of a request that fits: what it
 * would have had, had the call been allowed), 'peek' (the state, nothing
 * requested: an idempotent replay).
 */
CREATE OR REPLACE FUNCTION creditgate.rate_limit_entry(p_entry jsonb, p_allowed boolean, p_remaining integer,
  p_reset_ms bigint, p_retry_after_ms bigint, p_mode text, p_now timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_limit integer := (p_entry ->> 'limit')::integer;
  v_cost integer := (p_entry ->> 'cost')::integer;
  v_bucket_ms bigint := (p_entry ->> 'window_seconds')::bigint * 1000 / creditgate.rate_limit_buckets();
  v_now_ms bigint := pg_catalog.floor(EXTRACT(EPOCH FROM p_now) * 1000)::bigint;
  v_remaining integer := p_remaining;
  v_reset_ms bigint := p_reset_ms;
BEGIN
  IF p_mode = 'would' AND p_allowed THEN
    -- As rate_limit_at would have answered had it consumed: the cost taken,
    -- the window running until the current bucket leaves it.
    v_remaining := p_remaining - v_cost;
    v_reset_ms := GREATEST(p_reset_ms, (v_now_ms / v_bucket_ms + creditgate.rate_limit_buckets() + 1) * v_bucket_ms - v_now_ms);
  END IF;
  RETURN pg_catalog.jsonb_build_object(
    'key', p_entry ->> 'key',
    'allowed', p_allowed OR p_mode = 'peek',
    'limit', v_limit,
    'remaining', v_remaining,
    -- creditgate.seconds_ceil, written out (a call each, on every limit of every request).
    'reset_seconds', ((v_reset_ms + 999) / 1000)::integer,
    'retry_after_seconds', CASE WHEN p_allowed OR p_mode = 'peek' THEN 0
                                ELSE ((p_retry_after_ms + 999) / 1000)::integer END);
END;
$$;

/**
 * Applies the normalised limits p_limits (creditgate.parse_rate_limits) at
 * p_now, all or nothing: {"allowed": every limit allows, "limits": one entry
 * per limit in input order (creditgate.rate_limit_entry)}. When one refuses,
 * none is spent: refusing entries carry their retry_after_seconds, allowed
 * ones what they would have had. p_consume false only reads (a replay).
 * A blocked key (creditgate.require_not_blocked) raises PT403 `blocked`
 * first, replay or not: charge_credits_with_limits then rolls back too.
 * How: a plain read of every limit first, as rate_limit_at does, so that a
 * refusal takes no lock and writes nothing. When all fit, the limits are
 * consumed in a canonical order (key in "C" collation, limit, window), so
 * two calls naming the same keys in different orders cannot deadlock; if
 * one refuses under its lock (another call took the room meanwhile), a
 * subtransaction takes back what the others consumed.
 * Locks: the rate_limits rows, in canonical order, only when all fit.
 */
CREATE OR REPLACE FUNCTION creditgate.apply_rate_limits_at(p_limits jsonb, p_consume boolean, p_now timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_count integer := pg_catalog.jsonb_array_length(p_limits);
  v_entries jsonb[];
  v_entry jsonb;
  v_rate record;
  v_all boolean := true;
  v_index integer;
  v_allowed boolean[];
  v_remaining integer[];
  v_reset_ms bigint[];
  v_retry_ms bigint[];
BEGIN
  IF v_count = 0 THEN
    RETURN '{"allowed": true, "limits": []}'::jsonb;
  END IF;
  -- A blocked key refuses the whole call, before any limit is read
  -- (require_not_blocked, which names the first, runs only if one is).
  IF EXISTS (SELECT FROM creditgate.rate_limit_blocks b
             WHERE b.key IN (SELECT e ->> 'key' FROM pg_catalog.jsonb_array_elements(p_limits) AS e)
               AND b.blocked_until > p_now) THEN
    PERFORM creditgate.require_not_blocked(
      ARRAY(SELECT e.value ->> 'key' FROM pg_catalog.jsonb_array_elements(p_limits) WITH ORDINALITY AS e(value, position)
            ORDER BY e.position), p_now);
  END IF;
  v_entries := pg_catalog.array_fill(NULL::jsonb, ARRAY[v_count]);

  -- The plain reads; the entries they answer are built only when they are
  -- the answer (a refusal or a replay), not on the way to consuming.
  FOR v_index IN 1 .. v_count LOOP
    v_entry := p_limits -> (v_index - 1);
    SELECT r.* INTO v_rate FROM creditgate.rate_limit_at(v_entry ->> 'key', (v_entry ->> 'limit')::integer,
      (v_entry ->> 'window_seconds')::integer, (v_entry ->> 'cost')::integer, false, p_now) r;
    v_allowed[v_index] := v_rate.allowed;
    v_remaining[v_index] := v_rate.remaining;
    v_reset_ms[v_index] := v_rate.reset_ms;
    v_retry_ms[v_index] := v_rate.retry_after_ms;
    v_all := v_all AND v_rate.allowed;
  END LOOP;
  IF NOT v_all OR NOT p_consume THEN
    FOR v_index IN 1 .. v_count LOOP
      v_entries[v_index] := creditgate.rate_limit_entry(p_limits -> (v_index - 1), v_allowed[v_index],
        v_remaining[v_index], v_reset_ms[v_index], v_retry_ms[v_index],
        CASE WHEN p_consume THEN 'would' ELSE 'peek' END, p_now);
    END LOOP;
    RETURN pg_catalog.jsonb_build_object('allowed', v_all OR NOT p_consume, 'limits', pg_catalog.to_jsonb(v_entries));
  END IF;

  BEGIN
    FOR v_index IN
      SELECT e.position FROM pg_catalog.jsonb_array_elements(p_limits) WITH ORDINALITY AS e(value, position)
      ORDER BY (e.value ->> 'key') COLLATE "C", (e.value ->> 'limit')::integer, (e.value ->> 'window_seconds')::integer
    LOOP
      v_entry := p_limits -> (v_index::integer - 1);
      SELECT r.* INTO v_rate FROM creditgate.rate_limit_at(v_entry ->> 'key', (v_entry ->> 'limit')::integer,
        (v_entry ->> 'window_seconds')::integer, (v_entry ->> 'cost')::integer, true, p_now) r;
      v_entries[v_index] := creditgate.rate_limit_entry(v_entry, v_rate.allowed, v_rate.remaining, v_rate.reset_ms,
        v_rate.retry_after_ms, 'consumed', p_now);
      v_all := v_all AND v_rate.allowed;
    END LOOP;
    IF NOT v_all THEN
      -- Takes back what the others consumed; the entries (plain variables) stay.
      RAISE EXCEPTION USING ERRCODE = 'CGRL1', MESSAGE = 'creditgate: rate limits refused under lock';
    END IF;
  EXCEPTION WHEN SQLSTATE 'CGRL1' THEN
    NULL;
  END;
  RETURN pg_catalog.jsonb_build_object('allowed', v_all, 'limits', pg_catalog.to_jsonb(v_entries));
END;
$$;

/**
 * charge_checked's path for limits beyond plain rate limits (p_limits
 * normalised by parse_rate_limits, with an entry carrying "units",
 * "concurrency" or "plan"); p_hash and p_replay as charge_checked computed
 * them (the key claimed). In order:
 * 1. "plan" entries are resolved against the user's plan
 *    (creditgate.resolve_plan_limits).
 * 2. A replay spends nothing and returns the original job.
 * 3. The rate and unit limits are applied (apply_rate_limits_at); a refusal
 *    returns allowed = false, nothing written.
 * 4. With a concurrency limit of N: the user is locked and caught up
 *    (creditgate.lock_user: expired holds are released first), and when N
 *    holds are open (pending, deadline after p_now) the request is refused,
 *    allowed = false, the rate limits of step 3 taken back (a
 *    subtransaction, only on this path).
 * 5. The hold opens (open_hold); unit limits are recorded on the job
 *    (limit_units, with the bucket each estimate went into) for
 *    creditgate.correct_units at settlement.
 * Result entries are in the resolved order, each with window_seconds (rate
 * limits), "plan", "from_plan", "units" when so; a concurrency entry is
 * {"key", "allowed", "limit": N, "remaining", "reset_seconds": 0,
 * "retry_after_seconds" (1 when refused: a slot frees when a hold settles),
 * "concurrency": true, "open": holds open before this request}.
 * Locks: as charge_checked; the users row before the hold when concurrency-limited.
 */
CREATE OR REPLACE FUNCTION creditgate.charge_with_limit_kinds(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text, p_hash text, p_replay jsonb,
  p_metadata jsonb, p_hold_seconds integer, p_limits jsonb, p_now timestamptz)
RETURNS TABLE (allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz,
               limits jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_limits jsonb := p_limits;
  v_rate_limits jsonb;
  v_concurrency jsonb;
  v_rates jsonb;
  v_open integer;
  v_refused boolean := false;
  v_detail text;
  v_hold record;
  v_entries jsonb := '[]'::jsonb;
  v_entry jsonb;
  v_rate_index integer := 0;
  v_allowed boolean;
BEGIN
  IF v_limits @? '$[*] ? (exists(@.plan))' THEN
    v_limits := creditgate.resolve_plan_limits(p_user_id, p_operation_type, v_limits);
  END IF;
  SELECT coalesce(pg_catalog.jsonb_agg(e.value ORDER BY e.position) FILTER (WHERE e.value ? 'limit'), '[]'::jsonb),
         (pg_catalog.array_agg(e.value) FILTER (WHERE e.value ? 'concurrency'))[1]
  INTO v_rate_limits, v_concurrency
  FROM pg_catalog.jsonb_array_elements(v_limits) WITH ORDINALITY AS e(value, position);
  IF v_concurrency IS NOT NULL THEN
    PERFORM creditgate.require_not_blocked(ARRAY[v_concurrency ->> 'key'], p_now);
  END IF;

  IF p_replay IS NOT NULL OR v_concurrency IS NULL THEN
    v_rates := creditgate.apply_rate_limits_at(v_rate_limits, p_replay IS NULL, p_now);
  ELSE
    BEGIN
      v_rates := creditgate.apply_rate_limits_at(v_rate_limits, true, p_now);
      IF (v_rates ->> 'allowed')::boolean THEN
        PERFORM creditgate.lock_user(p_user_id, p_now, true);
        SELECT pg_catalog.count(*)::integer INTO v_open FROM public.generation_jobs j
        WHERE j.user_id = p_user_id AND j.status = 'pending' AND j.expires_at > p_now;
        IF v_open >= (v_concurrency ->> 'concurrency')::integer THEN
          RAISE EXCEPTION USING ERRCODE = 'CGCC1', MESSAGE = 'creditgate: concurrency limit reached',
            DETAIL = v_open::text;
        END IF;
      END IF;
    EXCEPTION WHEN SQLSTATE 'CGCC1' THEN
      GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
      v_open := v_detail::integer;
      v_refused := true;
    END;
  END IF;
  IF v_concurrency IS NOT NULL AND v_open IS NULL THEN
    -- A replay, or refused by a rate limit: the state, on a plain read.
    SELECT pg_catalog.count(*)::integer INTO v_open FROM public.generation_jobs j
    WHERE j.user_id = p_user_id AND j.status = 'pending' AND j.expires_at > p_now;
  END IF;
  v_allowed := p_replay IS NOT NULL OR ((v_rates ->> 'allowed')::boolean AND NOT v_refused);

  FOR v_entry IN SELECT e.value FROM pg_catalog.jsonb_array_elements(v_limits) WITH ORDINALITY AS e(value, position)
                 ORDER BY e.position LOOP
    IF v_entry ? 'concurrency' THEN
      v_entries := v_entries || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'key', v_entry ->> 'key',
        'allowed', p_replay IS NOT NULL OR NOT v_refused AND v_open < (v_entry ->> 'concurrency')::integer,
        'limit', (v_entry ->> 'concurrency')::integer,
        'remaining', GREATEST((v_entry ->> 'concurrency')::integer - v_open
                              - CASE WHEN v_allowed AND p_replay IS NULL THEN 1 ELSE 0 END, 0),
        'reset_seconds', 0,
        'retry_after_seconds', CASE WHEN v_refused THEN 1 ELSE 0 END,
        'concurrency', true, 'open', v_open)
        || pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('plan', v_entry -> 'plan',
             'from_plan', v_entry -> 'from_plan')));
    ELSE
      v_entries := v_entries || pg_catalog.jsonb_build_array((v_rates -> 'limits' -> v_rate_index)
        || pg_catalog.jsonb_build_object('window_seconds', (v_entry ->> 'window_seconds')::integer)
        || pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('plan', v_entry -> 'plan',
             'from_plan', v_entry -> 'from_plan', 'units', v_entry -> 'units')));
      v_rate_index := v_rate_index + 1;
    END IF;
  END LOOP;

  IF p_replay IS NOT NULL THEN
    RETURN QUERY SELECT true, (p_replay ->> 'job_id')::uuid, (p_replay ->> 'new_balance')::integer, true,
      (p_replay ->> 'expires_at')::timestamptz, v_entries;
    RETURN;
  END IF;
  IF NOT v_allowed THEN
    RETURN QUERY SELECT false, NULL::uuid, NULL::integer, false, NULL::timestamptz, v_entries;
    RETURN;
  END IF;

  SELECT h.* INTO v_hold FROM creditgate.open_hold(p_user_id, p_operation_type, p_cost, p_idempotency_key, p_hash,
    p_metadata, p_hold_seconds, p_now) h;
  IF v_rate_limits @? '$[*] ? (exists(@.units))' THEN
    UPDATE public.generation_jobs j
    SET limit_units = (
      SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('key', e.value ->> 'key',
               'limit', (e.value ->> 'limit')::integer, 'window_seconds', (e.value ->> 'window_seconds')::integer,
               'cost', (e.value ->> 'cost')::integer,
               -- The bucket rate_limit_at added the estimate to.
               'bucket', pg_catalog.floor(EXTRACT(EPOCH FROM p_now) * 1000)::bigint
                         / ((e.value ->> 'window_seconds')::bigint * 1000 / creditgate.rate_limit_buckets()))
             ORDER BY e.position)
      FROM pg_catalog.jsonb_array_elements(v_rate_limits) WITH ORDINALITY AS e(value, position)
      WHERE e.value ? 'units')
    WHERE j.id = v_hold.job_id;
  END IF;
  RETURN QUERY SELECT true, v_hold.job_id, v_hold.new_balance, false, v_hold.expires_at, v_entries;
END;
$$;

/**
 * Locks the rate_limits rows of a job's unit limits (p_units, a job's
 * limit_units) in the canonical order (key in "C" collation, limit,
 * window), as a charge does, before its settlement locks the user: so a
 * settlement and a charge never wait for each other in a cycle.
 */
CREATE OR REPLACE FUNCTION creditgate.lock_unit_rows(p_units jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM FROM public.rate_limits r
  JOIN pg_catalog.jsonb_array_elements(p_units) AS e(value)
    ON r.key = e.value ->> 'key' AND r.max_requests = (e.value ->> 'limit')::integer
   AND r.window_seconds = (e.value ->> 'window_seconds')::integer
  ORDER BY r.key COLLATE "C", r.max_requests, r.window_seconds
  FOR UPDATE OF r;
END;
$$;

/**
 * Corrects a settling job's unit limits (p_job.limit_units) to p_actual
 * units: each estimate's bucket (the one its charge counted it in) gets
 * p_actual - estimate added, never going below zero, and at most one full
 * window (the entry's limit) above what it was. A bucket already gone (its
 * window passed and was pruned, or the key reset) is left alone: those
 * units no longer count anyway. Called once per job, by its settlement
 * (complete: the actual units; refund: 0, the whole estimate back), under
 * the job's lock, so no correction counts twice. Returns the units given
 * back (negative: taken).
 * Locks: the rows (creditgate.lock_unit_rows took them first).
 */
CREATE OR REPLACE FUNCTION creditgate.correct_units(p_job public.generation_jobs, p_actual integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_entry jsonb;
  v_ids bigint[];
  v_costs integer[];
  v_position integer;
  v_old integer;
  v_new integer;
  v_back integer := 0;
BEGIN
  FOR v_entry IN SELECT e.value FROM pg_catalog.jsonb_array_elements(p_job.limit_units) AS e(value) LOOP
    CONTINUE WHEN p_actual = (v_entry ->> 'cost')::integer;
    SELECT r.bucket_ids, r.bucket_costs INTO v_ids, v_costs FROM public.rate_limits r
    WHERE r.key = v_entry ->> 'key' AND r.max_requests = (v_entry ->> 'limit')::integer
      AND r.window_seconds = (v_entry ->> 'window_seconds')::integer
    FOR UPDATE;
    CONTINUE WHEN NOT FOUND;
    v_position := pg_catalog.array_position(v_ids, (v_entry ->> 'bucket')::bigint);
    CONTINUE WHEN v_position IS NULL;
    v_old := v_costs[v_position];
    v_new := GREATEST(LEAST(v_old + p_actual - (v_entry ->> 'cost')::integer, v_old + (v_entry ->> 'limit')::integer), 0);
    v_back := v_back + (v_old - v_new);
    IF v_new = 0 THEN
      v_ids := v_ids[1 : v_position - 1] || v_ids[v_position + 1 :];
      v_costs := v_costs[1 : v_position - 1] || v_costs[v_position + 1 :];
    ELSE
      v_costs[v_position] := v_new;
    END IF;
    UPDATE public.rate_limits r SET bucket_ids = v_ids, bucket_costs = v_costs
    WHERE r.key = v_entry ->> 'key' AND r.max_requests = (v_entry ->> 'limit')::integer
      AND r.window_seconds = (v_entry ->> 'window_seconds')::integer;
  END LOOP;
  RETURN v_back;
END;
$$;

SELECT creditgate.drop_other_versions('apply_rate_limits', 'p_limits jsonb',
  'TABLE(key text, allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)');

/**
 * Several limits for one request, all or nothing (a per-IP and a per-user
 * limit, say): p_limits is a JSON array of 1 to 16 {"key", "limit",
 * "window_seconds", "cost"} (cost optional, default 1). One row per limit,
 * in input order. When any refuses, none is spent. Keys must not start with
 * 'creditgate:' (reserved). For service_role.
 */
CREATE OR REPLACE FUNCTION public.apply_rate_limits(p_limits jsonb)
RETURNS TABLE (key text, allowed boolean, "limit" integer, remaining integer, reset_seconds integer,
               retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT e.value ->> 'key', (e.value ->> 'allowed')::boolean, (e.value ->> 'limit')::integer,
           (e.value ->> 'remaining')::integer, (e.value ->> 'reset_seconds')::integer,
           (e.value ->> 'retry_after_seconds')::integer
    FROM pg_catalog.jsonb_array_elements(
           creditgate.apply_rate_limits_at(creditgate.parse_rate_limits(p_limits, 1, false), true,
             pg_catalog.clock_timestamp()) -> 'limits') WITH ORDINALITY AS e(value, position)
    ORDER BY e.position;
END;
$$;
SELECT creditgate.expose('public.apply_rate_limits(jsonb)', 'service_role');

-- -----------------------------------------------------------------------------
-- Rate limits and a charge, all or nothing
-- -----------------------------------------------------------------------------

/**
 * Applies the limits p_limits (a JSON array as for apply_rate_limits, 0 to
 * 16 entries; 'creditgate:' keys allowed, except 'creditgate:check:'), then
 * the charge: creditgate.charge_checked, once the charge's arguments
 * (check_charge_arguments) and the limits (parse_rate_limits) are checked.
 * Refused by a limit: allowed = false, the job fields NULL, nothing spent or
 * charged. A charge error (insufficient credits, ...) rolls the whole call
 * back, the limits included. An idempotent replay returns the original job
 * and spends no limit (`limits` then shows each limit's state, allowed).
 * Locks: idempotency claim, the rate_limits rows (canonical order; not for a
 * refusal), the users row, the user's jobs.
 * Errors: 22023 and those of charge_credits_at.
 */
CREATE OR REPLACE FUNCTION creditgate.charge_credits_with_limits_at(
  p_user_id uuid, p_operation_type text, p_cost integer, p_limits jsonb, p_idempotency_key text,
  p_metadata jsonb, p_hold_seconds integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz,
               limits jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := creditgate.check_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key,
    p_metadata, p_hold_seconds);
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.charge_checked(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_metadata,
      p_hold_seconds, creditgate.parse_rate_limits(p_limits, 0, true), p_now);
END;
$$;

SELECT creditgate.drop_other_versions('charge_credits_with_limits',
  $a$p_user_id uuid, p_operation_type text, p_cost integer, p_limits jsonb, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900$a$,
  'TABLE(allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamp with time zone, limits jsonb)');

/** Rate limits and a charge in one transaction, all or nothing: see creditgate.charge_credits_with_limits_at. For service_role. */
CREATE OR REPLACE FUNCTION public.charge_credits_with_limits(
  p_user_id uuid, p_operation_type text, p_cost integer, p_limits jsonb, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900)
RETURNS TABLE (allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz,
               limits jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.charge_credits_with_limits_at(p_user_id, p_operation_type, p_cost, p_limits,
      p_idempotency_key, p_metadata, p_hold_seconds, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.charge_credits_with_limits(uuid, text, integer, jsonb, text, jsonb, integer)', 'service_role');

/**
 * One rate limit and a charge, all or nothing: creditgate.charge_checked with
 * the one limit (p_limit_cost against p_limit per p_window_seconds for
 * p_limit_key), its entry's fields as columns. The charge's arguments are
 * checked first (an invalid charge is refused as such), then the limit's,
 * named by this function's parameters.
 * Errors: those of charge_credits_with_limits_at.
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
  v_metadata jsonb := creditgate.check_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key,
    p_metadata, p_hold_seconds);
BEGIN
  IF NOT (pg_catalog.char_length(p_limit_key) BETWEEN 1 AND creditgate.rate_limit_key_length_max()
          AND p_limit BETWEEN 1 AND creditgate.rate_limit_max()
          AND p_window_seconds BETWEEN 1 AND creditgate.window_seconds_max()
          AND p_limit_cost BETWEEN 1 AND p_limit
          AND NOT pg_catalog.starts_with(p_limit_key, 'creditgate:check:')) IS TRUE THEN
    PERFORM creditgate.require_rate_limit_key('p_limit_key', p_limit_key, true);
    PERFORM creditgate.require_range('p_limit', p_limit, 1, creditgate.rate_limit_max());
    PERFORM creditgate.require_range('p_window_seconds', p_window_seconds, 1, creditgate.window_seconds_max());
    PERFORM creditgate.require_range('p_limit_cost', p_limit_cost, 1, p_limit);
  END IF;

  RETURN QUERY
    SELECT c.allowed, c.job_id, c.new_balance, c.replayed, c.expires_at,
           (c.limits -> 0 ->> 'limit')::integer, (c.limits -> 0 ->> 'remaining')::integer,
           (c.limits -> 0 ->> 'reset_seconds')::integer, (c.limits -> 0 ->> 'retry_after_seconds')::integer
    FROM creditgate.charge_checked(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_metadata,
      p_hold_seconds,
      pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('key', p_limit_key, 'limit', p_limit,
        'window_seconds', p_window_seconds, 'cost', p_limit_cost)),
      p_now) c;
END;
$$;

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
SELECT creditgate.expose('public.charge_credits_with_limit(uuid, text, integer, text, integer, integer, text, jsonb, integer, integer)', 'service_role');

-- -----------------------------------------------------------------------------
-- A token bucket, and the operator's tools: peek, reset, usage, block
-- -----------------------------------------------------------------------------

/**
 * A token bucket of p_capacity tokens refilled at p_refill_per_second, as
 * the GCRA (generic cell rate algorithm) keeps it: one number per bucket,
 * the time it is full again (full_at). A request of weight p_cost at t
 * takes p_cost tokens: with T = 1/rate, it fits if max(full_at, t) + p_cost*T
 * - t <= p_capacity*T, and then full_at becomes that. So at most p_capacity
 * at once (a burst), then p_refill_per_second on average; in any interval of
 * length d at most p_capacity + d * rate. Exact arithmetic (numeric
 * microseconds). A refusal is decided on a plain read and writes nothing;
 * a request that fits locks the row and decides again, as rate_limit_at does
 * (for a fixed p_now, full_at only grows, so a refusal under the snapshot is
 * a refusal under the lock).
 * remaining: whole tokens left after this request (when refused: now);
 * reset_ms: until the bucket is full; retry_after_ms: until this request fits.
 * Errors: 22023; PT403 blocked.
 */
CREATE OR REPLACE FUNCTION creditgate.token_bucket_at(
  p_key text, p_capacity integer, p_refill_per_second numeric, p_cost integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, remaining integer, reset_ms bigint, retry_after_ms bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_interval_us numeric;
  v_burst_us numeric;
  v_now_us numeric := pg_catalog.floor(EXTRACT(EPOCH FROM p_now) * 1000000);
  v_full_at numeric;
  v_start numeric;
  v_next numeric;
  v_locked boolean := false;
BEGIN
  IF NOT (pg_catalog.char_length(p_key) BETWEEN 1 AND creditgate.rate_limit_key_length_max()
          AND NOT pg_catalog.starts_with(p_key, 'creditgate:')
          AND p_capacity BETWEEN 1 AND creditgate.rate_limit_max()
          AND p_refill_per_second BETWEEN 0.00001 AND creditgate.rate_limit_max()
          AND p_cost BETWEEN 1 AND p_capacity) IS TRUE THEN
    PERFORM creditgate.require_rate_limit_key('p_key', p_key, false);
    PERFORM creditgate.require_range('p_capacity', p_capacity, 1, creditgate.rate_limit_max());
    -- At least 0.00001 a second: about one a day (a day is window_seconds_max()).
    PERFORM creditgate.require((p_refill_per_second BETWEEN 0.00001 AND creditgate.rate_limit_max()) IS TRUE,
      pg_catalog.format('p_refill_per_second must be from 0.00001 to %s', creditgate.rate_limit_max()),
      pg_catalog.jsonb_build_object('parameter', 'p_refill_per_second', 'value', p_refill_per_second,
        'min', 0.00001, 'max', creditgate.rate_limit_max()));
    PERFORM creditgate.require_range('p_cost', p_cost, 1, p_capacity);
  END IF;
  PERFORM creditgate.require_not_blocked(ARRAY[p_key], p_now);

  v_interval_us := 1000000 / p_refill_per_second;
  v_burst_us := v_interval_us * p_capacity;
  LOOP
    IF v_locked THEN
      SELECT t.full_at_us INTO v_full_at FROM creditgate.token_buckets t
      WHERE t.key = p_key AND t.capacity = p_capacity AND t.refill_per_second = p_refill_per_second
      FOR UPDATE;
      IF NOT FOUND THEN
        INSERT INTO creditgate.token_buckets AS t (key, capacity, refill_per_second, full_at_us, expires_at)
        VALUES (p_key, p_capacity, p_refill_per_second, v_now_us, p_now)
        ON CONFLICT DO NOTHING;
        SELECT t.full_at_us INTO v_full_at FROM creditgate.token_buckets t
        WHERE t.key = p_key AND t.capacity = p_capacity AND t.refill_per_second = p_refill_per_second
        FOR UPDATE;
      END IF;
    ELSE
      SELECT t.full_at_us INTO v_full_at FROM creditgate.token_buckets t
      WHERE t.key = p_key AND t.capacity = p_capacity AND t.refill_per_second = p_refill_per_second;
    END IF;
    v_start := GREATEST(coalesce(v_full_at, v_now_us), v_now_us);
    v_next := v_start + p_cost * v_interval_us;
    EXIT WHEN v_locked OR v_next - v_now_us > v_burst_us;
    v_locked := true;
  END LOOP;

  IF v_next - v_now_us <= v_burst_us THEN
    UPDATE creditgate.token_buckets t
    SET full_at_us = v_next, expires_at = pg_catalog.to_timestamp(pg_catalog.ceil(v_next / 1000000))
    WHERE t.key = p_key AND t.capacity = p_capacity AND t.refill_per_second = p_refill_per_second;
    RETURN QUERY SELECT true, pg_catalog.floor((v_burst_us - (v_next - v_now_us)) / v_interval_us)::integer,
      pg_catalog.ceil((v_next - v_now_us) / 1000)::bigint, 0::bigint;
    RETURN;
  END IF;
  RETURN QUERY SELECT false, pg_catalog.floor((v_burst_us - (v_start - v_now_us)) / v_interval_us)::integer,
    pg_catalog.ceil((v_start - v_now_us) / 1000)::bigint,
    pg_catalog.ceil((v_next - v_now_us - v_burst_us) / 1000)::bigint;
END;
$$;

/** apply_token_bucket at time p_now: see creditgate.token_bucket_at. */
CREATE OR REPLACE FUNCTION creditgate.apply_token_bucket_at(
  p_key text, p_capacity integer, p_refill_per_second numeric, p_cost integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT t.allowed, p_capacity, t.remaining, creditgate.seconds_ceil(t.reset_ms),
           creditgate.seconds_ceil(t.retry_after_ms)
    FROM creditgate.token_bucket_at(p_key, p_capacity, p_refill_per_second, p_cost, p_now) t;
END;
$$;

SELECT creditgate.drop_other_versions('apply_token_bucket',
  'p_key text, p_capacity integer, p_refill_per_second numeric, p_cost integer DEFAULT 1',
  'TABLE(allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)');

/**
 * A token bucket beside the sliding window: p_capacity at once (burst), then
 * p_refill_per_second; the result shaped as apply_rate_limit's ("limit" is
 * the capacity). Keys as for apply_rate_limit (no 'creditgate:'). For
 * service_role.
 */
CREATE OR REPLACE FUNCTION public.apply_token_bucket(
  p_key text, p_capacity integer, p_refill_per_second numeric, p_cost integer DEFAULT 1)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.apply_token_bucket_at(p_key, p_capacity, p_refill_per_second, p_cost,
      pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.apply_token_bucket(text, integer, numeric, integer)', 'service_role');

/**
 * What apply_rate_limit(p_key, p_limit, p_window_seconds) would answer for
 * a request of weight 1 at p_now, spending and writing nothing: allowed,
 * remaining (now, nothing taken), reset_seconds, retry_after_seconds (0 when
 * allowed). Any stored key, 'creditgate:' ones included (the Edge
 * Function's, check_rate_limit's encoded pairs). A blocked key is PT403
 * blocked, as apply_rate_limit would answer.
 */
CREATE OR REPLACE FUNCTION creditgate.peek_rate_limit_at(
  p_key text, p_limit integer, p_window_seconds integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_text('p_key', p_key, creditgate.rate_limit_stored_key_length_max(), false);
  PERFORM creditgate.require_not_blocked(ARRAY[p_key], p_now);
  RETURN QUERY
    SELECT r.allowed, p_limit, r.remaining, creditgate.seconds_ceil(r.reset_ms),
           CASE WHEN r.allowed THEN 0 ELSE creditgate.seconds_ceil(r.retry_after_ms) END
    FROM creditgate.rate_limit_at(p_key, p_limit, p_window_seconds, 1, false, p_now) r;
END;
$$;

SELECT creditgate.drop_other_versions('peek_rate_limit', 'p_key text, p_limit integer, p_window_seconds integer',
  'TABLE(allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)');

/** A limit's state without spending it: see creditgate.peek_rate_limit_at. For service_role. */
CREATE OR REPLACE FUNCTION public.peek_rate_limit(p_key text, p_limit integer, p_window_seconds integer)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.peek_rate_limit_at(p_key, p_limit, p_window_seconds, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.peek_rate_limit(text, integer, integer)', 'service_role');

SELECT creditgate.drop_other_versions('reset_rate_limit', 'p_key text', 'integer');

/**
 * Clears every counter of p_key: each of its (limit, window) sliding
 * windows and each of its token buckets. Returns how many were cleared (0:
 * none was kept). Any stored key, 'creditgate:' ones included. A block is
 * not a counter: unblock_rate_limit_key lifts it. For service_role.
 * Locks: the key's rows (waits for a request spending them).
 */
CREATE OR REPLACE FUNCTION public.reset_rate_limit(p_key text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_windows integer;
  v_buckets integer;
BEGIN
  PERFORM creditgate.require_text('p_key', p_key, creditgate.rate_limit_stored_key_length_max(), false);
  DELETE FROM public.rate_limits r WHERE r.key = p_key;
  GET DIAGNOSTICS v_windows = ROW_COUNT;
  DELETE FROM creditgate.token_buckets t WHERE t.key = p_key;
  GET DIAGNOSTICS v_buckets = ROW_COUNT;
  RETURN v_windows + v_buckets;
END;
$$;
SELECT creditgate.expose('public.reset_rate_limit(text)', 'service_role');

/**
 * The sliding windows of keys starting with p_key_prefix ('' for all) that
 * hold something at p_now, at most p_max_rows (1 to 1000), ordered by key
 * (in "C" collation), limit and window: what a dashboard shows. used: the
 * weight counted in the window now; reset_seconds: until it is empty.
 * Token buckets are not listed.
 */
CREATE OR REPLACE FUNCTION creditgate.get_rate_limit_usage_at(p_key_prefix text, p_max_rows integer, p_now timestamptz)
RETURNS TABLE (key text, "limit" integer, window_seconds integer, used integer, reset_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_buckets constant integer := creditgate.rate_limit_buckets();
  v_now_ms bigint := pg_catalog.floor(EXTRACT(EPOCH FROM p_now) * 1000)::bigint;
BEGIN
  PERFORM creditgate.require(p_key_prefix IS NOT NULL
      AND pg_catalog.char_length(p_key_prefix) <= creditgate.rate_limit_stored_key_length_max(),
    pg_catalog.format('p_key_prefix must be 0 to %s characters', creditgate.rate_limit_stored_key_length_max()),
    pg_catalog.jsonb_build_object('parameter', 'p_key_prefix', 'max', creditgate.rate_limit_stored_key_length_max()));
  PERFORM creditgate.require_range('p_max_rows', p_max_rows, 1, 1000);
  RETURN QUERY
    SELECT r.key, r.max_requests, r.window_seconds, u.used,
           creditgate.seconds_ceil((u.newest + v_buckets + 1) * (r.window_seconds::bigint * 1000 / v_buckets) - v_now_ms)
    FROM public.rate_limits r
    CROSS JOIN LATERAL (
      SELECT pg_catalog.sum(b.cost)::integer AS used, pg_catalog.max(b.id) AS newest
      FROM ROWS FROM (pg_catalog.unnest(r.bucket_ids), pg_catalog.unnest(r.bucket_costs)) AS b(id, cost)
      WHERE b.id >= v_now_ms / (r.window_seconds::bigint * 1000 / v_buckets) - v_buckets
    ) u
    WHERE pg_catalog.starts_with(r.key, p_key_prefix) AND r.expires_at > p_now AND u.used > 0
    ORDER BY r.key COLLATE "C", r.max_requests, r.window_seconds
    LIMIT p_max_rows;
END;
$$;

SELECT creditgate.drop_other_versions('get_rate_limit_usage', 'p_key_prefix text, p_max_rows integer DEFAULT 100',
  'TABLE(key text, "limit" integer, window_seconds integer, used integer, reset_seconds integer)');

/** Current usage per key and window, for dashboards: see creditgate.get_rate_limit_usage_at. For service_role. */
CREATE OR REPLACE FUNCTION public.get_rate_limit_usage(p_key_prefix text, p_max_rows integer DEFAULT 100)
RETURNS TABLE (key text, "limit" integer, window_seconds integer, used integer, reset_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY SELECT * FROM creditgate.get_rate_limit_usage_at(p_key_prefix, p_max_rows, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.get_rate_limit_usage(text, integer)', 'service_role');

/**
 * Blocks the limit key p_key until p_until (NULL: until unblocked), for
 * p_reason (1 to 500 characters, shown to the blocked caller in the error's
 * details): every apply_rate_limit(s), apply_token_bucket, peek_rate_limit
 * and charge_credits_with_limit(s) naming it raises PT403 blocked meanwhile.
 * Blocking a blocked key replaces its end and reason. 'creditgate:' keys are
 * allowed (the Edge Function's creditgate:user:<uuid>, creditgate:ip:<addr>),
 * not 'creditgate:check:' (check_rate_limit does not look at blocks).
 * Returns the block: key, blocked_until (NULL: until unblocked), reason.
 * Errors: 22023 (p_until not after p_now).
 */
CREATE OR REPLACE FUNCTION creditgate.block_rate_limit_key_at(p_key text, p_until timestamptz, p_reason text,
  p_now timestamptz)
RETURNS TABLE (key text, blocked_until timestamptz, reason text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_rate_limit_key('p_key', p_key, true);
  PERFORM creditgate.require(p_until IS NULL OR p_until > p_now, 'p_until must be in the future (or NULL: until unblocked)',
    pg_catalog.jsonb_build_object('parameter', 'p_until', 'value', p_until));
  PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), false);
  RETURN QUERY
    INSERT INTO creditgate.rate_limit_blocks AS b (key, blocked_until, reason, blocked_at)
    VALUES (p_key, coalesce(p_until, 'infinity'::timestamptz), p_reason, p_now)
    ON CONFLICT ON CONSTRAINT rate_limit_blocks_pkey DO UPDATE
      SET blocked_until = EXCLUDED.blocked_until, reason = EXCLUDED.reason, blocked_at = EXCLUDED.blocked_at
    RETURNING b.key, CASE WHEN pg_catalog.isfinite(b.blocked_until) THEN b.blocked_until END, b.reason;
END;
$$;

SELECT creditgate.drop_other_versions('block_rate_limit_key', 'p_key text, p_until timestamp with time zone, p_reason text',
  'TABLE(key text, blocked_until timestamp with time zone, reason text)');

/** Blocks a limit key: see creditgate.block_rate_limit_key_at. For service_role. */
CREATE OR REPLACE FUNCTION public.block_rate_limit_key(p_key text, p_until timestamptz, p_reason text)
RETURNS TABLE (key text, blocked_until timestamptz, reason text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY SELECT * FROM creditgate.block_rate_limit_key_at(p_key, p_until, p_reason, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.block_rate_limit_key(text, timestamp with time zone, text)', 'service_role');

/**
 * Lifts the block on p_key at p_now; true if one was in force (an ended
 * block is removed too, and answers false). Keys as for block_rate_limit_key.
 */
CREATE OR REPLACE FUNCTION creditgate.unblock_rate_limit_key_at(p_key text, p_now timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_until timestamptz;
BEGIN
  PERFORM creditgate.require_rate_limit_key('p_key', p_key, true);
  DELETE FROM creditgate.rate_limit_blocks b WHERE b.key = p_key RETURNING b.blocked_until INTO v_until;
  RETURN coalesce(v_until > p_now, false);
END;
$$;

SELECT creditgate.drop_other_versions('unblock_rate_limit_key', 'p_key text', 'boolean');

/** Lifts a block: see creditgate.unblock_rate_limit_key_at. For service_role. */
CREATE OR REPLACE FUNCTION public.unblock_rate_limit_key(p_key text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.unblock_rate_limit_key_at(p_key, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.unblock_rate_limit_key(text)', 'service_role');

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
-- PostgreSQL grants EXECUTE on a new function to PUBLIC; the schema's
-- default privileges (20250601000100) revoke it, and this statement does it
-- for a creditgate function created another way (by another role, or before).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA creditgate FROM PUBLIC;
NOTIFY pgrst, 'reload schema';
