-- result_url must be an http(s) URL wherever it is stored; account closure
-- is dated after it holds the user's row lock.
BEGIN;
\ir _helpers.psql
SELECT plan(19);

SELECT tests.create_user('alice');
SELECT tests.give('alice', 100);
SELECT job_id AS job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 10, NULL, '{}', 900, clock_timestamp()) \gset

SELECT tests.refused(format($$SELECT * FROM public.complete_generation_job(%L, %L)$$, :'job', u), '22023',
  'result_url ' || u || ' is refused')
FROM unnest(ARRAY['javascript:alert(1)', 'ftp://x', 'data:text/html,<b>x</b>', '//example.com/x', ' https://x', 'httpx://x']) AS u;
SELECT is(tests.error_of(format($$SELECT * FROM public.complete_generation_job(%L, 'javascript:alert(1)')$$, :'job')) - 'details',
  '{"code": "22023", "hint": "invalid_argument", "message": "p_result_url must be an http:// or https:// URL"}'::jsonb,
  'with invalid_argument and a message naming the parameter');
SELECT is(tests.status_of(:'job'), 'pending', 'the job is still open');
SELECT results_eq(format($$SELECT status FROM public.complete_generation_job(%L, 'HTTPS://Example.com/r.png')$$, :'job'),
  $$VALUES ('completed'::text)$$, 'an https URL (any case of the scheme) is stored');
SELECT job_id AS job2 FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 10, NULL, '{}', 900, clock_timestamp()) \gset
SELECT results_eq(format($$SELECT status FROM public.complete_generation_job(%L, NULL)$$, :'job2'),
  $$VALUES ('completed'::text)$$, 'NULL is still allowed');

-- Closure reads the clock once it holds the row: the trigger passes no time.
SELECT ok(pg_get_functiondef('creditgate.on_auth_user_deleted()'::regprocedure) ~ 'close_account\(OLD\.id, NULL\)',
  'the deletion trigger leaves the clock to close_account');
SELECT clock_timestamp() AS before_close \gset
DELETE FROM auth.users WHERE id = tests.id_of('alice');
SELECT ok((SELECT closed_at >= :'before_close'::timestamptz FROM public.users WHERE id = tests.id_of('alice')),
  'closed_at is read when the closure runs, not earlier');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger adds up');

SELECT * FROM finish();
ROLLBACK;
