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
  RETURN QUERY
    SELECT r.allowed, p_limit, r.remaining, creditgate.seconds_ceil(r.reset_ms), creditgate.seconds_ceil(r.retry_after_ms)
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
  RETURN QUERY
  SELECT r.allowed, r.used, p_now + pg_catalog.make_interval(secs => r.reset_ms / 1000.0), r.remaining
  FROM creditgate.rate_limit_at(creditgate.check_rate_limit_key(p_type, p_identifier), p_max_requests,
    p_window_seconds, 1, true, p_now) r;
END;
$$;

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
SELECT creditgate.expose('public.check_rate_limit(text, text, integer, integer)', 'service_role');
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
 * Checks p_limits, a JSON array of {"key", "limit", "window_seconds", "cost"}
 * (cost optional, default 1; no other fields), p_min to
 * rate_limits_per_call_max() entries, and returns it normalised (every entry
 * with its cost). Keys follow creditgate.require_rate_limit_key (p_allow_reserved).
 * The same (key, limit, window_seconds) twice is refused: it would count twice.
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
BEGIN
  PERFORM creditgate.require(pg_catalog.jsonb_typeof(p_limits) = 'array', 'p_limits must be a JSON array',
    pg_catalog.jsonb_build_object('parameter', 'p_limits', 'type', pg_catalog.jsonb_typeof(p_limits)));
  v_count := pg_catalog.jsonb_array_length(p_limits);
  PERFORM creditgate.require(v_count BETWEEN p_min AND creditgate.rate_limits_per_call_max(),
    pg_catalog.format('p_limits must have %s to %s entries', p_min, creditgate.rate_limits_per_call_max()),
    pg_catalog.jsonb_build_object('parameter', 'p_limits', 'entries', v_count, 'min', p_min,
      'max', creditgate.rate_limits_per_call_max()));

  FOR v_index IN 0 .. v_count - 1 LOOP
    v_entry := p_limits -> v_index;
    v_name := pg_catalog.format('p_limits[%s]', v_index);
    PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_entry) = 'object',
      v_name || ' must be a JSON object {"key", "limit", "window_seconds", "cost"}',
      pg_catalog.jsonb_build_object('parameter', v_name, 'type', pg_catalog.jsonb_typeof(v_entry)));
    SELECT pg_catalog.min(k) INTO v_field FROM pg_catalog.jsonb_object_keys(v_entry) AS f(k)
    WHERE k NOT IN ('key', 'limit', 'window_seconds', 'cost');
    PERFORM creditgate.require(v_field IS NULL,
      pg_catalog.format('%s has an unknown field "%s" (allowed: key, limit, window_seconds, cost)', v_name, v_field),
      pg_catalog.jsonb_build_object('parameter', v_name || '.' || v_field));
    PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_entry -> 'key') = 'string',
      v_name || '.key must be a string', pg_catalog.jsonb_build_object('parameter', v_name || '.key'));
    PERFORM creditgate.require_rate_limit_key(v_name || '.key', v_entry ->> 'key', p_allow_reserved);

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

    v_identity := pg_catalog.jsonb_build_array(v_entry ->> 'key', v_values[1], v_values[2])::text;
    v_position := pg_catalog.array_position(v_seen, v_identity);
    PERFORM creditgate.require(v_position IS NULL,
      pg_catalog.format('%s repeats p_limits[%s]: the same key, limit and window_seconds may appear once',
        v_name, v_position - 1),
      pg_catalog.jsonb_build_object('parameter', v_name, 'same_as', pg_catalog.format('p_limits[%s]', v_position - 1)));
    v_seen := v_seen || v_identity;
    v_out := v_out || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
      'key', v_entry ->> 'key', 'limit', v_values[1], 'window_seconds', v_values[2], 'cost', v_values[3]));
  END LOOP;
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
    'reset_seconds', creditgate.seconds_ceil(v_reset_ms),
    'retry_after_seconds', CASE WHEN p_allowed OR p_mode = 'peek' THEN 0
                                ELSE creditgate.seconds_ceil(p_retry_after_ms) END);
END;
$$;

/**
 * Applies the normalised limits p_limits (creditgate.parse_rate_limits) at
 * p_now, all or nothing: {"allowed": every limit allows, "limits": one entry
 * per limit in input order (creditgate.rate_limit_entry)}. When one refuses,
 * none is spent: refusing entries carry their retry_after_seconds, allowed
 * ones what they would have had. p_consume false only reads (a replay).
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
BEGIN
  IF v_count = 0 THEN
    RETURN '{"allowed": true, "limits": []}'::jsonb;
  END IF;
  v_entries := pg_catalog.array_fill(NULL::jsonb, ARRAY[v_count]);

  FOR v_index IN 1 .. v_count LOOP
    v_entry := p_limits -> (v_index - 1);
    SELECT r.* INTO v_rate FROM creditgate.rate_limit_at(v_entry ->> 'key', (v_entry ->> 'limit')::integer,
      (v_entry ->> 'window_seconds')::integer, (v_entry ->> 'cost')::integer, false, p_now) r;
    v_entries[v_index] := creditgate.rate_limit_entry(v_entry, v_rate.allowed, v_rate.remaining, v_rate.reset_ms,
      v_rate.retry_after_ms, CASE WHEN p_consume THEN 'would' ELSE 'peek' END, p_now);
    v_all := v_all AND v_rate.allowed;
  END LOOP;
  IF NOT v_all OR NOT p_consume THEN
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
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
-- PostgreSQL grants EXECUTE on a new function to PUBLIC; the schema's
-- default privileges (20250601000100) revoke it, and this statement does it
-- for a creditgate function created another way (by another role, or before).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA creditgate FROM PUBLIC;
NOTIFY pgrst, 'reload schema';
