-- Plans and allowances (docs/rpc.md, "Plans and allowances"): subscribing
-- grants the current period at once; each new period is granted exactly once
-- (by the sweeper or the user's next call), as an allowance lot expiring at
-- the period's end, with up to rollover_max carried over; missed periods are
-- not granted afterwards; changing plan revokes the old allowance and grants
-- the new one; cancelling keeps the current allowance to its end. The clock
-- is driven through the creditgate.*_at twins from :t0.
BEGIN;
\ir _helpers.psql
SELECT plan(54);

SELECT now() AS t0 \gset
SELECT tests.create_user('pia');
SELECT tests.create_user('quin');

CREATE FUNCTION tests.at(p_offset text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT now() + p_offset::interval $$;
CREATE FUNCTION tests.allowances(p_name text) RETURNS TABLE (period_start timestamptz, granted integer, remaining integer,
  expires_at timestamptz, revoked boolean)
LANGUAGE sql AS $$
  SELECT l.period_start, l.granted, l.remaining, l.expires_at, l.revoked_at IS NOT NULL FROM public.credit_lots l
  WHERE l.user_id = tests.id_of(p_name) AND l.category = 'allowance' ORDER BY l.period_start, l.created_at
$$;

-- -----------------------------------------------------------------------------
-- Plans
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT results_eq($$SELECT * FROM public.upsert_credit_plan('daily', 8, 'day', 5)$$,
  $$VALUES ('daily'::text, 8, 'day'::text, 5, '{}'::jsonb)$$, 'upsert_credit_plan creates a plan; limits default to {}');
SELECT results_eq($$SELECT * FROM public.upsert_credit_plan('daily', 10, 'day', 5)$$,
  $$VALUES ('daily'::text, 10, 'day'::text, 5, '{}'::jsonb)$$, 'and changes it');
SELECT results_eq($$SELECT plan, amount, rollover_max FROM public.upsert_credit_plan('weekly', 50, 'week')$$,
  $$VALUES ('weekly'::text, 50, 0)$$, 'rollover_max defaults to 0');
SELECT public.upsert_credit_plan('monthly', 100, 'month', 0);
RESET ROLE;

-- -----------------------------------------------------------------------------
-- Subscribing grants the current period at once
-- -----------------------------------------------------------------------------
SELECT results_eq(format($$SELECT plan, period_start, period_end, granted, new_balance
                           FROM creditgate.subscribe_credit_plan_at(%L, 'daily', %L, %L)$$,
                         tests.id_of('pia'), tests.at('0 s'), tests.at('0 s')),
  format($$VALUES ('daily'::text, %L::timestamptz, %L::timestamptz, 10, 10)$$, tests.at('0 s'), tests.at('1 day')),
  'subscribing grants the current period''s allowance at once');
SELECT results_eq($$SELECT category, priority, plan, reason FROM public.credit_lots WHERE user_id = tests.id_of('pia')$$,
  $$VALUES ('allowance'::text, 50, 'daily'::text, 'Plan allowance: daily'::text)$$, 'as an allowance lot of the plan');
SELECT results_eq($$SELECT granted, remaining, expires_at FROM tests.allowances('pia')$$,
  $$SELECT 10, 10, tests.at('1 day')$$, 'expiring at the period''s end');
SELECT is((SELECT payload - 'lot_id' - 'entry_id' FROM public.credit_events WHERE user_id = tests.id_of('pia') AND type = 'allowance_granted'),
  jsonb_build_object('plan', 'daily', 'amount', 10, 'rollover', 0, 'period_start', tests.at('0 s'), 'period_end', tests.at('1 day')),
  'an allowance_granted event');
SELECT is((SELECT count(*)::integer FROM creditgate.subscribe_credit_plan_at(tests.id_of('pia'), 'daily', tests.at('0 s'),
  tests.at('1 hour')) WHERE granted = 0), 1, 'the same plan and anchor again: granted 0');
SELECT is(tests.credits_of('pia'), 10, 'nothing more was granted');

-- Spend 3 of it; at the next period, 5 carry over and the other 2 expire.
SELECT creditgate.complete_generation_job_at((SELECT job_id FROM creditgate.charge_credits_at(tests.id_of('pia'), 'image', 3, NULL, '{}', 60, tests.at('1 hour'))),
  NULL, NULL, tests.at('1 hour'));
SELECT is(creditgate.expire_stale_generation_jobs_at(tests.at('23 hours')), 0, 'before the period ends: nothing to do');
SELECT is(tests.credits_of('pia'), 7, 'pia has 7 left of the first allowance');
SELECT is(creditgate.get_credit_balance_at(tests.id_of('pia'), tests.at('1 day 1 hour')), 15,
  'in the next period, the first balance read grants it: 10 + 5 carried; the other 2 expired');
SELECT results_eq($$SELECT granted, remaining, expires_at FROM tests.allowances('pia')$$,
  $$VALUES (10, 0, tests.at('1 day')), (15, 15, tests.at('2 days'))$$,
  'the new lot holds the allowance and the 5 carried; the old one is empty');
SELECT results_eq(
  $$SELECT entry_type, delta FROM public.credit_ledger WHERE user_id = tests.id_of('pia') ORDER BY id DESC LIMIT 2$$,
  $$VALUES ('lot_expiry'::text, -2), ('grant', 10)$$, 'a grant of 10, then the old lot''s 2 expire');
SELECT is((SELECT m.delta FROM public.credit_lot_movements m JOIN public.credit_lots l ON l.id = m.lot_id
           WHERE l.period_start = tests.at('0 s') AND l.user_id = tests.id_of('pia') AND m.ledger_id =
             (SELECT max(id) FROM public.credit_ledger WHERE user_id = tests.id_of('pia') AND entry_type = 'grant')),
  -5, 'the grant''s entry moves the 5 carried out of the old lot');
SELECT is(creditgate.get_credit_balance_at(tests.id_of('pia'), tests.at('1 day 2 hours')), 15, 'a second read grants nothing');
SELECT is(creditgate.expire_stale_generation_jobs_at(tests.at('1 day 2 hours')), 0, 'nor does the sweeper');
SELECT is((SELECT count(*)::integer FROM tests.allowances('pia')), 2, 'one lot per period');

-- The sweeper grants the third period; nothing carried beyond rollover_max.
SELECT creditgate.expire_stale_generation_jobs_at(tests.at('2 days 1 minute'));
SELECT is(tests.credits_of('pia'), 15, 'the sweeper at day 2: 10 + 5 carried, 10 expired');
SELECT results_eq($$SELECT granted, remaining FROM tests.allowances('pia')$$,
  $$VALUES (10, 0), (15, 0), (15, 15)$$, 'three periods, three lots');
SELECT creditgate.expire_stale_generation_jobs_at(tests.at('2 days 2 minutes'));
SELECT is((SELECT count(*)::integer FROM tests.allowances('pia')), 3, 'sweeping again grants nothing');

-- Missed periods: days 3 and 4 pass with no sweep and no call.
SELECT is(creditgate.get_credit_balance_at(tests.id_of('pia'), tests.at('5 days 1 hour')), 10,
  'at day 5 only the current period is granted, with nothing carried (day 4''s was never granted)');
SELECT results_eq($$SELECT period_start, granted, remaining FROM tests.allowances('pia') OFFSET 3$$,
  $$SELECT tests.at('5 days'), 10, 10$$, 'the lot of day 5');

-- -----------------------------------------------------------------------------
-- Changing plan mid-period: the old allowance is revoked, the new granted
-- -----------------------------------------------------------------------------
SELECT creditgate.complete_generation_job_at((SELECT job_id FROM creditgate.charge_credits_at(tests.id_of('pia'), 'image', 4, NULL, '{}', 60, tests.at('5 days 2 hours'))),
  NULL, NULL, tests.at('5 days 2 hours'));
SELECT results_eq(format($$SELECT plan, period_start, granted, new_balance FROM creditgate.subscribe_credit_plan_at(%L, 'weekly', %L, %L)$$,
                         tests.id_of('pia'), tests.at('5 days 3 hours'), tests.at('5 days 3 hours')),
  $$SELECT 'weekly'::text, tests.at('5 days 3 hours'), 50, 50$$,
  'moving to weekly mid-period: the rest of today''s daily allowance (6) is revoked, 50 granted');
SELECT results_eq(
  $$SELECT entry_type, delta FROM public.credit_ledger WHERE user_id = tests.id_of('pia') ORDER BY id DESC LIMIT 2$$,
  $$VALUES ('grant'::text, 50), ('lot_revocation', -6)$$, 'a lot_revocation of 6, then the grant of 50');
SELECT is((SELECT plan FROM public.credit_plan_subscriptions WHERE user_id = tests.id_of('pia')), 'weekly', 'pia is on weekly');
SELECT is(creditgate.expire_stale_generation_jobs_at(tests.at('6 days 1 minute')), 0, 'daily no longer grants');
SELECT is(tests.credits_of('pia'), 50, 'pia has the weekly allowance only');

-- -----------------------------------------------------------------------------
-- Cancelling keeps the current allowance to its period's end
-- -----------------------------------------------------------------------------
SELECT ok(creditgate.cancel_credit_plan_at(tests.id_of('pia'), tests.at('6 days 2 minutes')), 'cancel: true');
SELECT ok(NOT creditgate.cancel_credit_plan_at(tests.id_of('pia'), tests.at('6 days 3 minutes')), 'a second cancel: false');
SELECT is(creditgate.get_credit_balance_at(tests.id_of('pia'), tests.at('12 days 2 hours')), 50,
  'the weekly allowance stays until its period ends');
SELECT is(creditgate.get_credit_balance_at(tests.id_of('pia'), tests.at('12 days 3 hours')), 0,
  'then it expires, and no new period is granted');

-- Subscribing again to the same plan and anchor within the granted period grants nothing again.
SELECT creditgate.subscribe_credit_plan_at(tests.id_of('quin'), 'daily', tests.at('0 s'), tests.at('0 s'));
SELECT creditgate.cancel_credit_plan_at(tests.id_of('quin'), tests.at('1 hour'));
SELECT is((SELECT granted FROM creditgate.subscribe_credit_plan_at(tests.id_of('quin'), 'daily', tests.at('0 s'), tests.at('2 hours'))),
  0, 'cancel and subscribe again in the same period: that period''s allowance is not granted twice');
SELECT is(tests.credits_of('quin'), 10, 'and it was not revoked either');

-- -----------------------------------------------------------------------------
-- Month periods count calendar months from the anchor, in UTC
-- -----------------------------------------------------------------------------
SELECT is(ARRAY[creditgate.period_start('2025-01-31 10:00+00', 'month', 1), creditgate.period_start('2025-01-31 10:00+00', 'month', 2)],
  ARRAY['2025-02-28 10:00+00'::timestamptz, '2025-03-31 10:00+00'], 'Jan 31 + 1 month is Feb 28, + 2 months is Mar 31');
SELECT is(ARRAY[creditgate.period_index('2025-01-31 10:00+00', 'month', '2025-02-28 09:59:59+00'),
                creditgate.period_index('2025-01-31 10:00+00', 'month', '2025-02-28 10:00+00'),
                creditgate.period_index('2025-01-31 10:00+00', 'month', '2026-02-01 00:00+00')], ARRAY[0, 1, 12],
  'the period containing an instant');

-- -----------------------------------------------------------------------------
-- Hostile inputs: stable codes, nothing changed
-- -----------------------------------------------------------------------------
SELECT tests.as_role('service_role');
SELECT * FROM tests.refused($$SELECT public.upsert_credit_plan('p', 10, 'year')$$, '22023', 'a period other than day, week, month');
SELECT * FROM tests.refused($$SELECT public.upsert_credit_plan('p', 0, 'day')$$, '22023', 'an amount of 0');
SELECT * FROM tests.refused($$SELECT public.upsert_credit_plan('p', 10, 'day', -1)$$, '22023', 'a negative rollover');
SELECT * FROM tests.refused($$SELECT public.upsert_credit_plan(repeat('p', 65), 10, 'day')$$, '22023', 'a plan name of 65 characters');
SELECT * FROM tests.refused(format($$SELECT * FROM public.subscribe_credit_plan(%L, 'nope')$$, tests.id_of('quin')), 'PT404',
  'an unknown plan');
SELECT is(tests.error_of(format($$SELECT * FROM public.subscribe_credit_plan(%L, 'nope')$$, tests.id_of('quin'))) ->> 'hint',
  'plan_not_found', 'its code is plan_not_found');
SELECT * FROM tests.refused(format($$SELECT * FROM public.subscribe_credit_plan(%L, 'daily', now() + interval '1 day')$$,
  tests.id_of('quin')), '22023', 'an anchor in the future');
SELECT * FROM tests.refused($$SELECT * FROM public.subscribe_credit_plan(gen_random_uuid(), 'daily')$$, 'PT404', 'an unknown user');
SELECT * FROM tests.refused($$SELECT public.cancel_credit_plan(NULL)$$, '22023', 'cancel without a user');
RESET ROLE;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'verify_credit_ledger() is clean');

SELECT * FROM finish();
ROLLBACK;
