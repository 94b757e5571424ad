-- =============================================================================
-- creditgate 1/4: schema. Tables for balances, holds (generation jobs), the
-- ledger, idempotency keys and rate limits; their constraints, indexes,
-- row-level security and privileges.
--
-- Runs in three situations, each tested:
--   * a fresh Supabase database: creates everything;
--   * a legacy database from before the seed (public.users(id, credits),
--     public.credit_ledger with `amount integer NOT NULL` and no `delta`,
--     maybe an older rate_limits table): upgrades in place, keeping every row
--     and every balance (tests/upgrade/, two fixtures);
--   * a database where this file already ran: changes nothing.
-- Loads as one transaction, as the Supabase SQL editor runs a script: no
-- CONCURRENTLY, no explicit BEGIN/COMMIT.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Private schema: internals and the clock-driven *_at functions. PostgREST
-- does not expose it and no client role may use it.
-- -----------------------------------------------------------------------------
CREATE SCHEMA IF NOT EXISTS creditgate;
COMMENT ON SCHEMA creditgate IS
  'creditgate internals: clock-driven *_at functions and helpers. No client role may use this schema.';
REVOKE ALL ON SCHEMA creditgate FROM PUBLIC;
-- PostgreSQL grants EXECUTE on every new function to PUBLIC; not in this schema.
ALTER DEFAULT PRIVILEGES IN SCHEMA creditgate REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

/**
 * Adds constraint p_name (p_definition) to p_table unless a constraint of that
 * name exists, then validates it if the rows allow. A legacy table whose rows
 * violate it keeps it NOT VALID (new and updated rows are still checked)
 * rather than failing the upgrade: an upgrade never loses rows. A changed
 * definition gets a new name, so a name always means one definition.
 * Locks: what ALTER TABLE takes. Errors: none of its own.
 */
CREATE OR REPLACE FUNCTION creditgate.ensure_constraint(p_table regclass, p_name text, p_definition text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_validated boolean;
BEGIN
  SELECT c.convalidated INTO v_validated
  FROM pg_catalog.pg_constraint c
  WHERE c.conrelid = p_table AND c.conname = p_name;

  IF v_validated IS NULL THEN
    EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', p_table, p_name, p_definition);
  ELSIF v_validated THEN
    RETURN;
  END IF;

  BEGIN
    EXECUTE pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT %I', p_table, p_name);
  EXCEPTION WHEN check_violation OR foreign_key_violation OR not_null_violation THEN
    RAISE NOTICE 'creditgate: constraint % on % stays NOT VALID: existing rows violate it', p_name, p_table;
  END;
END;
$$;

/**
 * Drops every foreign key on p_table that references p_referenced, except
 * p_keep. Used to replace legacy ON DELETE CASCADE keys, which would delete
 * ledger history or break the deletion of an auth user.
 */
CREATE OR REPLACE FUNCTION creditgate.drop_foreign_keys(p_table regclass, p_referenced regclass, p_keep text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_name name;
BEGIN
  FOR v_name IN
    SELECT c.conname FROM pg_catalog.pg_constraint c
    WHERE c.conrelid = p_table AND c.confrelid = p_referenced AND c.contype = 'f'
      AND c.conname IS DISTINCT FROM p_keep
    ORDER BY c.conname
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', p_table, v_name);
  END LOOP;
END;
$$;

/** True when p_table has a column p_column. */
CREATE OR REPLACE FUNCTION creditgate.has_column(p_table regclass, p_column text)
RETURNS boolean
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT EXISTS (
    SELECT FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = p_table AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped
  )
$$;

/**
 * Makes public function p_function callable by p_roles (a comma-separated
 * list of role names) and by no other client role: PUBLIC, anon and
 * authenticated lose EXECUTE first. Every public function is exposed with it.
 */
CREATE OR REPLACE FUNCTION creditgate.expose(p_function regprocedure, p_roles text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated', p_function);
  EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', p_function,
    (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(pg_catalog.btrim(r)), ', ')
     FROM pg_catalog.regexp_split_to_table(p_roles, ',') AS r));
END;
$$;

-- -----------------------------------------------------------------------------
-- users: one row per auth user; `credits` is the spendable balance (open holds
-- already taken out). Rows are never deleted: deleting the auth user closes
-- the account (closed_at set, balance zeroed through the ledger; see
-- 20250601000400_creditgate_accounts.sql).
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.users (
  id uuid PRIMARY KEY,
  credits integer NOT NULL DEFAULT 0,
  closed_at timestamptz
);

-- Legacy upgrade: a NULL balance is a zero balance.
ALTER TABLE public.users ADD COLUMN IF NOT EXISTS credits integer NOT NULL DEFAULT 0;
ALTER TABLE public.users ADD COLUMN IF NOT EXISTS closed_at timestamptz;
UPDATE public.users SET credits = 0 WHERE credits IS NULL;
ALTER TABLE public.users ALTER COLUMN credits SET NOT NULL;
DO $$
BEGIN
  -- A legacy default (a signup bonus, say) is kept: creditgate records it as
  -- an opening balance when the account opens. Without one, accounts open at 0.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a
                   ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                 WHERE d.adrelid = 'public.users'::regclass AND a.attname = 'credits') THEN
    ALTER TABLE public.users ALTER COLUMN credits SET DEFAULT 0;
  END IF;
END
$$;

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint
                 WHERE conrelid = 'public.users'::regclass AND contype = 'p') THEN
    ALTER TABLE public.users ADD PRIMARY KEY (id);
  END IF;
END
$$;

-- A legacy `REFERENCES auth.users ON DELETE CASCADE` would delete the row (and
-- with it the ledger's subject) when the auth user goes; closing the account
-- replaces it, so no key to auth.users remains.
SELECT creditgate.drop_foreign_keys('public.users', 'auth.users', NULL);

-- The seed's name for the same rule, so a half-applied seed is recognised.
SELECT creditgate.ensure_constraint('public.users', 'users_credits_non_negative', 'CHECK (credits >= 0)');

COMMENT ON TABLE public.users IS
  'creditgate balances: one row per auth user. Written only by creditgate functions; users read their own row.';
COMMENT ON COLUMN public.users.credits IS 'Spendable balance in credits; open holds are already taken out.';
COMMENT ON COLUMN public.users.closed_at IS 'When the auth user was deleted and the account closed (balance zeroed in the ledger).';

-- -----------------------------------------------------------------------------
-- generation_jobs: a job holding credits. A charge opens it (status pending)
-- and it is settled exactly once: completed, failed (refunded) or expired.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.generation_jobs (
  id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
  user_id uuid NOT NULL,
  operation_type text NOT NULL,
  status text NOT NULL DEFAULT 'pending',
  cost integer NOT NULL,
  idempotency_key text,
  result_url text,
  error_message text,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  completed_at timestamptz,
  expires_at timestamptz NOT NULL,
  captured_credits integer,
  refunded_credits integer,
  limit_units jsonb
);

-- Legacy upgrade (a database where the seed's first migration half ran).
ALTER TABLE public.generation_jobs ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE public.generation_jobs ADD COLUMN IF NOT EXISTS captured_credits integer;
ALTER TABLE public.generation_jobs ADD COLUMN IF NOT EXISTS refunded_credits integer;
ALTER TABLE public.generation_jobs ADD COLUMN IF NOT EXISTS limit_units jsonb;
-- The seed had no way to complete a job, so its open jobs (the seed's
-- 'pending' and 'processing') are mostly finished work: they are completed at
-- upgrade rather than refunded by the sweeper, which would mint credits for
-- work that was done.
UPDATE public.generation_jobs
SET status = 'completed', completed_at = pg_catalog.clock_timestamp(), captured_credits = cost,
    error_message = coalesce(error_message, 'Completed at the creditgate upgrade')
WHERE expires_at IS NULL AND status IN ('pending', 'processing');
UPDATE public.generation_jobs SET expires_at = coalesce(created_at, pg_catalog.clock_timestamp())
WHERE expires_at IS NULL;
UPDATE public.generation_jobs SET metadata = '{}'::jsonb WHERE metadata IS NULL;
ALTER TABLE public.generation_jobs
  ALTER COLUMN expires_at SET NOT NULL,
  ALTER COLUMN metadata SET NOT NULL,
  ALTER COLUMN created_at SET DEFAULT pg_catalog.clock_timestamp();
-- The seed's status list lacks 'expired'; its global idempotency index made
-- keys global (one user's key blocked another's).
ALTER TABLE public.generation_jobs DROP CONSTRAINT IF EXISTS generation_jobs_status_check;
DROP INDEX IF EXISTS public.idx_generation_jobs_idempotency;
-- The seed's key to auth.users cascaded deletes into history.
SELECT creditgate.drop_foreign_keys('public.generation_jobs', 'auth.users', NULL);
SELECT creditgate.drop_foreign_keys('public.generation_jobs', 'public.users', 'generation_jobs_user_fk');
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_user_fk',
  'FOREIGN KEY (user_id) REFERENCES public.users (id)');
-- No creditgate version ever wrote the seed's 'processing' (the seed's open
-- jobs are completed above); the status list no longer has it. The earlier
-- constraints that allowed it are replaced, under new names.
DO $$
BEGIN
  IF EXISTS (SELECT FROM public.generation_jobs j WHERE j.status = 'processing') THEN
    RAISE EXCEPTION 'creditgate: a job has status processing, which no version writes; settle it first';
  END IF;
END
$$;
ALTER TABLE public.generation_jobs DROP CONSTRAINT IF EXISTS generation_jobs_status_known;
ALTER TABLE public.generation_jobs DROP CONSTRAINT IF EXISTS generation_jobs_settled_once;
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_status_listed',
  $c$CHECK (status IN ('pending', 'completed', 'failed', 'expired'))$c$);
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_settled_when_not_pending',
  $c$CHECK ((status = 'pending') = (completed_at IS NULL))$c$);
-- Costs are bounded so that no sum of them can overflow (see creditgate.cost_credits_max()).
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_cost_range',
  'CHECK (cost BETWEEN 1 AND 1000000000)');
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_captured_range',
  'CHECK (captured_credits BETWEEN 0 AND cost)');
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_refunded_range',
  'CHECK (refunded_credits BETWEEN 0 AND cost)');
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_operation_type_length',
  'CHECK (char_length(operation_type) BETWEEN 1 AND 64)');
SELECT creditgate.ensure_constraint('public.generation_jobs', 'generation_jobs_idempotency_key_length',
  'CHECK (char_length(idempotency_key) BETWEEN 1 AND 255)');

CREATE UNIQUE INDEX IF NOT EXISTS generation_jobs_user_idempotency_key
  ON public.generation_jobs (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS generation_jobs_user_created
  ON public.generation_jobs (user_id, created_at);
-- Open holds by user and deadline: each user's release, and the sweeper's
-- scan (it lists the users with an expired hold, which is this index's order).
DO $$
BEGIN
  -- Earlier versions' predicate also named 'processing'.
  IF pg_catalog.pg_get_indexdef(to_regclass('public.generation_jobs_open_user_expiry')) LIKE '%processing%' THEN
    DROP INDEX public.generation_jobs_open_user_expiry;
  END IF;
END
$$;
CREATE INDEX IF NOT EXISTS generation_jobs_open_user_expiry
  ON public.generation_jobs (user_id, expires_at) WHERE status = 'pending';
-- An earlier version also kept open holds by deadline alone: the index above
-- serves that scan too, and each charge and settlement wrote both.
DROP INDEX IF EXISTS public.generation_jobs_open_expiry;

COMMENT ON TABLE public.generation_jobs IS
  'Jobs: a charge opens one, holding its cost; it is settled exactly once (completed, failed = refunded, expired).';
COMMENT ON COLUMN public.generation_jobs.cost IS 'Credits held by the charge.';
COMMENT ON COLUMN public.generation_jobs.expires_at IS 'Deadline: an open hold past it is refunded (status expired).';
COMMENT ON COLUMN public.generation_jobs.captured_credits IS 'Credits kept at settlement (0 for a refund or expiry).';
COMMENT ON COLUMN public.generation_jobs.refunded_credits IS 'Credits returned at settlement.';
COMMENT ON COLUMN public.generation_jobs.limit_units IS
  'Unit limits the charge reserved an estimate in: [{key, limit, window_seconds, cost, bucket}], corrected once at settlement (NULL: none).';

-- -----------------------------------------------------------------------------
-- credit_ledger: append-only, one row per balance change. For each user, ids
-- increase in commit order, balance_after chains (previous + delta) and the
-- sum of deltas is the balance. Triggers refuse UPDATE, DELETE and TRUNCATE.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.credit_ledger (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id uuid NOT NULL,
  delta integer NOT NULL,
  balance_after integer NOT NULL,
  operation_type text NOT NULL,
  description text,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  job_id uuid,
  entry_type text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

-- The seed's DO INSTEAD NOTHING rules fail silently (and would swallow the
-- backfill below); triggers replace them.
DROP RULE IF EXISTS credit_ledger_no_update ON public.credit_ledger;
DROP RULE IF EXISTS credit_ledger_no_delete ON public.credit_ledger;
DROP TRIGGER IF EXISTS verify_ledger_before_insert ON public.credit_ledger;
DROP FUNCTION IF EXISTS public.verify_ledger_delta();

-- Legacy upgrade: give the ledger a bigint id that orders its rows. A legacy
-- uuid id is kept as legacy_id; legacy rows are numbered in time order.
DO $$
DECLARE
  v_id_type text;
  v_primary_key text;
  v_order text;
BEGIN
  SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO v_id_type
  FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = 'public.credit_ledger'::regclass AND a.attname = 'id' AND NOT a.attisdropped;

  IF v_id_type IN ('integer', 'smallint') THEN
    ALTER TABLE public.credit_ledger ALTER COLUMN id TYPE bigint;
    IF pg_catalog.pg_get_serial_sequence('public.credit_ledger', 'id') IS NOT NULL THEN
      EXECUTE pg_catalog.format('ALTER SEQUENCE %s AS bigint',
        pg_catalog.pg_get_serial_sequence('public.credit_ledger', 'id'));
    END IF;
  ELSIF v_id_type IS DISTINCT FROM 'bigint' THEN
    IF v_id_type IS NOT NULL THEN
      SELECT c.conname INTO v_primary_key FROM pg_catalog.pg_constraint c
      WHERE c.conrelid = 'public.credit_ledger'::regclass AND c.contype = 'p';
      IF v_primary_key IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE public.credit_ledger DROP CONSTRAINT %I', v_primary_key);
      END IF;
      ALTER TABLE public.credit_ledger RENAME COLUMN id TO legacy_id;
      ALTER TABLE public.credit_ledger ADD CONSTRAINT credit_ledger_legacy_id_key UNIQUE (legacy_id);
    END IF;
    ALTER TABLE public.credit_ledger ADD COLUMN id bigint;
    v_order := pg_catalog.concat_ws(', ',
      CASE WHEN creditgate.has_column('public.credit_ledger', 'created_at') THEN 'created_at' END,
      CASE WHEN creditgate.has_column('public.credit_ledger', 'legacy_id') THEN 'legacy_id' END,
      'ctid');
    EXECUTE pg_catalog.format(
      'UPDATE public.credit_ledger l SET id = n.position
       FROM (SELECT ctid AS row_ctid, row_number() OVER (ORDER BY %s) AS position FROM public.credit_ledger) n
       WHERE l.ctid = n.row_ctid', v_order);
  END IF;

  IF pg_catalog.pg_get_serial_sequence('public.credit_ledger', 'id') IS NULL THEN
    ALTER TABLE public.credit_ledger ALTER COLUMN id SET NOT NULL;
    ALTER TABLE public.credit_ledger ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
    PERFORM pg_catalog.setval(pg_catalog.pg_get_serial_sequence('public.credit_ledger', 'id'),
      coalesce((SELECT max(l.id) FROM public.credit_ledger l), 0) + 1, false);
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint
                 WHERE conrelid = 'public.credit_ledger'::regclass AND contype = 'p') THEN
    ALTER TABLE public.credit_ledger ADD PRIMARY KEY (id);
  END IF;
END
$$;

-- Legacy upgrade: the seed's functions write `delta` while a legacy `amount
-- integer NOT NULL` stays NULL ("null value in column amount"). `delta` takes
-- the legacy amounts (signed changes), `amount` becomes optional and is kept
-- filled for old readers by credit_ledger_fill_legacy_amount below.
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS delta integer;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS balance_after integer;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS operation_type text;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS description text;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS job_id uuid;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS entry_type text;
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp();

DO $$
BEGIN
  IF creditgate.has_column('public.credit_ledger', 'amount') THEN
    ALTER TABLE public.credit_ledger ALTER COLUMN amount DROP NOT NULL;
    UPDATE public.credit_ledger SET delta = amount WHERE delta IS NULL AND amount IS NOT NULL;
  END IF;
END
$$;

-- Legacy rows: balance_after is the running sum of the user's deltas in id
-- order (computed only while some row lacks it: a re-run sorts no ledger).
DO $$
BEGIN
  IF EXISTS (SELECT FROM public.credit_ledger l WHERE l.balance_after IS NULL) THEN
    UPDATE public.credit_ledger l SET balance_after = r.running_balance
    FROM (SELECT i.id, sum(i.delta) OVER (PARTITION BY i.user_id ORDER BY i.id) AS running_balance
          FROM public.credit_ledger i) r
    WHERE l.id = r.id AND l.balance_after IS NULL;
  END IF;
END
$$;
UPDATE public.credit_ledger SET entry_type = 'legacy' WHERE entry_type IS NULL;
UPDATE public.credit_ledger SET operation_type = 'legacy' WHERE operation_type IS NULL;
UPDATE public.credit_ledger SET metadata = '{}'::jsonb WHERE metadata IS NULL;
UPDATE public.credit_ledger SET created_at = pg_catalog.clock_timestamp() WHERE created_at IS NULL;
ALTER TABLE public.credit_ledger
  ALTER COLUMN user_id SET NOT NULL,
  ALTER COLUMN delta SET NOT NULL,
  ALTER COLUMN balance_after SET NOT NULL,
  ALTER COLUMN operation_type SET NOT NULL,
  ALTER COLUMN entry_type SET NOT NULL,
  ALTER COLUMN metadata SET NOT NULL,
  ALTER COLUMN metadata SET DEFAULT '{}'::jsonb,
  ALTER COLUMN created_at SET NOT NULL,
  -- Timestamps come from the clock at insertion, not from transaction start.
  ALTER COLUMN created_at SET DEFAULT pg_catalog.clock_timestamp();

-- A legacy key ON DELETE CASCADE would delete history with the user.
SELECT creditgate.drop_foreign_keys('public.credit_ledger', 'public.users', 'credit_ledger_user_fk');
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_user_fk',
  'FOREIGN KEY (user_id) REFERENCES public.users (id)');
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_job_fk',
  'FOREIGN KEY (job_id) REFERENCES public.generation_jobs (id)');
-- Earlier versions named the entry of a completion 'capture' and wrote each
-- settlement entry's type (refund, expiry, capture) in operation_type too.
-- Existing rows are rewritten once: 'capture' becomes 'completion', and a
-- settlement entry takes its job's operation_type. The ledger is append-only
-- (credit_ledger_append_only, created below, refuses UPDATE): this rewrite
-- disables that trigger for the one UPDATE and enables it again, inside this
-- migration's transaction, so no other session ever sees the ledger without
-- it; a re-run finds nothing to rewrite and leaves the trigger alone.
DO $$
BEGIN
  IF EXISTS (SELECT FROM public.credit_ledger l JOIN public.generation_jobs j ON j.id = l.job_id
             WHERE l.entry_type IN ('refund', 'expiry', 'capture')
               AND (l.entry_type = 'capture' OR l.operation_type IS DISTINCT FROM j.operation_type)) THEN
    ALTER TABLE public.credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_entry_type_known;
    ALTER TABLE public.credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_job_entries_name_a_job;
    DROP INDEX IF EXISTS public.credit_ledger_one_settlement_per_job;
    ALTER TABLE public.credit_ledger DISABLE TRIGGER credit_ledger_append_only;
    UPDATE public.credit_ledger l
    SET entry_type = CASE WHEN l.entry_type = 'capture' THEN 'completion' ELSE l.entry_type END,
        operation_type = j.operation_type
    FROM public.generation_jobs j
    WHERE j.id = l.job_id AND l.entry_type IN ('refund', 'expiry', 'capture')
      AND (l.entry_type = 'capture' OR l.operation_type IS DISTINCT FROM j.operation_type);
    ALTER TABLE public.credit_ledger ENABLE TRIGGER credit_ledger_append_only;
  END IF;
END
$$;
ALTER TABLE public.credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_entry_type_known;
ALTER TABLE public.credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_job_entries_name_a_job;
-- The list before lots (without lot_expiry and lot_revocation) had another name.
ALTER TABLE public.credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_entry_type_listed;
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_entry_type_in_list',
  $c$CHECK (entry_type IN ('charge', 'refund', 'expiry', 'completion', 'grant',
                           'opening_balance', 'account_closure', 'legacy', 'lot_expiry', 'lot_revocation'))$c$);
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_job_entry_names_a_job',
  $c$CHECK ((job_id IS NOT NULL) = (entry_type IN ('charge', 'refund', 'expiry', 'completion')))$c$);
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_delta_nonzero',
  $c$CHECK (delta <> 0 OR entry_type = 'legacy')$c$);
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_operation_type_length',
  'CHECK (char_length(operation_type) BETWEEN 1 AND 64)');
SELECT creditgate.ensure_constraint('public.credit_ledger', 'credit_ledger_metadata_object',
  $c$CHECK (jsonb_typeof(metadata) = 'object')$c$);

CREATE INDEX IF NOT EXISTS credit_ledger_user_id_id ON public.credit_ledger (user_id, id);
-- Exactly once, enforced by the database: one charge and at most one
-- settlement entry per job.
-- Keyed (user_id, job_id), as every per-user key is (docs/scaling.md): a job
-- has one user, so this is the same rule as (job_id) alone, and a table
-- distributed by user_id can keep it.
DO $$
BEGIN
  -- Earlier versions' predicate named 'capture', and their key was (job_id).
  IF pg_catalog.pg_get_indexdef(to_regclass('public.credit_ledger_one_settlement_per_job')) LIKE '%capture%'
     OR pg_catalog.pg_get_indexdef(to_regclass('public.credit_ledger_one_settlement_per_job')) NOT LIKE '%(user_id, job_id)%' THEN
    DROP INDEX public.credit_ledger_one_settlement_per_job;
  END IF;
  IF pg_catalog.pg_get_indexdef(to_regclass('public.credit_ledger_one_charge_per_job')) NOT LIKE '%(user_id, job_id)%' THEN
    DROP INDEX public.credit_ledger_one_charge_per_job;
  END IF;
END
$$;
CREATE UNIQUE INDEX IF NOT EXISTS credit_ledger_one_charge_per_job
  ON public.credit_ledger (user_id, job_id) WHERE entry_type = 'charge';
CREATE UNIQUE INDEX IF NOT EXISTS credit_ledger_one_settlement_per_job
  ON public.credit_ledger (user_id, job_id) WHERE entry_type IN ('refund', 'expiry', 'completion');

COMMENT ON TABLE public.credit_ledger IS
  'Append-only: one row per balance change. Per user: ids increase in commit order, balance_after = previous + delta, sum(delta) = users.credits.';
COMMENT ON COLUMN public.credit_ledger.entry_type IS
  'charge (hold taken), refund / expiry / completion (job settled; a completion returns the unused part of the hold), grant, opening_balance (legacy upgrade), account_closure, lot_expiry / lot_revocation (what remained of a lot left the balance), legacy (rows from before creditgate).';
COMMENT ON COLUMN public.credit_ledger.operation_type IS
  'The operation of the job (charge and settlement entries), or the entry type for entries without a job (grant, opening_balance, account_closure, legacy).';

/** Refuses UPDATE, DELETE and TRUNCATE on the ledger, loudly. */
CREATE OR REPLACE FUNCTION creditgate.forbid_ledger_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION 'credit_ledger is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'restrict_violation',
          HINT = 'Correct a ledger entry with a new entry; history is never rewritten.';
END;
$$;

DROP TRIGGER IF EXISTS credit_ledger_append_only ON public.credit_ledger;
CREATE TRIGGER credit_ledger_append_only
  BEFORE UPDATE OR DELETE ON public.credit_ledger
  FOR EACH ROW EXECUTE FUNCTION creditgate.forbid_ledger_change();
DROP TRIGGER IF EXISTS credit_ledger_append_only_truncate ON public.credit_ledger;
CREATE TRIGGER credit_ledger_append_only_truncate
  BEFORE TRUNCATE ON public.credit_ledger
  FOR EACH STATEMENT EXECUTE FUNCTION creditgate.forbid_ledger_change();

/** Legacy ledgers only: keeps the old `amount` column equal to `delta` for old readers. */
CREATE OR REPLACE FUNCTION creditgate.fill_legacy_amount()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF pg_catalog.to_jsonb(NEW) ->> 'amount' IS NULL THEN
    NEW := pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object('amount', NEW.delta));
  END IF;
  RETURN NEW;
END;
$$;

DO $$
BEGIN
  IF creditgate.has_column('public.credit_ledger', 'amount') THEN
    DROP TRIGGER IF EXISTS credit_ledger_fill_legacy_amount ON public.credit_ledger;
    CREATE TRIGGER credit_ledger_fill_legacy_amount
      BEFORE INSERT ON public.credit_ledger
      FOR EACH ROW EXECUTE FUNCTION creditgate.fill_legacy_amount();
  END IF;
END
$$;

-- -----------------------------------------------------------------------------
-- idempotency_keys: one row per (user, scope, key), written in the same
-- transaction as the change it protects, holding what a replay returns. The
-- scope is the kind of request that claimed the key, in `operation`: 'charge'
-- (every charge function) or 'grant' (grant_credits). A purchase webhook's
-- grant keyed by its event id and a charge that happened to use the same
-- string are two keys, not a reuse.
-- -----------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.idempotency_keys (
  user_id uuid NOT NULL,
  key text NOT NULL,
  operation text NOT NULL,
  status text NOT NULL DEFAULT 'completed',
  request_hash text,
  response jsonb,
  job_id uuid,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  PRIMARY KEY (user_id, operation, key)
);

-- Legacy upgrade (the seed's shape: key, user_id, operation, status).
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS request_hash text;
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS response jsonb;
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS job_id uuid;
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp();

-- The scope of existing rows, from what each row records. creditgate always
-- wrote 'charge' or 'grant' here; a grant never points at a job and always
-- stored its response. The seed wrote the charge's operation type ('image')
-- or NULL, no response: it keyed only charges (its generation_jobs row keeps
-- the operation type). So: a row that points at a job (job_id), has no
-- stored response, or is not a 'grant' is a charge.
-- Old uniqueness was (user, key), so no two rows can collide here. Only rows
-- whose scope is not yet one of the two are touched: a re-run writes nothing.
UPDATE public.idempotency_keys k SET operation = 'charge'
WHERE k.operation IS NULL
   OR k.operation NOT IN ('charge', 'grant')
   OR (k.operation = 'grant' AND (k.job_id IS NOT NULL OR k.response IS NULL));
ALTER TABLE public.idempotency_keys ALTER COLUMN operation SET NOT NULL;
SELECT creditgate.ensure_constraint('public.idempotency_keys', 'idempotency_keys_scope_known',
  $c$CHECK (operation IN ('charge', 'grant'))$c$);

DO $$
DECLARE
  v_index record;
BEGIN
  -- Keys were unique per (user, key) (an earlier creditgate's primary key, the
  -- seed's UNIQUE (key, user_id), or the index idempotency_keys_user_id_key):
  -- every such index goes, whatever its column order or name.
  FOR v_index IN
    SELECT i.indexrelid::regclass AS index_name, c.conname
    FROM pg_catalog.pg_index i
    LEFT JOIN pg_catalog.pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
    WHERE i.indrelid = 'public.idempotency_keys'::regclass AND i.indisunique AND i.indpred IS NULL
      AND i.indnkeyatts = 2
      AND (SELECT array_agg(a.attname ORDER BY a.attname) FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = ARRAY['key', 'user_id']::name[]
    ORDER BY 1
  LOOP
    IF v_index.conname IS NOT NULL THEN
      EXECUTE pg_catalog.format('ALTER TABLE public.idempotency_keys DROP CONSTRAINT %I', v_index.conname);
    ELSE
      EXECUTE pg_catalog.format('DROP INDEX %s', v_index.index_name);
    END IF;
  END LOOP;

  -- Keys are unique per (user, scope, key): the primary key, unless a legacy
  -- table has another primary key, which is kept beside a unique index.
  IF NOT EXISTS (
    SELECT FROM pg_catalog.pg_index i
    WHERE i.indrelid = 'public.idempotency_keys'::regclass AND i.indisunique AND i.indpred IS NULL
      AND i.indexprs IS NULL AND i.indnkeyatts = 3
      AND i.indkey[0] = (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = i.indrelid AND a.attname = 'user_id')
      AND i.indkey[1] = (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = i.indrelid AND a.attname = 'operation')
      AND i.indkey[2] = (SELECT a.attnum FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = i.indrelid AND a.attname = 'key')
  ) THEN
    IF EXISTS (SELECT FROM pg_catalog.pg_constraint
               WHERE conrelid = 'public.idempotency_keys'::regclass AND contype = 'p') THEN
      CREATE UNIQUE INDEX idempotency_keys_user_scope_key ON public.idempotency_keys (user_id, operation, key);
    ELSE
      ALTER TABLE public.idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (user_id, operation, key);
    END IF;
  END IF;
END
$$;
SELECT creditgate.ensure_constraint('public.idempotency_keys', 'idempotency_keys_key_length',
  'CHECK (char_length(key) BETWEEN 1 AND 255)');

COMMENT ON TABLE public.idempotency_keys IS
  'Idempotency keys, scoped per user and per kind of request (operation): the request fingerprint and the response a retry gets back.';
COMMENT ON COLUMN public.idempotency_keys.operation IS
  'The scope: the kind of request that claimed the key, charge or grant. Unique per (user_id, operation, key).';

-- -----------------------------------------------------------------------------
-- rate_limits: one row per (key, limit, window): sliding-window counters in
-- at most 21 time buckets of window/20 each (see creditgate.rate_limit_at).
-- Transient state: losing it loses counters, never credits. So the table is
-- UNLOGGED: its writes skip the WAL, and a commit that wrote only counters
-- does not wait for the disk. Crash recovery empties it (every key starts a
-- fresh window), and read replicas do not have it; only the primary's RPCs
-- read it.
-- -----------------------------------------------------------------------------
DO $$
BEGIN
  -- An older rate_limits table (the seed's, or before) is replaced: its rows
  -- are expiring counters, and its policies let anon write it.
  IF to_regclass('public.rate_limits') IS NOT NULL
     AND NOT creditgate.has_column(to_regclass('public.rate_limits'), 'bucket_costs') THEN
    DROP TABLE public.rate_limits;
  END IF;
END
$$;

CREATE UNLOGGED TABLE IF NOT EXISTS public.rate_limits (
  key text NOT NULL,
  max_requests integer NOT NULL,
  window_seconds integer NOT NULL,
  bucket_ids bigint[] NOT NULL DEFAULT '{}',
  bucket_costs integer[] NOT NULL DEFAULT '{}',
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (key, max_requests, window_seconds),
  -- 320: a caller's key is at most 255, check_rate_limit's encoded pair at most 275.
  CONSTRAINT rate_limits_stored_key_length CHECK (char_length(key) BETWEEN 1 AND 320),
  CONSTRAINT rate_limits_max_requests_range CHECK (max_requests BETWEEN 1 AND 1000000),
  CONSTRAINT rate_limits_window_seconds_range CHECK (window_seconds BETWEEN 1 AND 86400),
  CONSTRAINT rate_limits_buckets_bounded CHECK (
    cardinality(bucket_ids) = cardinality(bucket_costs) AND cardinality(bucket_ids) <= 21)
);
CREATE INDEX IF NOT EXISTS rate_limits_expires_at ON public.rate_limits (expires_at);
-- An earlier version bounded stored keys at 255; check_rate_limit's encoded
-- pairs (20250601000300) need up to 275.
ALTER TABLE public.rate_limits DROP CONSTRAINT IF EXISTS rate_limits_key_length;
SELECT creditgate.ensure_constraint('public.rate_limits', 'rate_limits_stored_key_length',
  'CHECK (char_length(key) BETWEEN 1 AND 320)');

DO $$
BEGIN
  -- A rate_limits table created logged by an earlier version becomes
  -- UNLOGGED (a rewrite of transient rows); one that already is stays as it is.
  IF (SELECT c.relpersistence FROM pg_catalog.pg_class c
      WHERE c.oid = 'public.rate_limits'::regclass) = 'p' THEN
    ALTER TABLE public.rate_limits SET UNLOGGED;
  END IF;
END
$$;

COMMENT ON TABLE public.rate_limits IS
  'Rate-limit state, invisible to clients: per (key, limit, window) the costs of allowed requests in time buckets of window/20.';

-- -----------------------------------------------------------------------------
-- Access: clients read their own rows of users, generation_jobs and
-- credit_ledger, and write nothing. Supabase grants ALL on new tables to anon
-- and authenticated by default; that is revoked here.
-- -----------------------------------------------------------------------------
REVOKE ALL ON TABLE public.users, public.generation_jobs, public.credit_ledger,
  public.idempotency_keys, public.rate_limits FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.users, public.generation_jobs, public.credit_ledger TO authenticated;
-- service_role (the server) reads everything and still writes only through functions.
GRANT SELECT ON TABLE public.users, public.generation_jobs, public.credit_ledger,
  public.idempotency_keys, public.rate_limits TO service_role;

DO $$
DECLARE
  v_sequence text := pg_catalog.pg_get_serial_sequence('public.credit_ledger', 'id');
BEGIN
  EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, anon, authenticated, service_role', v_sequence);
END
$$;

ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.generation_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rate_limits ENABLE ROW LEVEL SECURITY;

-- The seed's policies: one let every role manage jobs when a claim said so.
DROP POLICY IF EXISTS "Users can view own jobs" ON public.generation_jobs;
DROP POLICY IF EXISTS "Service role can manage jobs" ON public.generation_jobs;

-- Each table: a permissive policy that shows a user their own rows, and a
-- restrictive one that hides everyone else's even if a legacy policy (say
-- `USING (true)` on users) would show them.
DROP POLICY IF EXISTS users_select_own ON public.users;
CREATE POLICY users_select_own ON public.users
  FOR SELECT TO authenticated USING (id = (SELECT auth.uid()));
DROP POLICY IF EXISTS users_only_own ON public.users;
CREATE POLICY users_only_own ON public.users AS RESTRICTIVE
  FOR ALL TO anon, authenticated USING (id = (SELECT auth.uid()));

DROP POLICY IF EXISTS generation_jobs_select_own ON public.generation_jobs;
CREATE POLICY generation_jobs_select_own ON public.generation_jobs
  FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
DROP POLICY IF EXISTS generation_jobs_only_own ON public.generation_jobs;
CREATE POLICY generation_jobs_only_own ON public.generation_jobs AS RESTRICTIVE
  FOR ALL TO anon, authenticated USING (user_id = (SELECT auth.uid()));

DROP POLICY IF EXISTS credit_ledger_select_own ON public.credit_ledger;
CREATE POLICY credit_ledger_select_own ON public.credit_ledger
  FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
DROP POLICY IF EXISTS credit_ledger_only_own ON public.credit_ledger;
CREATE POLICY credit_ledger_only_own ON public.credit_ledger AS RESTRICTIVE
  FOR ALL TO anon, authenticated USING (user_id = (SELECT auth.uid()));

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
-- PostgreSQL grants EXECUTE on a new function to PUBLIC; the schema's
-- default privileges (above) revoke it, and this statement does it for a
-- creditgate function created another way (by another role, or before).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA creditgate FROM PUBLIC;
NOTIFY pgrst, 'reload schema';
