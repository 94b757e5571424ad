-- Webhooks out (docs/rpc.md, "Webhooks out"): credit_events are queued for
-- delivery only once a drain has run; claims lease due deliveries (two
-- claims never share one; a lease that runs out is claimed again with the
-- next attempt number); outcomes deliver, back off (10 s doubling, capped at
-- 1 h) or give up after 16 attempts with the last status and error kept;
-- bad arguments are refused; only service_role may call or read any of it.
-- The clock is passed in (the creditgate.*_at functions).
BEGIN;
\ir _helpers.psql
SELECT plan(31);

SELECT tests.create_user('wendy');
SELECT tests.create_user('xavier');
CREATE FUNCTION tests.event(p_name text, p_type text) RETURNS bigint
LANGUAGE sql AS $$
  SELECT creditgate.record_event(tests.id_of(p_name), p_type, jsonb_build_object('test', 24));
  SELECT max(e.id) FROM public.credit_events e WHERE e.user_id = tests.id_of(p_name)
$$;
CREATE FUNCTION tests.claim(p_limit integer, p_lease integer, p_at interval) RETURNS SETOF bigint
LANGUAGE sql AS $$
  SELECT c.event_id FROM creditgate.claim_credit_event_deliveries_at(p_limit, p_lease, clock_timestamp() + p_at) c
$$;
CREATE FUNCTION tests.delivery(p_event bigint) RETURNS public.credit_webhook_deliveries
LANGUAGE sql AS $$ SELECT * FROM public.credit_webhook_deliveries d WHERE d.event_id = p_event $$;
CREATE FUNCTION tests.record(p_name text, p_event bigint, p_attempt integer, p_status integer, p_error text, p_at interval)
RETURNS text LANGUAGE sql AS $$
  SELECT creditgate.record_credit_event_delivery_at(tests.id_of(p_name), p_event, p_attempt, p_status, p_error,
    clock_timestamp() + p_at)
$$;

-- No drain yet: nothing is queued (a project without a webhook URL keeps no rows).
DELETE FROM creditgate.webhook_queue;
SELECT tests.event('wendy', 'low_balance') AS unqueued \gset
SELECT is((SELECT count(*)::integer FROM public.credit_webhook_deliveries WHERE event_id = :unqueued), 0,
  'before any drain, an event is not queued');
SELECT is_empty('SELECT tests.claim(10, 60, interval ''0'')', 'the first drain finds nothing due');
SELECT ok(EXISTS (SELECT FROM creditgate.webhook_queue), 'and marks the queue as drained');

-- From now on each event is queued, in its own transaction's write.
SELECT tests.event('wendy', 'low_balance') AS e1 \gset
SELECT tests.event('xavier', 'depleted') AS e2 \gset
SELECT tests.event('wendy', 'lot_expiring') AS e3 \gset
SELECT is((SELECT array_agg(d.status || ':' || d.attempts ORDER BY d.event_id) FROM public.credit_webhook_deliveries d
           WHERE d.event_id IN (:e1, :e2, :e3)), ARRAY['pending:0', 'pending:0', 'pending:0'],
  'three events, three pending deliveries');

-- Claims are disjoint while leased.
SELECT results_eq('SELECT tests.claim(2, 60, interval ''1 second'')', ARRAY[:e1::bigint, :e2::bigint],
  'a claim takes the oldest due deliveries, up to its limit');
SELECT results_eq('SELECT tests.claim(10, 60, interval ''1 second'')', ARRAY[:e3::bigint],
  'a second claim takes only what the first did not');
SELECT is_empty('SELECT tests.claim(10, 60, interval ''2 seconds'')', 'a third finds everything leased');
SELECT is((SELECT c.attempt FROM creditgate.claim_credit_event_deliveries_at(10, 60, clock_timestamp()) c LIMIT 1), NULL,
  '(nothing claimed, no attempt)');
SELECT is((SELECT d.attempts FROM tests.delivery(:e2) d), 1, 'a claimed delivery counts its attempt (1)');

-- Outcomes.
SELECT is(tests.record('wendy', :e1, 1, 204, NULL, interval '2 seconds'), 'delivered', 'a 2xx delivers');
SELECT is(tests.record('xavier', :e2, 1, 500, 'HTTP 500', interval '2 seconds'), 'pending', 'a 500 is retried');
SELECT ok((SELECT d.next_attempt_at BETWEEN clock_timestamp() + interval '11 seconds' AND clock_timestamp() + interval '13 seconds'
           AND d.last_http_status = 500 AND d.last_error = 'HTTP 500' FROM tests.delivery(:e2) d),
  'after the first failure, the next attempt is 10 s later, with the status and error kept');
SELECT is_empty('SELECT tests.claim(10, 60, interval ''5 seconds'')', 'not due before its backoff ends');
SELECT results_eq('SELECT tests.claim(10, 60, interval ''13 seconds'')', ARRAY[:e2::bigint], 'due again after it');
SELECT is(tests.record('xavier', :e2, 1, 500, 'late', interval '14 seconds'), 'pending',
  'a late failure of an older attempt changes nothing');
SELECT is((SELECT d.last_error FROM tests.delivery(:e2) d), 'HTTP 500', '(the error is still the first one)');

-- A lease that runs out (the drain died): claimed again, next attempt.
SELECT results_eq('SELECT tests.claim(10, 60, interval ''62 seconds'')', ARRAY[:e3::bigint],
  'a delivery whose lease ran out is claimed again');
SELECT is((SELECT d.attempts FROM tests.delivery(:e3) d), 2, 'as its second attempt');
SELECT is(tests.record('wendy', :e3, 1, 200, NULL, interval '63 seconds'), 'delivered',
  'the first attempt''s late success still delivers it (the receiver de-duplicates by event id)');
SELECT is(tests.record('wendy', :e3, 2, 500, 'x', interval '64 seconds'), 'delivered', 'and a failure after that changes nothing');

-- The schedule and the bound.
SELECT is(ARRAY(SELECT extract(epoch FROM creditgate.webhook_retry_delay(a))::integer FROM generate_series(1, 12) a),
  ARRAY[10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600], 'backoff: 10 s doubling, capped at 1 h');
SELECT is(creditgate.webhook_give_up_after(), 16, 'at most 16 attempts');
UPDATE public.credit_webhook_deliveries SET attempts = 15, next_attempt_at = clock_timestamp() WHERE event_id = :e2;
SELECT results_eq('SELECT tests.claim(10, 60, interval ''1 second'')', ARRAY[:e2::bigint], 'the 16th attempt is claimed');
SELECT is(tests.record('xavier', :e2, 16, NULL, 'timed out after 5000 ms', interval '2 seconds'), 'failed',
  'and its failure gives up');
SELECT is((SELECT row(d.status, d.attempts, d.last_http_status, d.last_error, d.failed_at IS NOT NULL)::text FROM tests.delivery(:e2) d),
  row('failed', 16, NULL::integer, 'timed out after 5000 ms', true)::text, 'recorded for an operator: status, attempts, last error');

-- Refusals.
SELECT is(tests.error_of('SELECT * FROM public.claim_credit_event_deliveries(0, 60)') ->> 'hint', 'invalid_argument',
  'a claim of 0 is invalid_argument');
SELECT is(tests.error_of(format('SELECT public.record_credit_event_delivery(%L, 1, 1, NULL, NULL)', tests.id_of('wendy'))) ->> 'hint',
  'invalid_argument', 'an outcome without status or error is invalid_argument');
SELECT is(tests.error_of(format('SELECT public.record_credit_event_delivery(%L, -5, 1, 200, NULL)', tests.id_of('wendy'))) ->> 'code',
  '22023', 'an unknown delivery is 22023');

-- Only service_role.
SELECT tests.as_role('anon');
SELECT throws_ok('SELECT * FROM public.claim_credit_event_deliveries(10, 60)', '42501', NULL, 'anon cannot claim');
RESET role;
SELECT tests.as_user('wendy');
SELECT throws_ok(format('SELECT public.record_credit_event_delivery(%L, %s, 1, 200, NULL)', tests.id_of('wendy'), :e1),
  '42501', NULL, 'a user cannot record an outcome');
SELECT throws_ok('SELECT * FROM public.credit_webhook_deliveries', '42501', NULL, 'nor read deliveries');
RESET role;

SELECT * FROM finish();
ROLLBACK;
