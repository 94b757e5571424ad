-- Every limit in one query: creditgate.limits() lists each named limit once,
-- under a stable name, with the value its constant function returns (the
-- one place a limit is written), for tests that compare them with the
-- client's constants (src/types.rs).
BEGIN;
\ir _helpers.psql
SELECT plan(5);

SELECT results_eq($$SELECT name, value FROM creditgate.limits()$$,
  $$VALUES ('cost_credits_max'::text, 1000000000::bigint), ('balance_credits_max', 2000000000),
           ('idempotency_key_length_max', 255), ('operation_type_length_max', 64), ('metadata_bytes_max', 4096),
           ('reason_length_max', 500), ('result_url_length_max', 2048), ('hold_seconds_max', 86400),
           ('rate_limit_max', 1000000), ('window_seconds_max', 86400), ('rate_limit_key_length_max', 255),
           ('rate_limit_stored_key_length_max', 320), ('rate_limit_type_length_max', 64),
           ('rate_limit_identifier_length_max', 190), ('limits_per_call_max', 16), ('rate_limit_buckets', 20)$$,
  'creditgate.limits(): every limit, by name, in a stable order');

-- Each row is its constant function: name_max() -> value (limits_per_call_max
-- is rate_limits_per_call_max()).
SELECT is_empty($$
  SELECT l.name FROM creditgate.limits() l
  WHERE l.value IS DISTINCT FROM tests.scalar(format('SELECT creditgate.%I()',
          CASE l.name WHEN 'limits_per_call_max' THEN 'rate_limits_per_call_max' ELSE l.name END))::bigint
$$, 'each value is its named constant function''s');
SELECT is_empty($$
  SELECT p.proname FROM pg_proc p
  WHERE p.pronamespace = 'creditgate'::regnamespace AND p.pronargs = 0 AND p.prorettype = 'integer'::regtype
    AND (p.proname LIKE '%\_max' OR p.proname = 'rate_limit_buckets')
    AND p.proname NOT IN (SELECT CASE l.name WHEN 'limits_per_call_max' THEN 'rate_limits_per_call_max' ELSE l.name END
                          FROM creditgate.limits() l)
$$, 'no constant function is missing from it');

-- The functions check with these values: one past each bound is refused.
SELECT tests.create_user('lim');
SELECT value + 1 AS past_cost FROM creditgate.limits() WHERE name = 'cost_credits_max' \gset
SELECT tests.as_role('service_role');
SELECT throws_ok(format($$SELECT * FROM public.charge_credits(%L, 'image', %s)$$, tests.id_of('lim'), :'past_cost'), '22023', NULL,
  'a cost of cost_credits_max + 1 is refused');
RESET ROLE;

SELECT ok(NOT has_function_privilege('service_role', 'creditgate.limits()', 'EXECUTE'),
  'like every creditgate function, only its owner calls it (service_role has no USAGE on creditgate)');

SELECT * FROM finish();
ROLLBACK;
