-- Row-level security: a user reads their own balance, jobs and ledger and
-- nothing of anyone else's, as alice, as bob, as anon and as service_role;
-- even a permissive legacy policy cannot widen it.
BEGIN;
\ir _helpers.psql
SELECT plan(19);

SELECT tests.create_user('alice'), tests.create_user('bob');
SELECT tests.give('alice', 100), tests.give('bob', 200);
SELECT job_id AS alice_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 10, NULL, '{}', 900, now()) \gset
SELECT job_id AS bob_job FROM creditgate.charge_credits_at(tests.id_of('bob'), 'video', 20, NULL, '{}', 900, now()) \gset

SELECT tests.as_user('alice');
SELECT results_eq($$SELECT id, credits FROM public.users$$, format($$VALUES (%L::uuid, 90)$$, tests.id_of('alice')),
  'alice reads her own balance, and no other');
SELECT results_eq($$SELECT id FROM public.generation_jobs$$, format($$VALUES (%L::uuid)$$, :'alice_job'),
  'alice reads her own job, and no other');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger), 2, 'alice reads her two ledger rows');
SELECT is_empty($$SELECT FROM public.credit_ledger WHERE user_id <> auth.uid()$$, 'and none of anyone else''s');
SELECT is_empty(format($$SELECT FROM public.generation_jobs WHERE id = %L$$, :'bob_job'), 'asking for bob''s job by id returns nothing');
RESET ROLE;

SELECT tests.as_user('bob');
SELECT results_eq($$SELECT id, credits FROM public.users$$, format($$VALUES (%L::uuid, 180)$$, tests.id_of('bob')),
  'bob reads his own balance, and no other');
SELECT results_eq($$SELECT id FROM public.generation_jobs$$, format($$VALUES (%L::uuid)$$, :'bob_job'),
  'bob reads his own job, and no other');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id = tests.id_of('alice')), 0,
  'bob reads none of alice''s ledger rows');
SELECT * FROM tests.refused(format($$UPDATE public.generation_jobs SET status = 'failed' WHERE id = %L$$, :'bob_job'),
  '42501', 'bob cannot change his own job');
RESET ROLE;

-- An authenticated request whose JWT names no user sees nothing.
SELECT set_config('request.jwt.claims', '{"role": "authenticated"}', true), set_config('role', 'authenticated', true);
SELECT is((SELECT count(*)::integer FROM public.users) + (SELECT count(*)::integer FROM public.generation_jobs)
  + (SELECT count(*)::integer FROM public.credit_ledger), 0, 'authenticated without a user id reads nothing');
RESET ROLE;

SELECT tests.as_role('anon');
SELECT * FROM tests.refused($$SELECT FROM public.generation_jobs$$, '42501', 'anon cannot read jobs');
SELECT * FROM tests.refused($$SELECT FROM public.credit_ledger$$, '42501', 'anon cannot read the ledger');
RESET ROLE;

SELECT tests.as_role('service_role');
SELECT is((SELECT count(*)::integer FROM public.users WHERE id IN (tests.id_of('alice'), tests.id_of('bob'))), 2,
  'service_role reads every balance');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE user_id IN (tests.id_of('alice'), tests.id_of('bob'))), 4,
  'and the whole ledger');
RESET ROLE;

-- A legacy permissive policy (say, a public profiles table) cannot widen it.
CREATE POLICY legacy_everyone_reads_users ON public.users FOR SELECT USING (true);
CREATE POLICY legacy_everyone_reads_ledger ON public.credit_ledger FOR SELECT USING (true);
SELECT tests.as_user('alice');
SELECT results_eq($$SELECT id FROM public.users$$, format($$VALUES (%L::uuid)$$, tests.id_of('alice')),
  'with a USING (true) policy on users, alice still reads only her own row');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger), 2, 'and only her own ledger rows');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
