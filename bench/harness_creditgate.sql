-- =============================================================================
-- bench/harness_creditgate.sql: bench users in a creditgate database (after
-- the migrations and bench/harness_common.sql). psql variable :users.
-- Each user gets a billion credits through grant_credits (so the ledger
-- explains every balance), far more than any run spends, in three lots of
-- different priority and expiry, as a user with a promotion, a plan
-- allowance and a purchase has: a charge spends from the lots in order.
-- =============================================================================
INSERT INTO auth.users (id, email, aud, role)
SELECT bench.user_id(g), 'bench-' || g || '@bench.local', 'authenticated', 'authenticated'
FROM generate_series(1, :users) g;

SELECT count(public.grant_credits(bench.user_id(g), 400000000, 'bench promotion', NULL, '{}',
         now() + interval '30 days', 'promo', 10)),
       count(public.grant_credits(bench.user_id(g), 300000000, 'bench allowance', NULL, '{}',
         now() + interval '90 days', 'allowance', 30)),
       count(public.grant_credits(bench.user_id(g), 300000000, 'bench purchase', NULL, '{}',
         NULL, 'paid', 50))
FROM generate_series(1, :users) g;

/**
 * Replaces bench.jobs with p_count open jobs (holds of one credit, a day
 * long so none expires during the bench) spread over the first p_users users.
 */
CREATE OR REPLACE FUNCTION bench.make_jobs(p_count integer, p_users integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE bench.jobs;
  PERFORM setval('bench.jobs_next', 1, false);
  INSERT INTO bench.jobs (n, user_id, job_id)
  SELECT g, bench.user_id(1 + g % p_users),
         (SELECT c.job_id FROM public.charge_credits(bench.user_id(1 + g % p_users), 'image', 1, NULL, '{}', 86400) c)
  FROM generate_series(1, p_count) g;
END;
$$;

-- History, so the bench measures a database in use, not one just created:
-- with empty tables, each pgbench session would cache generic plans made for
-- empty tables (a sequential scan of generation_jobs for the foreign-key check
-- and the expired-hold lookup) and keep them while the tables grow. 20 keyed
-- charges per user, half completed, half refunded; then VACUUM ANALYZE.
CREATE TEMP TABLE history AS
SELECT g, c.job_id, bench.user_id(1 + g % :users) AS user_id
FROM generate_series(1, 20 * :users) g,
     LATERAL public.atomic_charge_credits(bench.user_id(1 + g % :users), 'image', 1, 'history-' || g) c;
SELECT count(*) FROM history h, LATERAL public.complete_generation_job(h.job_id, 'https://cdn.example/h.png') c
WHERE h.g % 2 = 0;
SELECT count(public.refund_credits(h.user_id, h.job_id, 1, 'history')) FROM history h WHERE h.g % 2 = 1;
SELECT count(*) FROM generate_series(1, 2 * :users) g,
     LATERAL public.check_rate_limit('history-' || g, 'user', 100, 60) r;
