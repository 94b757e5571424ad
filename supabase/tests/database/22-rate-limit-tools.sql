-- The token bucket (apply_token_bucket) and the operator's tools: peek,
-- reset, usage, block and unblock. A blocked key refuses apply_rate_limit(s),
-- apply_token_bucket, peek and charge_credits_with_limit(s) with PT403
-- `blocked`, spending and charging nothing. Time is driven through the
-- creditgate.*_at(..., p_now) twins.
BEGIN;
\ir _helpers.psql
SELECT plan(85);

SELECT tests.create_user('alice');
SELECT tests.give('alice', 100);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

/** apply_token_bucket at :t0 + p_ms milliseconds. */
CREATE FUNCTION tests.bucket(p_key text, p_capacity integer, p_rate numeric, p_cost integer, p_ms integer)
RETURNS TABLE (allowed boolean, "limit" integer, remaining integer, reset_seconds integer, retry_after_seconds integer)
LANGUAGE sql AS $$
  SELECT * FROM creditgate.apply_token_bucket_at(p_key, p_capacity, p_rate, p_cost,
    '2030-01-01 12:00:00+00'::timestamptz + make_interval(secs => p_ms / 1000.0)) $$;
/** How many of p_count requests of weight 1, one every p_step_ms from :t0, a bucket allows. */
CREATE FUNCTION tests.bucket_allows(p_key text, p_capacity integer, p_rate numeric, p_step_ms integer, p_count integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_allowed integer := 0;
  v_index integer;
BEGIN
  FOR v_index IN 0 .. p_count - 1 LOOP
    IF (SELECT b.allowed FROM tests.bucket(p_key, p_capacity, p_rate, 1, v_index * p_step_ms) b) THEN
      v_allowed := v_allowed + 1;
    END IF;
  END LOOP;
  RETURN v_allowed;
END;
$$;
/** The token buckets this test wrote, as text: equal means nothing was written. */
CREATE FUNCTION tests.buckets() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $$
  SELECT coalesce(string_agg(t::text, ',' ORDER BY t.key, t.capacity, t.refill_per_second), '')
  FROM creditgate.token_buckets t WHERE tests.written_here(t.xmin) $$;

-- -----------------------------------------------------------------------------
-- apply_token_bucket: burst capacity, steady refill
-- -----------------------------------------------------------------------------
SELECT results_eq($$SELECT * FROM tests.bucket('tb:a', 3, 1, 1, 0)$$, $$VALUES (true, 3, 2, 1, 0)$$,
  'a bucket of 3 refilled at 1/s: the first request leaves 2, full again in 1 s');
SELECT results_eq($$SELECT * FROM tests.bucket('tb:a', 3, 1, 1, 0)$$, $$VALUES (true, 3, 1, 2, 0)$$, 'the second leaves 1');
SELECT results_eq($$SELECT * FROM tests.bucket('tb:a', 3, 1, 1, 0)$$, $$VALUES (true, 3, 0, 3, 0)$$,
  'the third (the burst) leaves 0, full again in 3 s');
SELECT tests.buckets() AS before_refusal \gset
SELECT results_eq($$SELECT * FROM tests.bucket('tb:a', 3, 1, 1, 0)$$, $$VALUES (false, 3, 0, 3, 1)$$,
  'the fourth at once is refused: retry after 1 s (one token refills)');
SELECT is(tests.buckets(), :'before_refusal', 'a refused request writes nothing');
SELECT results_eq($$SELECT allowed, remaining FROM tests.bucket('tb:a', 3, 1, 1, 999)$$, $$VALUES (false, 0)$$,
  'still refused 999 ms later');
SELECT results_eq($$SELECT allowed, remaining, reset_seconds FROM tests.bucket('tb:a', 3, 1, 1, 1000)$$, $$VALUES (true, 0, 3)$$,
  'allowed once one token has refilled');
SELECT results_eq($$SELECT allowed, remaining FROM tests.bucket('tb:a', 3, 1, 1, 10000)$$, $$VALUES (true, 2)$$,
  'after a pause the bucket is full again (never more than its capacity)');
SELECT is(tests.bucket_allows('tb:steady', 5, 1, 100, 100), 5 + 9,
  'a request every 100 ms for 9.9 s: the burst of 5, then one per second (at 1 s, 2 s, ... 9 s)');
SELECT is(tests.bucket_allows('tb:half', 2, 0.5, 500, 40), 2 + 9,
  'a fractional rate (0.5/s) over 20 s: the burst of 2, then one every 2 s');

-- Weights.
SELECT results_eq($$SELECT allowed, remaining FROM tests.bucket('tb:w', 10, 2, 7, 0)$$, $$VALUES (true, 3)$$,
  'weight 7 of a bucket of 10: 3 left');
SELECT results_eq($$SELECT allowed, remaining, retry_after_seconds FROM tests.bucket('tb:w', 10, 2, 5, 0)$$, $$VALUES (false, 3, 1)$$,
  'weight 5 with 3 left: refused, retry after 1 s (2 tokens at 2/s)');
SELECT results_eq($$SELECT allowed, remaining FROM tests.bucket('tb:w', 10, 2, 5, 1000)$$, $$VALUES (true, 0)$$,
  'allowed 1 s later');
SELECT results_eq($$SELECT allowed FROM tests.bucket('tb:w', 10, 3, 1, 0)$$, $$VALUES (true)$$,
  'another refill rate on the same key is another bucket');

-- Arguments.
SELECT * FROM tests.refused($$SELECT * FROM creditgate.apply_token_bucket_at('creditgate:ip:1.2.3.4', 3, 1, 1, now())$$,
  '22023', 'apply_token_bucket refuses a creditgate: key');
SELECT * FROM tests.refused($$SELECT * FROM creditgate.apply_token_bucket_at('tb:x', 3, 1, 4, now())$$,
  '22023', 'a weight above the capacity can never pass');
SELECT * FROM tests.refused($$SELECT * FROM creditgate.apply_token_bucket_at('tb:x', 3, 0, 1, now())$$,
  '22023', 'a refill rate of 0');
SELECT * FROM tests.refused($$SELECT * FROM creditgate.apply_token_bucket_at('tb:x', 3, 0.0000099, 1, now())$$,
  '22023', 'a refill rate below 0.00001 per second (about one a day)');
SELECT * FROM tests.refused($$SELECT * FROM creditgate.apply_token_bucket_at('tb:x', 0, 1, 1, now())$$,
  '22023', 'a capacity of 0');
SELECT * FROM tests.refused($$SELECT * FROM creditgate.apply_token_bucket_at('tb:x', 3, 'NaN', 1, now())$$,
  '22023', 'a refill rate of NaN');
SELECT is((SELECT allowed FROM creditgate.apply_token_bucket_at('tb:daily', 1, 1.0 / 86400, 1, :t0)), true,
  'one a day refills');

-- Cleanup: a bucket full again is worth nothing.
SELECT cmp_ok(creditgate.cleanup_expired_rate_limits_at(:t0 + interval '1 day 10 seconds'), '>=', 5,
  'cleanup_expired_rate_limits deletes buckets that are full again');
SELECT is((SELECT count(*)::integer FROM creditgate.token_buckets WHERE key LIKE 'tb:%'), 0, '(none of this test''s is left)');

-- -----------------------------------------------------------------------------
-- peek_rate_limit: the answer, nothing spent
-- -----------------------------------------------------------------------------
SELECT creditgate.apply_rate_limit_at('pk:a', 3, 60, 2, :t0);
SELECT tests.fingerprint() AS before_peek \gset
SELECT results_eq(format($$SELECT * FROM creditgate.peek_rate_limit_at('pk:a', 3, 60, %s + interval '1 second')$$, :'t0'),
  $$VALUES (true, 3, 1, 62, 0)$$, 'peek: a request would be allowed, 1 of 3 left now, the window empty in 62 s');
SELECT results_eq(format($$SELECT * FROM creditgate.peek_rate_limit_at('pk:a', 3, 60, %s + interval '1 second')$$, :'t0'),
  $$VALUES (true, 3, 1, 62, 0)$$, 'peeking again answers the same');
SELECT is(tests.fingerprint(), :'before_peek', 'peek writes nothing');
SELECT creditgate.apply_rate_limit_at('pk:a', 3, 60, 1, :t0);
SELECT results_eq(format($$SELECT * FROM creditgate.peek_rate_limit_at('pk:a', 3, 60, %s + interval '1 second')$$, :'t0'),
  $$VALUES (false, 3, 0, 62, 62)$$, 'peek on a full window: refused, and when to retry');
SELECT results_eq(format($$SELECT allowed, remaining, reset_seconds FROM creditgate.peek_rate_limit_at('pk:never', 3, 60, %s)$$, :'t0'),
  $$VALUES (true, 3, 0)$$, 'peek on a key never used: all of it left');
SELECT creditgate.charge_credits_with_limits_at(tests.id_of('alice'), 'image', 1,
  format('[{"key": "creditgate:user:%s", "limit": 5, "window_seconds": 60}]', tests.id_of('alice'))::jsonb,
  NULL, '{}', 900, :t0);
SELECT results_eq(format($$SELECT remaining FROM creditgate.peek_rate_limit_at('creditgate:user:%s', 5, 60, %s)$$,
  tests.id_of('alice'), :'t0'), $$VALUES (4)$$, 'peek reads the Edge Function''s own creditgate: keys');

-- -----------------------------------------------------------------------------
-- reset_rate_limit: every window of the key, and its buckets
-- -----------------------------------------------------------------------------
SELECT creditgate.apply_rate_limit_at('rs:a', 1, 60, 1, :t0), creditgate.apply_rate_limit_at('rs:a', 1, 3600, 1, :t0),
       creditgate.apply_token_bucket_at('rs:a', 1, 1, 1, :t0), creditgate.apply_rate_limit_at('rs:b', 1, 60, 1, :t0);
SELECT is((SELECT allowed FROM creditgate.apply_rate_limit_at('rs:a', 1, 60, 1, :t0)), false, '(rs:a is spent)');
SELECT is(public.reset_rate_limit('rs:a'), 3, 'reset_rate_limit clears both windows and the bucket of the key: 3');
SELECT is((SELECT allowed FROM creditgate.apply_rate_limit_at('rs:a', 1, 60, 1, :t0)), true, 'the key is free again');
SELECT is((SELECT allowed FROM creditgate.apply_token_bucket_at('rs:a', 1, 1, 1, :t0)), true, 'its bucket too');
SELECT is((SELECT allowed FROM creditgate.apply_rate_limit_at('rs:b', 1, 60, 1, :t0)), false, 'another key is untouched');
SELECT is(public.reset_rate_limit('rs:nothing'), 0, 'a key with no counter: 0');
SELECT is(public.reset_rate_limit(format('creditgate:user:%s', tests.id_of('alice'))), 1,
  'the Edge Function''s keys can be reset');
SELECT * FROM tests.refused($$SELECT public.reset_rate_limit('')$$, '22023', 'an empty key is refused');

-- -----------------------------------------------------------------------------
-- get_rate_limit_usage: what a dashboard shows
-- -----------------------------------------------------------------------------
SELECT creditgate.apply_rate_limit_at('use:b', 10, 60, 3, :t0), creditgate.apply_rate_limit_at('use:a', 5, 60, 1, :t0),
       creditgate.apply_rate_limit_at('use:a', 50, 86400, 2, :t0), creditgate.apply_rate_limit_at('usex', 5, 60, 1, :t0);
SELECT results_eq(format($$SELECT * FROM creditgate.get_rate_limit_usage_at('use:', 100, %s + interval '10 seconds')$$, :'t0'),
  $$VALUES ('use:a', 5, 60, 1, 53), ('use:a', 50, 86400, 2, 90710), ('use:b', 10, 60, 3, 53)$$,
  'usage by prefix: each window of each key, ordered, with what is used and when it is empty');
SELECT results_eq(format($$SELECT key, "limit" FROM creditgate.get_rate_limit_usage_at('use:', 1, %s)$$, :'t0'),
  $$VALUES ('use:a', 5)$$, 'at most p_max_rows rows');
SELECT results_eq(format($$SELECT key, window_seconds FROM creditgate.get_rate_limit_usage_at('use:', 100, %s + interval '64 seconds')$$, :'t0'),
  $$VALUES ('use:a', 86400)$$, 'a window with nothing left in it is not listed');
SELECT cmp_ok((SELECT count(*)::integer FROM creditgate.get_rate_limit_usage_at('', 1000, :t0)), '>=', 4, 'an empty prefix lists every key');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.get_rate_limit_usage_at(NULL, 10, %s)$$, :'t0'),
  '22023', 'a NULL prefix is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.get_rate_limit_usage_at('use:', 1001, %s)$$, :'t0'),
  '22023', 'more than 1000 rows is refused');

-- -----------------------------------------------------------------------------
-- block_rate_limit_key / unblock_rate_limit_key
-- -----------------------------------------------------------------------------
SELECT results_eq(format($$SELECT * FROM creditgate.block_rate_limit_key_at('bk:a', %s + interval '1 hour', 'card testing', %s)$$, :'t0', :'t0'),
  format($$VALUES ('bk:a', %s + interval '1 hour', 'card testing')$$, :'t0'), 'block_rate_limit_key returns the block');
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.apply_rate_limit_at('bk:a', 5, 60, 1, %s)$$, :'t0')) - 'message',
  jsonb_build_object('code', 'PT403', 'hint', 'blocked',
    'details', jsonb_build_object('key', 'bk:a', 'until', :t0 + interval '1 hour', 'reason', 'card testing')),
  'a blocked key: PT403, hint blocked, details {key, until, reason}');
SELECT tests.fingerprint() AS before_blocked \gset
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.apply_rate_limits_at(creditgate.parse_rate_limits('[{"key":"bk:ok","limit":5,"window_seconds":60},{"key":"bk:a","limit":5,"window_seconds":60}]', 1, false), true, %s)$$, :'t0')) ->> 'hint',
  'blocked', 'apply_rate_limits: one blocked key refuses the call');
SELECT is(tests.fingerprint(), :'before_blocked', 'and the other key spent nothing');
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.peek_rate_limit_at('bk:a', 5, 60, %s)$$, :'t0')) ->> 'hint',
  'blocked', 'peek answers as apply_rate_limit would: blocked');
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.apply_token_bucket_at('bk:a', 5, 1, 1, %s)$$, :'t0')) ->> 'hint',
  'blocked', 'apply_token_bucket: blocked');
SELECT is((SELECT allowed FROM creditgate.apply_rate_limit_at('bk:a', 5, 60, 1, :t0 + interval '1 hour')), true,
  'the block ends at p_until');

-- The charge path: the Edge Function's user key, blocked.
SELECT creditgate.block_rate_limit_key_at(format('creditgate:user:%s', tests.id_of('alice')), NULL, 'chargebacks', :t0);
SELECT tests.fingerprint() AS before_blocked_charge \gset
SELECT tests.credits_of('alice') AS alice_before \gset
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.charge_credits_with_limits_at(%L, 'image', 10,
    '[{"key": "creditgate:ip:198.51.100.9", "limit": 30, "window_seconds": 60}, {"key": "creditgate:user:%s", "limit": 5, "window_seconds": 60}]',
    'blocked-1', '{}', 900, %s)$$, tests.id_of('alice'), tests.id_of('alice'), :'t0')) - 'message',
  jsonb_build_object('code', 'PT403', 'hint', 'blocked', 'details',
    jsonb_build_object('key', format('creditgate:user:%s', tests.id_of('alice')), 'until', NULL, 'reason', 'chargebacks')),
  'charge_credits_with_limits with a blocked user key: PT403 blocked, until null (until unblocked)');
SELECT is(tests.fingerprint(), :'before_blocked_charge', 'nothing charged, no limit spent, no idempotency key kept');
SELECT is(tests.credits_of('alice'), :alice_before, '(the balance is as it was)');
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.charge_credits_with_limit_at(%L, 'image', 10,
    'creditgate:user:%s', 5, 60, NULL, '{}', 900, 1, %s)$$, tests.id_of('alice'), tests.id_of('alice'), :'t0')) ->> 'hint',
  'blocked', 'charge_credits_with_limit too');
SELECT is((SELECT count(*)::integer FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 1, NULL, '{}', 900, :t0)), 1,
  'a charge naming no limit is not a limit check: blocks are about limit keys');
SELECT is(creditgate.unblock_rate_limit_key_at(format('creditgate:user:%s', tests.id_of('alice')), :t0), true,
  'unblock_rate_limit_key: true, a block was in force');
SELECT is(creditgate.unblock_rate_limit_key_at(format('creditgate:user:%s', tests.id_of('alice')), :t0), false,
  'unblocking again: false');
SELECT is((SELECT allowed FROM creditgate.charge_credits_with_limits_at(tests.id_of('alice'), 'image', 10,
    format('[{"key": "creditgate:user:%s", "limit": 5, "window_seconds": 60}]', tests.id_of('alice'))::jsonb,
    'blocked-1', '{}', 900, :t0)), true, 'unblocked, the same request charges');

-- Blocking again replaces; arguments.
SELECT creditgate.block_rate_limit_key_at('bk:b', :t0 + interval '1 hour', 'first', :t0);
SELECT results_eq(format($$SELECT * FROM creditgate.block_rate_limit_key_at('bk:b', NULL, 'second', %s)$$, :'t0'),
  $$VALUES ('bk:b', NULL::timestamptz, 'second')$$, 'blocking a blocked key replaces its end and reason');
SELECT is(tests.error_of(format($$SELECT * FROM creditgate.apply_rate_limit_at('bk:b', 5, 60, 1, %s + interval '2 hours')$$, :'t0')) #>> '{details,reason}',
  'second', '(the new reason, and no end)');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.block_rate_limit_key_at('bk:c', %s, 'x', %s)$$, :'t0', :'t0'),
  '22023', 'p_until must be in the future');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.block_rate_limit_key_at('bk:c', NULL, '', %s)$$, :'t0'),
  '22023', 'a reason is required');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.block_rate_limit_key_at('creditgate:check:2:ip:1', NULL, 'x', %s)$$, :'t0'),
  '22023', 'check_rate_limit''s keys cannot be blocked (it does not look at blocks)');
SELECT is(creditgate.cleanup_expired_rate_limits_at(:t0 + interval '3 hours') >= 1, true, 'cleanup deletes ended blocks');
SELECT is((SELECT count(*)::integer FROM creditgate.rate_limit_blocks WHERE key IN ('bk:a', 'bk:b')), 1,
  '(bk:a''s ended; bk:b''s has no end and stays)');

-- -----------------------------------------------------------------------------
-- The public functions, as service_role and as anon (the clock is now)
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT results_eq($$SELECT allowed, "limit", remaining FROM public.apply_token_bucket('pub:tb', 2, 1)$$, $$VALUES (true, 2, 1)$$,
  'public.apply_token_bucket as service_role');
SELECT results_eq($$SELECT key, reason FROM public.block_rate_limit_key('pub:blocked', now() + interval '1 hour', 'abuse')$$,
  $$VALUES ('pub:blocked', 'abuse')$$, 'public.block_rate_limit_key as service_role');
SELECT throws_ok($$SELECT * FROM public.apply_rate_limit('pub:blocked', 5, 60)$$, 'PT403', NULL,
  'public.apply_rate_limit on a blocked key: PT403');
SELECT is(public.unblock_rate_limit_key('pub:blocked'), true, 'public.unblock_rate_limit_key as service_role');
SELECT results_eq($$SELECT allowed, remaining FROM public.peek_rate_limit('pub:blocked', 5, 60)$$, $$VALUES (true, 5)$$,
  'public.peek_rate_limit as service_role');
SELECT is((SELECT count(*)::integer FROM public.get_rate_limit_usage('pub:')), 0, 'public.get_rate_limit_usage as service_role');
RESET ROLE;
SELECT tests.as_role('anon');
SELECT throws_ok($$SELECT public.reset_rate_limit('x')$$, '42501', NULL, 'anon cannot reset a limit');
SELECT throws_ok($$SELECT * FROM public.block_rate_limit_key('x', NULL, 'y')$$, '42501', NULL, 'anon cannot block a key');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
