-- Rate limits: at most N (weighted) in any interval of the window, for
-- windows from 1 s to 86400 s; limit and window are part of the key; denied
-- requests consume nothing; results carry remaining, reset and retry-after;
-- storage is bounded. Time is driven through creditgate.*_at(..., p_now).
BEGIN;
\ir _helpers.psql
SELECT plan(63);

-- 2030-01-01 12:00:00 UTC: a whole number of every bucket width used below.
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

-- -----------------------------------------------------------------------------
-- check_rate_limit (the seed's signature): 3 per 60 s
-- -----------------------------------------------------------------------------
SELECT results_eq(format($$SELECT allowed, current_count, window_end, remaining FROM creditgate.check_rate_limit_at('u1', 'user', 3, 60, %s)$$, :'t0'),
  format($$VALUES (true, 1, %s + interval '63 seconds', 2)$$, :'t0'),
  'the first request is allowed: count 1, 2 remaining, the window empty again after 60 s plus one bucket (3 s)');
SELECT results_eq(format($$SELECT allowed, current_count, remaining FROM creditgate.check_rate_limit_at('u1', 'user', 3, 60, %s + interval '1 second')$$, :'t0'),
  $$VALUES (true, 2, 1)$$, 'the second is allowed');
SELECT results_eq(format($$SELECT allowed, current_count, remaining FROM creditgate.check_rate_limit_at('u1', 'user', 3, 60, %s + interval '2 seconds')$$, :'t0'),
  $$VALUES (true, 3, 0)$$, 'the third is allowed, none remaining');
SELECT tests.fingerprint() AS before_denial \gset
SELECT results_eq(format($$SELECT allowed, current_count, remaining FROM creditgate.check_rate_limit_at('u1', 'user', 3, 60, %s + interval '3 seconds')$$, :'t0'),
  $$VALUES (false, 3, 0)$$, 'the fourth is denied and not counted (the seed counted it)');
SELECT is(tests.fingerprint(), :'before_denial', 'a denied request writes nothing');
SELECT results_eq(format($$SELECT allowed FROM creditgate.check_rate_limit_at('u1', 'user', 3, 60, %s + interval '60 seconds')$$, :'t0'),
  $$VALUES (false)$$, 'exactly one window after the first request it is still denied: [t0, t0 + 60 s] holds three');
SELECT results_eq(format($$SELECT allowed, current_count FROM creditgate.check_rate_limit_at('u1', 'user', 3, 60, %s + interval '63 seconds')$$, :'t0'),
  $$VALUES (true, 1)$$, 'once their bucket has left the window, requests are allowed again');

-- Limit and window are part of the key.
SELECT results_eq(format($$SELECT allowed, current_count FROM creditgate.check_rate_limit_at('u1', 'user', 5, 60, %s + interval '3 seconds')$$, :'t0'),
  $$VALUES (true, 1)$$, 'a 5/60 s limit on the same identifier has its own counter (the seed shared it)');
SELECT results_eq(format($$SELECT allowed, current_count FROM creditgate.check_rate_limit_at('u1', 'user', 3, 3600, %s + interval '3 seconds')$$, :'t0'),
  $$VALUES (true, 1)$$, 'so has a 3/hour limit');
SELECT results_eq(format($$SELECT allowed, current_count FROM creditgate.check_rate_limit_at('u1', 'ip', 3, 60, %s + interval '3 seconds')$$, :'t0'),
  $$VALUES (true, 1)$$, 'and the type is part of the key');

-- The window is the one asked for (the seed's was always one minute).
SELECT creditgate.check_rate_limit_at('fast', 'user', 1, 1, :t0);
SELECT results_eq(format($$SELECT allowed FROM creditgate.check_rate_limit_at('fast', 'user', 1, 1, %s + interval '1049 milliseconds')$$, :'t0'),
  $$VALUES (false)$$, 'a 1 s window: denied until its 50 ms bucket leaves the window');
SELECT results_eq(format($$SELECT allowed FROM creditgate.check_rate_limit_at('fast', 'user', 1, 1, %s + interval '1050 milliseconds')$$, :'t0'),
  $$VALUES (true)$$, 'and allowed again 1.05 s later');
SELECT creditgate.check_rate_limit_at('slow', 'user', 1, 3600, :t0);
SELECT results_eq(format($$SELECT allowed FROM creditgate.check_rate_limit_at('slow', 'user', 1, 3600, %s + interval '61 seconds')$$, :'t0'),
  $$VALUES (false)$$, 'a one-hour window still holds after a minute');
SELECT creditgate.check_rate_limit_at('daily', 'user', 1, 86400, :t0);
SELECT results_eq(format($$SELECT allowed FROM creditgate.check_rate_limit_at('daily', 'user', 1, 86400, %s + interval '23 hours')$$, :'t0'),
  $$VALUES (false)$$, 'a one-day window holds after 23 hours');
SELECT results_eq(format($$SELECT allowed FROM creditgate.check_rate_limit_at('daily', 'user', 1, 86400, %s + interval '25 hours 12 minutes')$$, :'t0'),
  $$VALUES (true)$$, 'and has passed after a day and one bucket (72 min)');

-- -----------------------------------------------------------------------------
-- apply_rate_limit: weighted requests, remaining, reset, retry-after
-- -----------------------------------------------------------------------------
SELECT results_eq(format($$SELECT * FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 4, %s)$$, :'t0'),
  $$VALUES (true, 10, 6, 2, 0)$$, 'a request of weight 4 of 10 per second: 6 remaining, reset in 2 s (1.05 s, rounded up), no retry-after');
SELECT results_eq(format($$SELECT * FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 4, %s)$$, :'t0'),
  $$VALUES (true, 10, 2, 2, 0)$$, 'another 4: 2 remaining');
SELECT results_eq(format($$SELECT * FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 3, %s)$$, :'t0'),
  $$VALUES (false, 10, 2, 2, 2)$$, 'a request of weight 3 is denied, with retry-after 2 s; 2 still remain');
SELECT results_eq(format($$SELECT * FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 2, %s)$$, :'t0'),
  $$VALUES (true, 10, 0, 2, 0)$$, 'a request of weight 2 still fits: exactly the limit');
SELECT results_eq(format($$SELECT allowed, retry_after_ms FROM creditgate.rate_limit_at('tokens', 10, 1, 1, false, %s + interval '500 milliseconds')$$, :'t0'),
  $$VALUES (false, 550::bigint)$$, 'half a second later, retry-after is the 550 ms until the bucket leaves the window');
SELECT results_eq(format($$SELECT allowed FROM creditgate.rate_limit_at('tokens', 10, 1, 1, false, %s + interval '1049 milliseconds')$$, :'t0'),
  $$VALUES (false)$$, 'one millisecond before the retry-after time the request is still denied');
SELECT results_eq(format($$SELECT allowed, remaining FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 10, %s + interval '1050 milliseconds')$$, :'t0'),
  $$VALUES (true, 0)$$, 'at the retry-after time it passes: retry-after is honest (here a request of the full limit)');

SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 11, %s)$$, :'t0'),
  '22023', 'a weight above the limit can never pass and is refused as an argument');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('tokens', 10, 1, 0, %s)$$, :'t0'),
  '22023', 'a weight of 0 is refused');

-- -----------------------------------------------------------------------------
-- Limits: at the bound, and one past it
-- -----------------------------------------------------------------------------
SELECT ok((SELECT allowed FROM creditgate.apply_rate_limit_at('b', 1, 1, 1, :t0)), 'a window of 1 s is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('b', 1, 0, 1, %s)$$, :'t0'), '22023', 'a window of 0 s is refused');
SELECT ok((SELECT allowed FROM creditgate.apply_rate_limit_at('b', 1, 86400, 1, :t0)), 'a window of 86400 s is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('b', 1, 86401, 1, %s)$$, :'t0'), '22023', 'a window of 86401 s is refused');
SELECT ok((SELECT allowed FROM creditgate.apply_rate_limit_at('b', 1000000, 60, 1000000, :t0)), 'a limit of 1000000 is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('b', 1000001, 60, 1, %s)$$, :'t0'), '22023', 'a limit of 1000001 is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('b', 0, 60, 1, %s)$$, :'t0'), '22023', 'a limit of 0 is refused');
SELECT ok((SELECT allowed FROM creditgate.apply_rate_limit_at(repeat('k', 255), 1, 60, 1, :t0)), 'a key of 255 characters is accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at(%L, 1, 60, 1, %s)$$, repeat('k', 256), :'t0'), '22023', 'a key of 256 characters is refused');
SELECT ok((SELECT allowed FROM creditgate.check_rate_limit_at(repeat('i', 190), repeat('t', 64), 1, 60, :t0)),
  'check_rate_limit: an identifier of 190 and a type of 64 characters are accepted');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.check_rate_limit_at(%L, 'user', 1, 60, %s)$$, repeat('i', 191), :'t0'),
  '22023', 'an identifier of 191 characters is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.check_rate_limit_at('x', %L, 1, 60, %s)$$, repeat('t', 65), :'t0'),
  '22023', 'a type of 65 characters is refused');

-- -----------------------------------------------------------------------------
-- The guarantee, on pseudo-random traffic: windows of 1 s, 60 s and a day,
-- weighted requests. For every scenario:
--   * no interval [t, t + W] holds more than N of allowed weight;
--   * every denial is justified: the allowed weight in the last W plus one
--     bucket, plus the request, exceeds N.
-- -----------------------------------------------------------------------------
CREATE TEMP TABLE traffic (scenario text, window_seconds integer, max_requests integer, at timestamptz, cost integer, allowed boolean);
DO $$
DECLARE
  v_scenario record;
  v_at timestamptz;
  v_cost integer;
BEGIN
  PERFORM setseed(0.42);
  FOR v_scenario IN
    SELECT * FROM (VALUES ('1 s', 1, 5, 1, 300), ('60 s', 60, 7, 3, 40000), ('1 day', 86400, 20, 4, 9000000)) AS s(name, window_seconds, max_requests, max_cost, max_gap_ms)
  LOOP
    v_at := '2030-01-01 12:00:00+00';
    FOR i IN 1..600 LOOP
      v_at := v_at + make_interval(secs => floor(random() * v_scenario.max_gap_ms) / 1000.0);
      v_cost := 1 + floor(random() * v_scenario.max_cost)::integer;
      INSERT INTO traffic
      SELECT v_scenario.name, v_scenario.window_seconds, v_scenario.max_requests, v_at, v_cost, r.allowed
      FROM creditgate.rate_limit_at('sim:' || v_scenario.name, v_scenario.max_requests, v_scenario.window_seconds, v_cost, true, v_at) r;
    END LOOP;
  END LOOP;
END
$$;

SELECT ok((SELECT count(*) FILTER (WHERE allowed) > 50 AND count(*) FILTER (WHERE NOT allowed) > 50 FROM traffic WHERE scenario = s),
  'the ' || s || ' traffic has both allowed and denied requests') FROM unnest(ARRAY['1 s', '60 s', '1 day']) AS s;
SELECT is_empty(format($$
  SELECT a.at, sum(b.cost) FROM traffic a JOIN traffic b
    ON b.scenario = a.scenario AND b.allowed AND b.at BETWEEN a.at AND a.at + make_interval(secs => a.window_seconds)
  WHERE a.scenario = %L AND a.allowed
  GROUP BY a.at, a.max_requests HAVING sum(b.cost) > a.max_requests
$$, s), 'window ' || s || ': no interval of the window holds more than the limit') FROM unnest(ARRAY['1 s', '60 s', '1 day']) AS s;
SELECT is_empty(format($$
  SELECT d.at FROM traffic d
  WHERE d.scenario = %L AND NOT d.allowed
    AND d.cost + coalesce((SELECT sum(b.cost) FROM traffic b
         WHERE b.scenario = d.scenario AND b.allowed
           AND b.at > d.at - make_interval(secs => d.window_seconds * 21 / 20.0) AND b.at <= d.at), 0) <= d.max_requests
$$, s), 'window ' || s || ': every denial is justified by the last window and one bucket') FROM unnest(ARRAY['1 s', '60 s', '1 day']) AS s;

-- -----------------------------------------------------------------------------
-- Bounded storage
-- -----------------------------------------------------------------------------
SELECT cmp_ok((SELECT max(cardinality(bucket_ids)) FROM public.rate_limits), '<=', 21,
  'each key stores at most 21 buckets, however much traffic it saw');
SELECT creditgate.cleanup_expired_rate_limits_at(:t0);
SELECT is((SELECT count(*)::integer FROM public.rate_limits WHERE key LIKE 'sim:%'), 3,
  'cleanup at t0 keeps the simulated keys: they have requests in their window');
SELECT cmp_ok(creditgate.cleanup_expired_rate_limits_at('2030-03-01'), '>=', 10, 'two months later cleanup deletes every key');
SELECT is((SELECT count(*)::integer FROM public.rate_limits WHERE tests.written_here(xmin)), 0, 'and none of this test''s is left');

-- -----------------------------------------------------------------------------
-- The public functions, on the real clock
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT results_eq($$SELECT allowed, "limit", remaining, retry_after_seconds FROM public.apply_rate_limit('user:alice', 2, 60)$$,
  $$VALUES (true, 2, 1, 0)$$, 'apply_rate_limit: first of 2 per minute');
SELECT results_eq($$SELECT allowed, remaining FROM public.apply_rate_limit('user:alice', 2, 60)$$, $$VALUES (true, 0)$$, 'second');
SELECT results_eq($$SELECT allowed, remaining, retry_after_seconds BETWEEN 1 AND 63, reset_seconds BETWEEN 1 AND 63 FROM public.apply_rate_limit('user:alice', 2, 60)$$,
  $$VALUES (false, 0, true, true)$$, 'third: denied, with retry-after and reset within the window and a bucket');
SELECT results_eq($$SELECT allowed, current_count, remaining, window_end > now() FROM public.check_rate_limit('203.0.113.9', 'ip', 1, 10)$$,
  $$VALUES (true, 1, 0, true)$$, 'check_rate_limit keeps the seed''s result shape');
SELECT public.cleanup_expired_rate_limits();
SELECT is((SELECT count(*)::integer FROM public.rate_limits WHERE key = 'user:alice'), 1, 'cleanup_expired_rate_limits keeps live keys');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
