-- Ready to be distributed by user (docs/scaling.md, "Past one database"):
-- 1. from the catalog: every table is classified (per-user: it has a
--    user_id column; or listed below as not per-user, with the reason);
--    every primary key, unique constraint and unique index of a per-user
--    table includes user_id, and every foreign key between two per-user
--    tables carries user_id on both sides, except the keys listed below
--    (each with the reason and what would change under Citus); the list is
--    exact, so fixing one means removing it here;
-- 2. from the rows: each request-path call (charge, charge with limits,
--    complete, refund, grant, balance) on one user writes rows of that user
--    only, with another user's rows all around. What this proves: the
--    writes of these paths, with this data, stay within one user. It does
--    not prove reads never touch another user (plans are not inspected),
--    nor paths not called here (the sweeper is cross-user by design).
BEGIN;
\ir _helpers.psql
SELECT plan(7);

-- Tables that are not per-user, and why.
CREATE TEMP TABLE not_per_user (tbl regclass PRIMARY KEY, reason text NOT NULL);
INSERT INTO not_per_user VALUES
  ('public.users', 'the users themselves: its key id IS the user id (the distribution column under Citus)'),
  ('public.credit_settings', 'one row of global settings: a reference table'),
  ('public.credit_plans', 'the plan catalogue, shared by all users: a reference table'),
  ('public.stripe_events', 'Stripe''s events, keyed by Stripe''s event id, once each across users (user_id only notes whose): stays on the coordinator'),
  ('public.rate_limits', 'limit keys name subjects (users, IPs, API keys), not users: distributed by key if at all'),
  ('creditgate.rate_limit_blocks', 'blocked limit keys, as rate_limits'),
  ('creditgate.token_buckets', 'token buckets per key, as rate_limits'),
  ('creditgate.webhook_queue', 'one row: when a webhook drain last ran (a reference table)'),
  ('public.credit_lot_movements', 'per-user data WITHOUT a user_id column (yet): belongs to its entry''s user; under Citus it gains user_id and composite keys');

-- Keys of per-user tables that do not include user_id (yet), and why.
CREATE TEMP TABLE key_exceptions (tbl regclass, key name, reason text NOT NULL, PRIMARY KEY (tbl, key));
INSERT INTO key_exceptions VALUES
  ('public.generation_jobs', 'generation_jobs_pkey', 'complete_generation_job(p_job_id) finds a job by its id alone; under Citus: (user_id, id), and job-id-only calls route by a user id the caller passes or look it up'),
  ('public.credit_ledger', 'credit_ledger_pkey', 'referenced by credit_lots.grant_entry_id and credit_lot_movements.ledger_id; under Citus: (user_id, id), the references composite'),
  ('public.credit_lots', 'credit_lots_pkey', 'referenced by credit_lot_movements.lot_id and credit_plan_subscriptions.lot_id; under Citus: (user_id, id)');

-- Foreign keys between per-user tables without user_id on both sides (yet).
CREATE TEMP TABLE fk_exceptions (tbl regclass, key name, reason text NOT NULL, PRIMARY KEY (tbl, key));
INSERT INTO fk_exceptions VALUES
  ('public.credit_ledger', 'credit_ledger_job_fk', 'follows generation_jobs_pkey'),
  ('public.credit_lots', 'credit_lots_grant_entry_id_fkey', 'follows credit_ledger_pkey'),
  ('public.credit_plan_subscriptions', 'credit_plan_subscriptions_lot_id_fkey', 'follows credit_lots_pkey');

-- has_user_id: a per-user table (a user_id column, not listed above).
CREATE TEMP VIEW creditgate_tables AS
SELECT c.oid::regclass AS tbl,
       EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)
         AND c.oid NOT IN (SELECT tbl FROM not_per_user) AS has_user_id,
       EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)
         AS user_id_column
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('public', 'creditgate') AND c.relkind IN ('r', 'p');

SELECT is_empty($$SELECT tbl FROM creditgate_tables WHERE NOT user_id_column
                  EXCEPT SELECT tbl FROM not_per_user$$,
  'every table without a user_id column is listed as not per-user, with the reason (a new table must be classified)');

-- Every unique index (primary keys and unique constraints have one) of a per-user table.
CREATE TEMP VIEW keys_without_user AS
SELECT i.indrelid::regclass AS tbl, ic.relname AS key
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN creditgate_tables t ON t.tbl = i.indrelid::regclass
WHERE i.indisunique AND t.has_user_id AND t.tbl <> 'public.users'::regclass
  AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attname = 'user_id'
                  AND a.attnum = ANY (i.indkey::smallint[]));

SELECT set_eq($$SELECT tbl, key FROM keys_without_user$$, $$SELECT tbl, key FROM key_exceptions$$,
  'every primary and unique key of a per-user table includes user_id, except the listed ones (and those still lack it)');

CREATE TEMP VIEW fks_without_user AS
SELECT f.conrelid::regclass AS tbl, f.conname AS key
FROM pg_constraint f
JOIN creditgate_tables src ON src.tbl = f.conrelid::regclass
JOIN creditgate_tables dst ON dst.tbl = f.confrelid::regclass
WHERE f.contype = 'f' AND src.has_user_id AND dst.has_user_id AND dst.tbl <> 'public.users'::regclass
  AND NOT (EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = f.conrelid AND a.attname = 'user_id' AND a.attnum = ANY (f.conkey))
           AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = f.confrelid AND a.attname = 'user_id' AND a.attnum = ANY (f.confkey)));

SELECT set_eq($$SELECT tbl, key FROM fks_without_user$$, $$SELECT tbl, key FROM fk_exceptions$$,
  'every foreign key between per-user tables carries user_id on both sides, except the listed ones');

-- -----------------------------------------------------------------------------
-- The rows: a request-path call on one user writes that user's rows only
-- -----------------------------------------------------------------------------
SELECT tests.create_user('una');
SELECT tests.create_user('otto');
SELECT tests.give('una', 100);
SELECT tests.give('otto', 100);
-- otto's rows all around una's: an open job, lots, events, keys.
SELECT public.grant_credits(tests.id_of('otto'), 5, 'promo', NULL, '{}', now() + interval '1 day', 'promo', 10);
SELECT job_id AS otto_job FROM public.charge_credits(tests.id_of('otto'), 'image', 3, 'otto-1') \gset
SELECT job_id AS una_open FROM public.charge_credits(tests.id_of('una'), 'image', 2, 'una-0') \gset

/** Every row version of a per-user table visible now (table, ctid, xmin, whose). */
CREATE FUNCTION tests.row_versions() RETURNS TABLE (tbl regclass, row_ctid tid, row_xmin text, user_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
  v_table regclass;
BEGIN
  FOR v_table IN SELECT t.tbl FROM creditgate_tables t WHERE t.has_user_id LOOP
    RETURN QUERY EXECUTE format('SELECT %L::regclass, t.ctid, t.xmin::text, t.user_id FROM %s t', v_table, v_table);
  END LOOP;
  RETURN QUERY SELECT 'public.users'::regclass, u.ctid, u.xmin::text, u.id FROM public.users u;
  RETURN QUERY SELECT 'public.credit_lot_movements'::regclass, m.ctid, m.xmin::text, l.user_id
    FROM public.credit_lot_movements m JOIN public.credit_ledger l ON l.id = m.ledger_id;
END;
$$;
CREATE TEMP TABLE before AS SELECT * FROM tests.row_versions();

SELECT tests.as_role('service_role');
SELECT job_id AS una_job FROM public.charge_credits(tests.id_of('una'), 'image', 4, 'una-1') \gset
SELECT allowed FROM public.charge_credits_with_limits(tests.id_of('una'), 'image', 1,
  '[{"key": "user:una", "limit": 10, "window_seconds": 60}, {"key": "ip:10.0.0.1", "limit": 10, "window_seconds": 60}]', 'una-2');
SELECT job_id FROM public.complete_generation_job(:'una_job', 'https://cdn.example/u.png', 3);
SELECT public.refund_credits(tests.id_of('una'), :'una_open', 2, 'failed');
SELECT public.grant_credits(tests.id_of('una'), 7, 'bonus', 'una-grant');
SELECT public.get_credit_balance(tests.id_of('una'));
RESET ROLE;

CREATE TEMP TABLE written AS SELECT * FROM tests.row_versions() EXCEPT SELECT * FROM before;
SELECT cmp_ok((SELECT count(DISTINCT tbl)::integer FROM written), '>=', 5,
  'the calls wrote rows in several per-user tables (jobs, ledger, lots, movements, keys, users)');
SELECT is((SELECT array_agg(DISTINCT user_id) FROM written), ARRAY[tests.id_of('una')],
  'every row the request-path calls on una wrote is una''s');
SELECT is((SELECT count(*)::integer FROM written WHERE user_id = tests.id_of('otto')), 0,
  'none of otto''s rows changed (his open job, lots, keys and balance untouched)');
SELECT is((SELECT status FROM public.generation_jobs WHERE id = :'otto_job'), 'pending', '(otto''s job still open)');

SELECT * FROM finish();
ROLLBACK;
