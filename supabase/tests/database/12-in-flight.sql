-- Idempotency keys in flight: while one transaction holds a key, a second
-- request with the same key gets PT409 idempotency_in_flight at once (it
-- neither waits nor charges). A second session, over dblink, plays the
-- request that is still running.
BEGIN;
\ir _helpers.psql
SELECT plan(8);

CREATE EXTENSION IF NOT EXISTS dblink WITH SCHEMA extensions;
-- The devstack cluster's superuser password is `postgres`, as on `supabase start`.
SELECT dblink_connect('first_request', format('host=127.0.0.1 port=%s dbname=%s user=postgres password=postgres',
  current_setting('port'), current_database()));

-- The first request: its own (uncommitted) user, a grant and a keyed charge, left running.
SELECT dblink_exec('first_request', 'BEGIN');
SELECT * FROM dblink('first_request', format($$
  INSERT INTO auth.users (id, email) VALUES (%L, 'frank@example.test');
  SELECT creditgate.grant_credits_at(%L, 100, 'setup', 'topup-1', '{}', NULL, NULL, NULL, now())::text$$,
  tests.id_of('frank'), tests.id_of('frank'))) AS t(balance text);
SELECT is((SELECT new_balance FROM dblink('first_request', format(
    $$SELECT new_balance FROM public.atomic_charge_credits(%L, 'image', 10, 'order-7')$$, tests.id_of('frank')))
    AS t(new_balance integer)), 90, 'the first request charges with key order-7 and is still running');

SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 10, 'order-7')$$, tests.id_of('frank')),
  'PT409', 'a retry with the same key while the first runs is refused with PT409, without waiting');
SELECT is(tests.error_of(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 10, 'order-7')$$, tests.id_of('frank'))) ->> 'hint',
  'idempotency_in_flight', 'with the code idempotency_in_flight');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 100, 'setup', 'topup-1')$$, tests.id_of('frank')),
  'PT409', 'a grant''s key is held the same way');
SELECT is(tests.error_of(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 10, 'order-8')$$, tests.id_of('frank'))) ->> 'hint',
  'user_not_found', '(another key goes on to the user, whom this session cannot see yet: the 409 came from the key)');

SELECT dblink_exec('first_request', 'ROLLBACK');
SELECT is(tests.error_of(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 10, 'order-7')$$, tests.id_of('frank'))) ->> 'hint',
  'user_not_found', 'once the first request has ended, the key is free again');
SELECT dblink_disconnect('first_request');

SELECT * FROM finish();
ROLLBACK;
