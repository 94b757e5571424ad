-- The ledger: append-only with loud errors (even for the superuser), ids
-- that increase with each change, timestamps from the clock, balance_after
-- chaining; and verify_credit_ledger() finds each kind of inconsistency.
BEGIN;
\ir _helpers.psql
SELECT plan(26);

SELECT tests.create_user('alice'), tests.create_user('bob');
SELECT tests.give('alice', 100), tests.give('bob', 100);
SELECT job_id AS done_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 30, NULL, '{}', 900, now()) \gset
SELECT creditgate.complete_generation_job_at(:'done_job', NULL, 20, now());
SELECT job_id AS refunded_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 15, NULL, '{}', 900, now()) \gset
SELECT creditgate.refund_credits_at(tests.id_of('alice'), :'refunded_job', 15, 'failed', now());
SELECT job_id AS open_job FROM creditgate.charge_credits_at(tests.id_of('alice'), 'image', 5, NULL, '{}', 900, now()) \gset
SELECT creditgate.charge_credits_at(tests.id_of('bob'), 'image', 40, NULL, '{}', 900, now());

-- -----------------------------------------------------------------------------
-- Append-only, loudly, for everyone (here: the superuser)
-- -----------------------------------------------------------------------------
SELECT * FROM tests.refused($$UPDATE public.credit_ledger SET delta = delta + 1$$, '23001',
  'UPDATE on the ledger raises an error (the seed''s rule did nothing, silently)');
SELECT throws_like($$DELETE FROM public.credit_ledger$$, '%append-only: DELETE is not allowed%',
  'DELETE raises "credit_ledger is append-only"');
SELECT * FROM tests.refused($$DELETE FROM public.credit_ledger$$, '23001', 'DELETE is refused');
-- Lots and their movements reference the ledger: a plain TRUNCATE stops at
-- their foreign keys (0A000), one with CASCADE at the append-only trigger.
SELECT * FROM tests.refused($$TRUNCATE public.credit_ledger$$, '0A000', 'TRUNCATE is refused (the seed''s rules did not stop it)');
SELECT * FROM tests.refused($$TRUNCATE public.credit_ledger CASCADE$$, '23001', 'TRUNCATE ... CASCADE is refused by the append-only trigger');
SELECT * FROM tests.refused($$TRUNCATE public.users CASCADE$$, '23001', 'and so is a TRUNCATE reaching it by CASCADE');
SELECT * FROM tests.refused(format($$DELETE FROM public.users WHERE id = %L$$, tests.id_of('bob')), '23503',
  'deleting a users row with history is refused: the ledger keeps its subject');

-- -----------------------------------------------------------------------------
-- Order, chain, clock
-- -----------------------------------------------------------------------------
SELECT results_eq(
  format($$SELECT entry_type, delta, balance_after FROM public.credit_ledger WHERE user_id = %L ORDER BY id$$, tests.id_of('alice')),
  $$VALUES ('grant'::text, 100, 100), ('charge'::text, -30, 70), ('completion'::text, 10, 80),
           ('charge'::text, -15, 65), ('refund'::text, 15, 80), ('charge'::text, -5, 75)$$,
  'one row per balance change, in order, balance_after chaining by id');
SELECT is((SELECT sum(delta)::integer FROM public.credit_ledger WHERE user_id = tests.id_of('alice')), tests.credits_of('alice'),
  'the sum of alice''s deltas is her balance');
SELECT ok((SELECT bool_and(created_at > previous) FROM (
    SELECT created_at, lag(created_at) OVER (ORDER BY id) AS previous FROM public.credit_ledger
    WHERE user_id IN (tests.id_of('alice'), tests.id_of('bob'))) l WHERE previous IS NOT NULL),
  'within one transaction every row has a later timestamp than the one before (the clock, not transaction start)');
SELECT ok((SELECT min(created_at) > now() FROM public.credit_ledger WHERE user_id IN (tests.id_of('alice'), tests.id_of('bob'))),
  'and all are later than the transaction''s start');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'verify_credit_ledger() finds nothing wrong');

-- -----------------------------------------------------------------------------
-- verify_credit_ledger() finds what is wrong. Each fault is made with the
-- triggers off (session_replication_role = replica, superuser only) inside a
-- savepoint, checked, and rolled back.
-- -----------------------------------------------------------------------------
SAVEPOINT fault;
SET LOCAL session_replication_role = replica;
UPDATE public.users SET credits = credits + 5 WHERE id = tests.id_of('alice');
SELECT results_eq($$SELECT user_id, problem, details FROM public.verify_credit_ledger()$$,
  format($$VALUES (%L::uuid, 'balance_mismatch'::text, '{"balance": 80, "ledger_sum": 75}'::jsonb),
                  (%L::uuid, 'lots_mismatch'::text, '{"balance": 80, "lots_remaining": 75}'::jsonb)$$,
    tests.id_of('alice'), tests.id_of('alice')),
  'a balance changed behind the ledger''s back: balance_mismatch, and lots_mismatch (the lots hold 75)');
ROLLBACK TO SAVEPOINT fault;

SET LOCAL session_replication_role = replica;
UPDATE public.credit_ledger SET balance_after = balance_after + 1
WHERE id = (SELECT id FROM public.credit_ledger WHERE user_id = tests.id_of('alice') AND entry_type = 'completion');
SELECT results_eq($$SELECT problem, count(*)::integer FROM public.verify_credit_ledger() GROUP BY problem$$,
  $$VALUES ('chain_broken'::text, 2)$$,
  'a wrong balance_after: chain_broken, at that row and the next');
ROLLBACK TO SAVEPOINT fault;

SET LOCAL session_replication_role = replica;
UPDATE public.generation_jobs SET status = 'pending', completed_at = NULL, captured_credits = NULL, refunded_credits = NULL
WHERE id = :'refunded_job';
SELECT results_eq($$SELECT problem, details ->> 'job_id' FROM public.verify_credit_ledger() WHERE problem = 'job_settled_twice'$$,
  format($$VALUES ('job_settled_twice'::text, %L::text)$$, :'refunded_job'),
  'a refunded job reopened (it could be refunded again): job_settled_twice');
ROLLBACK TO SAVEPOINT fault;

SET LOCAL session_replication_role = replica;
SELECT throws_ok(format($$INSERT INTO public.credit_ledger (user_id, delta, balance_after, operation_type, entry_type, job_id)
  VALUES (%L, 15, 95, 'refund', 'refund', %L)$$, tests.id_of('alice'), :'refunded_job'), '23505', NULL,
  'a second settlement entry for a job is refused by a unique index, even with triggers off');
ROLLBACK TO SAVEPOINT fault;

SET LOCAL session_replication_role = replica;
UPDATE public.generation_jobs SET captured_credits = 30 WHERE id = :'done_job';
SELECT results_eq($$SELECT problem, details ->> 'job_id' FROM public.verify_credit_ledger()$$,
  format($$VALUES ('job_ledger_mismatch'::text, %L::text)$$, :'done_job'),
  'a job whose ledger entries do not add up to what it kept: job_ledger_mismatch');
ROLLBACK TO SAVEPOINT fault;

SET LOCAL session_replication_role = replica;
UPDATE public.credit_ledger SET created_at = created_at - interval '1 hour'
WHERE id = (SELECT max(id) FROM public.credit_ledger WHERE user_id = tests.id_of('alice'));
SELECT results_eq($$SELECT problem FROM public.verify_credit_ledger()$$, $$VALUES ('out_of_order'::text)$$,
  'a later row with an earlier timestamp: out_of_order');
ROLLBACK TO SAVEPOINT fault;

SET LOCAL session_replication_role = replica;
DELETE FROM public.credit_ledger WHERE job_id = :'open_job';
SELECT results_eq($$SELECT problem FROM public.verify_credit_ledger() ORDER BY problem$$,
  $$VALUES ('balance_mismatch'::text)$$,
  'a deleted ledger row: balance_mismatch');
ROLLBACK TO SAVEPOINT fault;
RELEASE SAVEPOINT fault;

SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'with every fault rolled back, the ledger is sound again');

SELECT * FROM finish();
ROLLBACK;
