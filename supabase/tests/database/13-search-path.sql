-- search_path hardening: every SECURITY DEFINER function runs with
-- `search_path = pg_catalog, pg_temp` (the PostgreSQL docs' advice: the
-- temporary schema searched last). With `search_path = ''` the session's
-- pg_temp is searched FIRST for types and tables, so a caller could shadow
-- `uuid` with a temporary domain of its own.
BEGIN;
\ir _helpers.psql
SELECT plan(6);

SELECT tests.create_user('alice');
SELECT tests.give('alice', 42);

-- The catalog sweep: no SECURITY DEFINER function of public or creditgate
-- without exactly that setting.
SELECT is_empty(
  $$SELECT p.oid::regprocedure::text, p.proconfig::text FROM pg_proc p
    WHERE p.prosecdef AND p.pronamespace IN ('public'::regnamespace, 'creditgate'::regnamespace)
      AND p.proconfig IS DISTINCT FROM ARRAY['search_path=pg_catalog, pg_temp']$$,
  'every SECURITY DEFINER function of public and creditgate has search_path = pg_catalog, pg_temp, and nothing else');
SELECT cmp_ok((SELECT count(*)::integer FROM pg_proc p
               WHERE p.prosecdef AND p.pronamespace IN ('public'::regnamespace, 'creditgate'::regnamespace)), '>', 50,
  '(the sweep saw the creditgate functions)');

-- A signed-in user shadows uuid in its own pg_temp. (The test helpers are
-- not hardened: they are used only before the domain exists or after it is dropped.)
SELECT tests.id_of('alice') AS alice_id \gset
SELECT tests.as_user('alice');
CREATE DOMAIN pg_temp.uuid AS text;
SELECT ok(to_regtype('pg_temp.uuid') IS NOT NULL, 'authenticated created the domain pg_temp.uuid');
SELECT is(get_my_credit_balance(), 42, 'get_my_credit_balance() still answers the right balance with pg_temp.uuid in place');
SET LOCAL ROLE service_role;
SELECT is((SELECT new_balance FROM public.charge_credits(:'alice_id', 'image', 2)), 40,
  'a charge (as service_role) works with pg_temp.uuid in place');
RESET ROLE;
DROP DOMAIN pg_temp.uuid;
SELECT is(tests.credits_of('alice'), 40, '(the charge took exactly 2 credits)');

SELECT * FROM finish();
ROLLBACK;
