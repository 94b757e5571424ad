-- Accounts follow auth.users: a new auth user gets a row; deleting one (as
-- GoTrue does, as supabase_auth_admin) closes the account: open holds
-- refunded, the balance zeroed by a closing entry, the row and its history
-- kept. The deletion never fails and nothing is rewritten.
BEGIN;
\ir _helpers.psql
SELECT plan(22);

SELECT tests.create_user('alice');
SELECT results_eq(format($$SELECT credits, closed_at FROM public.users WHERE id = %L$$, tests.id_of('alice')),
  $$VALUES (0, NULL::timestamptz)$$, 'a new auth user gets an account with a zero balance');
SELECT is(tests.ledger_rows_of('alice'), 0::bigint, 'and no ledger row (nothing changed)');

SELECT tests.give('alice', 100);
SELECT job_id AS open_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'video', 30, NULL, '{}', 900, now()) \gset
SELECT tests.ledger_rows_of('alice') AS rows_before \gset

-- (The test's own helpers and pgTAP, for the role GoTrue runs as.)
GRANT USAGE ON SCHEMA tests, extensions TO supabase_auth_admin;
SET LOCAL ROLE supabase_auth_admin;
SELECT lives_ok(format($$DELETE FROM auth.users WHERE id = %L$$, tests.id_of('alice')),
  'GoTrue can delete an auth user with a balance, an open hold and history (the seed''s rules made it impossible)');
RESET ROLE;
SELECT is_empty(format($$SELECT FROM auth.users WHERE id = %L$$, tests.id_of('alice')), 'the auth user is gone');
SELECT results_eq(format($$SELECT credits, closed_at IS NOT NULL FROM public.users WHERE id = %L$$, tests.id_of('alice')),
  $$VALUES (0, true)$$, 'the account is kept, closed, with a zero balance');
SELECT is(tests.status_of(:'open_job'), 'failed', 'the open hold was refunded');
SELECT results_eq(
  format($$SELECT entry_type, delta, balance_after FROM public.credit_ledger WHERE user_id = %L AND id > (
             SELECT max(id) FROM public.credit_ledger WHERE user_id = %L AND entry_type = 'charge') ORDER BY id$$,
    tests.id_of('alice'), tests.id_of('alice')),
  $$VALUES ('refund'::text, 30, 100), ('account_closure'::text, -100, 0)$$,
  'the ledger gains the refund and a closing entry of -100');
SELECT is(tests.ledger_rows_of('alice'), :rows_before + 2::bigint, 'every earlier ledger row is still there');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'and the ledger still reconciles');

SELECT tests.as_role('service_role');
SELECT * FROM tests.refused(format($$SELECT * FROM public.atomic_charge_credits(%L, 'image', 1)$$, tests.id_of('alice')),
  'PT404', 'a closed account cannot be charged');
SELECT * FROM tests.refused(format($$SELECT public.grant_credits(%L, 10, 'x')$$, tests.id_of('alice')),
  'PT404', 'nor granted');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 30, 'x')$$, tests.id_of('alice'), :'open_job'),
  'PT409', 'its refunded hold cannot be refunded again');
SELECT is(public.get_credit_balance(tests.id_of('alice')), 0, 'its balance reads 0');
RESET ROLE;

-- A user who never used credits: closed with no entry; several at once.
SELECT tests.create_user('bob'), tests.create_user('carol');
SELECT tests.give('carol', 5);
DELETE FROM auth.users WHERE id IN (tests.id_of('bob'), tests.id_of('carol'));
SELECT results_eq(format($$SELECT id, credits, closed_at IS NOT NULL FROM public.users WHERE id IN (%L, %L) ORDER BY id$$,
    tests.id_of('bob'), tests.id_of('carol')),
  format($$SELECT * FROM (VALUES (%L::uuid, 0, true), (%L::uuid, 0, true)) v ORDER BY 1$$, tests.id_of('bob'), tests.id_of('carol')),
  'deleting several auth users at once closes each account');
SELECT is(tests.ledger_rows_of('bob'), 0::bigint, 'an account with a zero balance closes without a ledger row');

-- An auth user restored with the same id gets its account back, at zero.
SELECT tests.create_user('bob');
SELECT results_eq(format($$SELECT credits, closed_at FROM public.users WHERE id = %L$$, tests.id_of('bob')),
  $$VALUES (0, NULL::timestamptz)$$, 'a restored auth user reopens the account');

-- A project's own signup trigger that gives a starting balance (common
-- before creditgate) still reconciles: creditgate's trigger fires after it.
CREATE FUNCTION pg_temp.legacy_signup_bonus() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.users (id, credits) VALUES (NEW.id, 25);
  RETURN NEW;
END;
$$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION pg_temp.legacy_signup_bonus();
SELECT tests.create_user('dave');
SELECT is(tests.credits_of('dave'), 25, 'a project''s on_auth_user_created trigger gave dave 25 credits');
SELECT results_eq(format($$SELECT entry_type, delta, balance_after FROM public.credit_ledger WHERE user_id = %L$$, tests.id_of('dave')),
  $$VALUES ('opening_balance'::text, 25, 25)$$, 'and creditgate recorded them as an opening balance');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'so the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
