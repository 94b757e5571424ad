-- Settlement: a job is settled exactly once, by complete (capture, maybe
-- returning the unused part) or refund (void: exactly the hold, only the
-- owner's job). A second settlement is PT409 job_already_settled and changes
-- nothing.
BEGIN;
\ir _helpers.psql
SELECT plan(50);

SELECT tests.create_user('alice'), tests.create_user('bob');
SELECT tests.give('alice', 100), tests.give('bob', 100);
SELECT tests.as_role('service_role');

-- -----------------------------------------------------------------------------
-- Complete (capture)
-- -----------------------------------------------------------------------------
SELECT job_id AS full_job FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 30) \gset
SELECT results_eq(
  format($$SELECT * FROM public.complete_generation_job(%L, 'https://cdn.example/cat.png')$$, :'full_job'),
  format($$VALUES (%L::uuid, 'completed'::text, 70, 0)$$, :'full_job'),
  'completing a job keeps the whole hold by default');
SELECT results_eq(
  format($$SELECT status, captured_credits, refunded_credits, result_url, completed_at IS NOT NULL
           FROM public.generation_jobs WHERE id = %L$$, :'full_job'),
  $$VALUES ('completed'::text, 30, 0, 'https://cdn.example/cat.png'::text, true)$$,
  'the job is completed, with its result and what it kept');
SELECT is(tests.ledger_rows_of('alice'), 2::bigint, 'a full capture changes no balance, so it adds no ledger row');

SELECT job_id AS partial_job FROM public.atomic_charge_credits(tests.id_of('alice'), 'llm', 40) \gset
SELECT results_eq(
  format($$SELECT * FROM public.complete_generation_job(%L, NULL, 25)$$, :'partial_job'),
  format($$VALUES (%L::uuid, 'completed'::text, 45, 15)$$, :'partial_job'),
  'an actual cost below the hold returns the remainder in the same call');
SELECT results_eq(
  format($$SELECT delta, balance_after, entry_type, job_id FROM public.credit_ledger
           WHERE job_id = %L ORDER BY id$$, :'partial_job'),
  format($$VALUES (-40, 30, 'charge'::text, %L::uuid), (15, 45, 'completion'::text, %L::uuid)$$, :'partial_job', :'partial_job'),
  'the ledger shows the hold and the returned 15');

SELECT job_id AS zero_job FROM public.atomic_charge_credits(tests.id_of('alice'), 'llm', 5) \gset
SELECT results_eq(format($$SELECT new_balance, refunded FROM public.complete_generation_job(%L, NULL, 0)$$, :'zero_job'),
  $$VALUES (45, 5)$$, 'an actual cost of 0 returns the whole hold');

SELECT job_id AS bounded_job FROM public.atomic_charge_credits(tests.id_of('alice'), 'llm', 10) \gset
SELECT * FROM tests.refused(format($$SELECT * FROM public.complete_generation_job(%L, NULL, 11)$$, :'bounded_job'),
  '22023', 'an actual cost above the hold is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.complete_generation_job(%L, NULL, -1)$$, :'bounded_job'),
  '22023', 'a negative actual cost is refused');
SELECT * FROM tests.refused(format($$SELECT * FROM public.complete_generation_job(%L, %L)$$, :'bounded_job', 'https://' || repeat('u', 2041)),
  '22023', 'a result URL of 2049 characters is refused');
SELECT results_eq(format($$SELECT new_balance, refunded FROM public.complete_generation_job(%L, %L, 10)$$, :'bounded_job', 'https://' || repeat('u', 2040)),
  $$VALUES (35, 0)$$, 'a result URL of 2048 characters and an actual cost equal to the hold are accepted');

SELECT * FROM tests.refused(format($$SELECT * FROM public.complete_generation_job(%L)$$, :'full_job'),
  'PT409', 'completing a job twice is refused');
SELECT is(tests.error_of(format($$SELECT * FROM public.complete_generation_job(%L)$$, :'full_job')),
  jsonb_build_object('code', 'PT409', 'message', 'Job already settled', 'hint', 'job_already_settled',
    'details', jsonb_build_object('job_id', :'full_job', 'status', 'completed')),
  'with the code job_already_settled and the job''s status');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 30, 'late')$$, tests.id_of('alice'), :'full_job'),
  'PT409', 'refunding a completed job is refused');
SELECT * FROM tests.refused($$SELECT * FROM public.complete_generation_job('00000000-0000-4000-8000-000000000000')$$,
  'PT404', 'completing an unknown job is refused with PT404');
SELECT is(tests.error_of($$SELECT * FROM public.complete_generation_job('00000000-0000-4000-8000-000000000000')$$) ->> 'hint',
  'job_not_found', 'with the code job_not_found');

-- -----------------------------------------------------------------------------
-- Refund (void)
-- -----------------------------------------------------------------------------
SELECT job_id AS refund_job FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 20) \gset
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 21, 'x')$$, tests.id_of('alice'), :'refund_job'),
  '22023', 'a refund above the held amount is refused (the seed paid it)');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 19, 'x')$$, tests.id_of('alice'), :'refund_job'),
  '22023', 'a refund below the held amount is refused');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, -20, 'x')$$, tests.id_of('alice'), :'refund_job'),
  '22023', 'a negative refund is refused (the seed took credits with it)');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 0, 'x')$$, tests.id_of('alice'), :'refund_job'),
  '22023', 'a refund of 0 is refused');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 20, 'x')$$, tests.id_of('bob'), :'refund_job'),
  'PT404', 'bob cannot refund alice''s job (the seed let any user id through)');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 20, %L)$$, tests.id_of('alice'), :'refund_job', repeat('r', 501)),
  '22023', 'a reason of 501 characters is refused');

SELECT is(public.refund_credits(tests.id_of('alice'), :'refund_job', 20, repeat('r', 500)), 35,
  'a refund of exactly the hold, with a reason of 500 characters, returns it');
SELECT results_eq(
  format($$SELECT status, captured_credits, refunded_credits, left(error_message, 11) FROM public.generation_jobs WHERE id = %L$$, :'refund_job'),
  $$VALUES ('failed'::text, 0, 20, 'Refunded: r'::text)$$,
  'the job is failed (the seed''s status), nothing captured, 20 returned');
SELECT results_eq(
  format($$SELECT delta, balance_after, operation_type, entry_type FROM public.credit_ledger WHERE job_id = %L AND delta > 0$$, :'refund_job'),
  $$VALUES (20, 35, 'image'::text, 'refund'::text)$$,
  'the ledger records the refund, under the job''s operation');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, 20, 'again')$$, tests.id_of('alice'), :'refund_job'),
  'PT409', 'a second refund is refused (the seed paid it again)');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, %L, NULL, 'again')$$, tests.id_of('alice'), :'refund_job'),
  'PT409', 'also with a NULL amount');
SELECT * FROM tests.refused(format($$SELECT * FROM public.complete_generation_job(%L)$$, :'refund_job'),
  'PT409', 'completing a refunded job is refused');

SELECT job_id AS null_amount_job FROM public.atomic_charge_credits(tests.id_of('alice'), 'image', 7) \gset
SELECT is(public.refund_credits(tests.id_of('alice'), :'null_amount_job', NULL, NULL), 35,
  'a refund with a NULL amount returns the whole hold');
SELECT * FROM tests.refused(format($$SELECT public.refund_credits(%L, '00000000-0000-4000-8000-000000000000', 1, 'x')$$, tests.id_of('alice')),
  'PT404', 'refunding an unknown job is refused');
SELECT * FROM tests.refused($$SELECT public.refund_credits('00000000-0000-4000-8000-000000000000', '00000000-0000-4000-8000-000000000000', 1, 'x')$$,
  'PT404', 'refunding for an unknown user is refused');
RESET ROLE;

SELECT is(tests.credits_of('alice'), 35, 'alice: 100 - 30 - 25 - 0 - 10 (captured) = 35, every refund returned exactly once');
SELECT is(tests.credits_of('bob'), 100, 'bob''s balance never moved');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger()$$, 'the ledger reconciles: no job settled twice');

SELECT * FROM finish();
ROLLBACK;
