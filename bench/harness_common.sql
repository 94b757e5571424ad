-- =============================================================================
-- bench/harness_common.sql: what every bench database gets before its users,
-- whatever SQL it runs (creditgate's or the seed's). Loaded with psql.
-- =============================================================================
CREATE SCHEMA IF NOT EXISTS bench;

/** The fixed id of bench user n: the pgbench scripts build the same text inline. */
CREATE OR REPLACE FUNCTION bench.user_id(n integer) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$ SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;

-- Open jobs for the settlement benchmarks: each pgbench transaction settles
-- job number nextval('bench.jobs_next'), so no two settle the same job.
CREATE TABLE IF NOT EXISTS bench.jobs (n bigint PRIMARY KEY, user_id uuid NOT NULL, job_id uuid NOT NULL);
CREATE SEQUENCE IF NOT EXISTS bench.jobs_next;
