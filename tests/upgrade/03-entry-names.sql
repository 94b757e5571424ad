-- Stored names on a database that an earlier version of these migrations had
-- migrated: its ledger called a completion's entry 'capture' and wrote each
-- settlement entry's type (refund, expiry, capture) in operation_type; its
-- job status list allowed the seed's 'processing'. That state is rebuilt here
-- on the upgraded legacy database (the append-only trigger disabled for the
-- rebuild, as that version wrote those rows), then the schema migration runs
-- again over it, inside the test's transaction.
BEGIN;
\ir ../../supabase/tests/database/_helpers.psql
SELECT plan(15);

SELECT tests.create_user('dora');
SELECT tests.give('dora', 100);
SELECT tests.as_role('service_role');
SELECT job_id AS done_job FROM public.charge_credits(tests.id_of('dora'), 'image', 30) \gset
SELECT job_id AS refunded_job FROM public.charge_credits(tests.id_of('dora'), 'text', 20) \gset
RESET ROLE;
SELECT job_id AS expired_job FROM creditgate.charge_credits_at(tests.id_of('dora'), 'video', 10, NULL, '{}', 60,
  clock_timestamp() - interval '1 hour') \gset
SELECT tests.as_role('service_role');
SELECT public.complete_generation_job(:'done_job', NULL, 25);
SELECT public.refund_credits(tests.id_of('dora'), :'refunded_job', NULL, 'r');
SELECT public.get_credit_balance(tests.id_of('dora'));
RESET ROLE;
SELECT md5(string_agg(l.id || ':' || l.delta || ':' || l.balance_after || ':' || l.job_id, ',' ORDER BY l.id)) AS chain_before
FROM public.credit_ledger l WHERE l.user_id = tests.id_of('dora') \gset

-- -----------------------------------------------------------------------------
-- The earlier version's state
-- -----------------------------------------------------------------------------
ALTER TABLE public.credit_ledger
  DROP CONSTRAINT credit_ledger_entry_type_in_list,
  DROP CONSTRAINT credit_ledger_job_entry_names_a_job;
DROP INDEX public.credit_ledger_one_settlement_per_job;
ALTER TABLE public.credit_ledger DISABLE TRIGGER credit_ledger_append_only;
UPDATE public.credit_ledger SET entry_type = 'capture' WHERE entry_type = 'completion';
UPDATE public.credit_ledger SET operation_type = entry_type WHERE entry_type IN ('refund', 'expiry', 'capture');
ALTER TABLE public.credit_ledger ENABLE TRIGGER credit_ledger_append_only;
ALTER TABLE public.credit_ledger
  ADD CONSTRAINT credit_ledger_entry_type_known CHECK (entry_type IN ('charge', 'refund', 'expiry', 'capture', 'grant',
    'opening_balance', 'account_closure', 'legacy')),
  ADD CONSTRAINT credit_ledger_job_entries_name_a_job
    CHECK ((job_id IS NOT NULL) = (entry_type IN ('charge', 'refund', 'expiry', 'capture')));
CREATE UNIQUE INDEX credit_ledger_one_settlement_per_job
  ON public.credit_ledger (job_id) WHERE entry_type IN ('refund', 'expiry', 'capture');
ALTER TABLE public.generation_jobs
  DROP CONSTRAINT generation_jobs_status_listed,
  DROP CONSTRAINT generation_jobs_settled_when_not_pending,
  ADD CONSTRAINT generation_jobs_status_known CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'expired')),
  ADD CONSTRAINT generation_jobs_settled_once CHECK ((status IN ('pending', 'processing')) = (completed_at IS NULL));
DROP INDEX public.generation_jobs_open_user_expiry;
CREATE INDEX generation_jobs_open_user_expiry ON public.generation_jobs (user_id, expires_at)
  WHERE status IN ('pending', 'processing');
SELECT results_eq(
  format($$SELECT entry_type, operation_type FROM public.credit_ledger WHERE user_id = %L AND delta > 0 AND job_id IS NOT NULL ORDER BY id$$,
    tests.id_of('dora')),
  $$VALUES ('expiry'::text, 'expiry'::text), ('capture', 'capture'), ('refund', 'refund')$$,
  'the earlier version''s rows: capture, and the entry type as operation_type');

-- The migrations run again.
\o /dev/null
\ir ../../supabase/migrations/20250601000100_creditgate_schema.sql
\o

SELECT results_eq(
  format($$SELECT entry_type, operation_type FROM public.credit_ledger WHERE user_id = %L AND delta > 0 AND job_id IS NOT NULL ORDER BY id$$,
    tests.id_of('dora')),
  $$VALUES ('expiry'::text, 'video'::text), ('completion', 'image'), ('refund', 'text')$$,
  'capture became completion, and each settlement entry names its job''s operation');
SELECT is((SELECT md5(string_agg(l.id || ':' || l.delta || ':' || l.balance_after || ':' || l.job_id, ',' ORDER BY l.id))
           FROM public.credit_ledger l WHERE l.user_id = tests.id_of('dora')), :'chain_before',
  'no ledger row was added, removed or moved: ids, deltas, balances and jobs unchanged');
SELECT is((SELECT count(*)::integer FROM public.credit_ledger WHERE entry_type = 'capture'), 0, 'no capture entry is left');
SELECT is((SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'credit_ledger_append_only'), 'O',
  'the append-only trigger is enabled again');
SELECT throws_ok(format($$UPDATE public.credit_ledger SET description = 'x' WHERE user_id = %L$$, tests.id_of('dora')),
  '23001', NULL, 'and the ledger refuses UPDATE again');
SELECT ok(pg_get_indexdef('public.credit_ledger_one_settlement_per_job'::regclass) LIKE '%completion%',
  'one settlement per job: the unique index names completion');
SELECT is((SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint
           WHERE conrelid = 'public.credit_ledger'::regclass AND conname IN ('credit_ledger_entry_type_known',
             'credit_ledger_job_entries_name_a_job', 'credit_ledger_entry_type_listed', 'credit_ledger_entry_type_in_list',
             'credit_ledger_job_entry_names_a_job')
             AND convalidated),
  'credit_ledger_entry_type_in_list,credit_ledger_job_entry_names_a_job', 'the entry type checks are replaced, validated');
SELECT is((SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint
           WHERE conrelid = 'public.generation_jobs'::regclass AND conname LIKE 'generation_jobs_s%' AND convalidated),
  'generation_jobs_settled_when_not_pending,generation_jobs_status_listed', 'the job status checks are replaced, validated');
SELECT ok(pg_get_indexdef('public.generation_jobs_open_user_expiry'::regclass) NOT LIKE '%processing%',
  'the open-holds index no longer names processing');
SELECT throws_ok(format($$UPDATE public.generation_jobs SET status = 'processing', completed_at = NULL WHERE id = %L$$, :'done_job'),
  '23514', NULL, 'the status processing is refused');
SELECT is((SELECT count(*)::integer FROM public.generation_jobs WHERE status = 'processing'), 0, 'no job has it');

-- And again: nothing changes.
SELECT md5(string_agg(l::text, ',' ORDER BY l.id)) AS rows_before FROM public.credit_ledger l \gset
\o /dev/null
\ir ../../supabase/migrations/20250601000100_creditgate_schema.sql
\o
SELECT is((SELECT md5(string_agg(l::text, ',' ORDER BY l.id)) FROM public.credit_ledger l), :'rows_before',
  'a further run changes no ledger row');

SELECT tests.as_role('service_role');
SELECT job_id AS later_job FROM public.charge_credits(tests.id_of('dora'), 'image', 5) \gset
SELECT is((SELECT refunded FROM public.complete_generation_job(:'later_job', NULL, 1)), 4, 'completing after the upgrade works');
RESET ROLE;
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles');

SELECT * FROM finish();
ROLLBACK;
