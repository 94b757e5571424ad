-- =============================================================================
-- bench/growth_fill.sql: a creditgate database after a long life, for the
-- growth benchmark. psql variables :users (bench users, already granted a
-- billion credits each, and some history, by bench/harness_creditgate.sql), :rows (ledger rows,
-- a multiple of :users), :keys (rate-limit keys) and :lots (lots, a
-- multiple of :users).
--
-- Each user gets :rows / :users charges of one credit, completed, each with
-- its job, its ledger row (balance_after chained) and its idempotency key,
-- and the balance that results: verify_credit_ledger() stays empty. The
-- rate-limit keys hold a count in the current hour, so none is expired.
-- Written directly (one INSERT per table), not through the functions: a
-- million calls would take longer than the whole bench.
-- =============================================================================

-- The data is consistent by construction: skip the foreign-key triggers.
SET session_replication_role = replica;

INSERT INTO public.generation_jobs
  (id, user_id, operation_type, status, cost, idempotency_key, metadata,
   created_at, completed_at, expires_at, captured_credits, refunded_credits)
SELECT md5('growth-job:' || g)::uuid, bench.user_id(1 + g % :users), 'image', 'completed', 1,
       'growth-' || g, '{}'::jsonb,
       t, t + interval '5 seconds', t + interval '15 minutes', 1, 0
FROM generate_series(0, :rows - 1) g,
     LATERAL (SELECT now() - interval '40 days' + g * interval '3 seconds') AS x(t);

-- Each charge drew its credit from the user's first lot in spending order
-- (one movement per charge, as creditgate.draw_lots records it).
CREATE TEMP TABLE growth_first_lot AS
SELECT DISTINCT ON (l.user_id) l.user_id, l.id AS lot_id
FROM public.credit_lots l WHERE l.spendable
ORDER BY l.user_id, l.priority, l.expires_at, l.created_at, l.id;

WITH entries AS (
  INSERT INTO public.credit_ledger
    (user_id, delta, balance_after, operation_type, description, metadata, job_id, entry_type)
  SELECT u.id, -1, u.credits - (g / :users + 1), 'image', 'image generation',
         jsonb_build_object('job_id', md5('growth-job:' || g)::uuid, 'idempotency_key', 'growth-' || g),
         md5('growth-job:' || g)::uuid, 'charge'
  FROM generate_series(0, :rows - 1) g
  JOIN public.users u ON u.id = bench.user_id(1 + g % :users)
  ORDER BY g
  RETURNING id, user_id)
INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta)
SELECT e.id, f.lot_id, -1 FROM entries e JOIN growth_first_lot f ON f.user_id = e.user_id ORDER BY e.id;

UPDATE public.credit_lots l SET remaining = l.remaining - (:rows / :users)
FROM growth_first_lot f WHERE l.id = f.lot_id;

INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
SELECT u.id, 'growth-' || g, 'charge', 'completed', md5('growth-request'),
       jsonb_build_object('job_id', md5('growth-job:' || g)::uuid, 'new_balance', u.credits - (g / :users + 1)),
       md5('growth-job:' || g)::uuid
FROM generate_series(0, :rows - 1) g
JOIN public.users u ON u.id = bench.user_id(1 + g % :users);

UPDATE public.users u SET credits = u.credits - (:rows / :users)
WHERE u.id IN (SELECT bench.user_id(g) FROM generate_series(1, :users) g);

-- :lots more lots, :lots / :users per user, each of one credit, granted
-- by one ledger entry per user (the user's last), last in spending order
-- (priority 100) and expiring within the year: a user with a long history
-- of small grants still unspent.
WITH grants AS (
  INSERT INTO public.credit_ledger
    (user_id, delta, balance_after, operation_type, description, metadata, entry_type)
  SELECT u.id, :lots / :users, u.credits + :lots / :users, 'grant', 'growth lots', '{}'::jsonb, 'grant'
  FROM public.users u WHERE u.id IN (SELECT bench.user_id(g) FROM generate_series(1, :users) g)
  ORDER BY u.id
  RETURNING id, user_id)
INSERT INTO public.credit_lots
  (user_id, category, priority, granted, remaining, expires_at, reason, grant_entry_id, created_at)
SELECT e.user_id, 'promo', 100, 1, 1, now() + interval '200 days' + n * interval '1 hour', 'growth lots', e.id, now()
FROM grants e, generate_series(1, :lots / :users) n;

UPDATE public.users u SET credits = u.credits + :lots / :users
WHERE u.id IN (SELECT bench.user_id(g) FROM generate_series(1, :users) g);

-- Keys of a 100-per-hour policy, each with 3 requests in the current bucket
-- (an hour is 20 buckets of 180 000 ms).
INSERT INTO public.rate_limits (key, max_requests, window_seconds, bucket_ids, bucket_costs, expires_at)
SELECT 'user:growth-' || g, 100, 3600,
       ARRAY[floor(extract(epoch FROM now()) * 1000)::bigint / 180000], ARRAY[3],
       now() + interval '2 hours'
FROM generate_series(1, :keys) g;

RESET session_replication_role;
