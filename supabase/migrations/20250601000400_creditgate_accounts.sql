-- =============================================================================
-- creditgate 4/4: accounts and housekeeping.
--   * every auth user has a public.users row (a trigger, and a backfill);
--   * deleting an auth user closes the account (below), it never deletes
--     history and never fails;
--   * a legacy balance the ledger does not explain gets an opening-balance
--     entry, so verify_credit_ledger() is empty from the first minute;
--   * where pg_cron is installed (Supabase: Database -> Extensions), the
--     sweeper and the rate-limit cleanup are scheduled.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Account lifecycle, driven by auth.users
-- -----------------------------------------------------------------------------

/**
 * Appends an opening_balance entry for the part of the user's balance that
 * the ledger does not explain (a balance from before creditgate), so that the
 * ledger adds up. Does nothing when it already does, or for an unknown user.
 * The entry follows the user's existing rows, so its balance_after (the
 * balance) chains from their running sum.
 * Locks: the users row.
 */
CREATE OR REPLACE FUNCTION creditgate.record_opening_balance(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_balance integer;
  v_ledger_sum bigint;
  v_entry_id bigint;
BEGIN
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  SELECT coalesce(sum(l.delta), 0) INTO v_ledger_sum FROM public.credit_ledger l WHERE l.user_id = p_user_id;
  IF v_balance <> v_ledger_sum THEN
    INSERT INTO public.credit_ledger AS l
      (user_id, delta, balance_after, operation_type, description, metadata, entry_type)
    VALUES
      (p_user_id, (v_balance - v_ledger_sum)::integer, v_balance, 'opening_balance',
       'Opening balance: the part of the balance that earlier ledger rows do not explain',
       pg_catalog.jsonb_build_object('ledger_sum_before', v_ledger_sum), 'opening_balance')
    RETURNING l.id INTO v_entry_id;
    -- The balance is the sum of the user's lots: an opening balance is a
    -- legacy lot. While the first migration run has not created lots yet
    -- (this file runs before 20250601000500), that file's upgrade opens them.
    IF v_balance > v_ledger_sum AND to_regclass('public.credit_lots') IS NOT NULL THEN
      PERFORM creditgate.open_lot(p_user_id, (v_balance - v_ledger_sum)::integer, 'legacy', 50, NULL,
        'balance before lots', NULL, '{}'::jsonb, v_entry_id, NULL, NULL, pg_catalog.clock_timestamp());
    END IF;
  END IF;
END;
$$;

/**
 * A new auth user gets an account with a zero balance. A closed account of the
 * same id (an auth user restored from a backup) is reopened, still at zero.
 * Named to fire after a project's own `on_auth_user_created` trigger, which
 * often inserts the same row (with ON CONFLICT, ours then does nothing), and
 * perhaps a starting balance, which gets its opening-balance entry here.
 * Locks: the users row.
 */
CREATE OR REPLACE FUNCTION creditgate.on_auth_user_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO public.users AS u (id) VALUES (NEW.id)
  ON CONFLICT (id) DO UPDATE SET closed_at = NULL WHERE u.closed_at IS NOT NULL;
  -- A legacy signup trigger may have given a starting balance without a ledger row.
  PERFORM creditgate.record_opening_balance(NEW.id);
  RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS on_auth_user_created_creditgate ON auth.users;
CREATE TRIGGER on_auth_user_created_creditgate
  AFTER INSERT ON auth.users
  FOR EACH ROW EXECUTE FUNCTION creditgate.on_auth_user_created();

/**
 * Closes an account, once: every pending job is refunded, then a closing ledger
 * entry takes the balance to zero, and the row is marked closed_at. The row
 * and its ledger stay: history is never rewritten, the ledger still adds up,
 * and the user's jobs and entries keep their subject. A closed account can
 * be neither charged nor granted (PT404 user_not_found).
 * p_now NULL (the trigger): the clock, read after the row lock is held.
 * Locks: the users row, then its open jobs, then its lots.
 */
CREATE OR REPLACE FUNCTION creditgate.close_account(p_user_id uuid, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_balance integer;
  v_entry_id bigint;
  v_now timestamptz;
BEGIN
  PERFORM FROM public.users u WHERE u.id = p_user_id AND u.closed_at IS NULL FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  -- The clock is read once the row is ours: a closure that waited for a
  -- charge's lock is dated after that charge, not before it.
  v_now := coalesce(p_now, pg_catalog.clock_timestamp());
  PERFORM creditgate.settle_pending_jobs(p_user_id, 'infinity', 'failed', 'refund', 'Refund: account closed',
    'Refunded: account closed', v_now);

  -- No further allowance; the closure below takes what the lots hold.
  DELETE FROM public.credit_plan_subscriptions s WHERE s.user_id = p_user_id;

  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  IF v_balance <> 0 THEN
    SELECT d.entry_id INTO v_entry_id FROM creditgate.apply_delta(p_user_id, -v_balance, 'account_closure',
      'account_closure', 'Account closed: the auth user was deleted', '{}'::jsonb, NULL) d;
    IF v_balance > 0 THEN
      PERFORM creditgate.draw_lots(p_user_id, v_balance, v_entry_id);
    END IF;
  END IF;
  UPDATE public.users u SET closed_at = v_now WHERE u.id = p_user_id;
END;
$$;

/** Deleting an auth user closes its account (creditgate.close_account); the deletion always proceeds. */
CREATE OR REPLACE FUNCTION creditgate.on_auth_user_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  -- NULL: close_account reads the clock after it holds the row lock.
  PERFORM creditgate.close_account(OLD.id, NULL);
  RETURN OLD;
END;
$$;

DROP TRIGGER IF EXISTS on_auth_user_deleted_creditgate ON auth.users;
CREATE TRIGGER on_auth_user_deleted_creditgate
  AFTER DELETE ON auth.users
  FOR EACH ROW EXECUTE FUNCTION creditgate.on_auth_user_deleted();

-- Auth users from before this migration.
INSERT INTO public.users (id)
SELECT a.id FROM auth.users a
ON CONFLICT (id) DO NOTHING;

-- -----------------------------------------------------------------------------
-- Opening balances: reconciliation holds from the first minute
-- -----------------------------------------------------------------------------

DO $$
BEGIN
  PERFORM creditgate.record_opening_balance(u.id)
  FROM public.users u
  LEFT JOIN (SELECT l.user_id, sum(l.delta) AS delta_sum FROM public.credit_ledger l GROUP BY l.user_id) s
    ON s.user_id = u.id
  WHERE u.credits <> coalesce(s.delta_sum, 0)
  ORDER BY u.id;
END
$$;

-- -----------------------------------------------------------------------------
-- Schedules (pg_cron, where installed; without it, expired holds are still
-- released at each user's next balance check)
-- -----------------------------------------------------------------------------
DO $$
DECLARE
  v_job record;
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
    RETURN;
  END IF;
  FOR v_job IN
    SELECT * FROM (VALUES
      ('creditgate-expire-holds', '* * * * *', 'SELECT public.expire_stale_generation_jobs()'),
      ('creditgate-cleanup-rate-limits', '*/10 * * * *', 'SELECT public.cleanup_expired_rate_limits()')
    ) AS wanted (job_name, schedule, command)
  LOOP
    -- Scheduling again would take a new job id: leave an identical job alone.
    IF NOT EXISTS (SELECT FROM cron.job c WHERE c.jobname = v_job.job_name
                   AND c.schedule = v_job.schedule AND c.command = v_job.command) THEN
      PERFORM cron.schedule(v_job.job_name, v_job.schedule, v_job.command);
    END IF;
  END LOOP;
END
$$;

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
-- PostgreSQL grants EXECUTE on a new function to PUBLIC; the schema's
-- default privileges (20250601000100) revoke it, and this statement does it
-- for a creditgate function created another way (by another role, or before).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA creditgate FROM PUBLIC;
NOTIFY pgrst, 'reload schema';
