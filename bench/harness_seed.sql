-- =============================================================================
-- bench/harness_seed.sql: bench users in the seed's database (after
-- bench/seed_baseline.sql and bench/harness_common.sql). psql variable :users.
-- The seed has no grant function: balances are set directly.
-- =============================================================================
INSERT INTO auth.users (id, email, aud, role)
SELECT bench.user_id(g), 'bench-' || g || '@bench.local', 'authenticated', 'authenticated'
FROM generate_series(1, :users) g;

INSERT INTO public.users (id, credits)
SELECT bench.user_id(g), 1000000000 FROM generate_series(1, :users) g;

/** As in bench/harness_creditgate.sql, with the seed's charge. */
CREATE OR REPLACE FUNCTION bench.make_jobs(p_count integer, p_users integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE bench.jobs;
  PERFORM setval('bench.jobs_next', 1, false);
  INSERT INTO bench.jobs (n, user_id, job_id)
  SELECT g, bench.user_id(1 + g % p_users),
         (SELECT c.job_id FROM public.atomic_charge_credits(bench.user_id(1 + g % p_users), 'image', 1) c)
  FROM generate_series(1, p_count) g;
END;
$$;

-- History, as in bench/harness_creditgate.sql: 20 keyed charges per user,
-- all refunded (the seed cannot complete a job), and some rate-limit rows.
CREATE TEMP TABLE history AS
SELECT g, c.job_id, bench.user_id(1 + g % :users) AS user_id
FROM generate_series(1, 20 * :users) g,
     LATERAL public.atomic_charge_credits(bench.user_id(1 + g % :users), 'image', 1, 'history-' || g) c;
SELECT count(public.refund_credits(h.user_id, h.job_id, 1, 'history')) FROM history h;
SELECT count(*) FROM generate_series(1, 2 * :users) g,
     LATERAL public.check_rate_limit('history-' || g, 'user', 100, 60) r;
