-- =============================================================================
-- creditgate 5/5: credit lots, plan allowances and balance events.
-- Words: docs/glossary.md (lot, plan, allowance, event); contract: docs/rpc.md
-- ("Lots, plans and balance events").
--
--   * every grant opens a lot (credit_lots); the balance on users.credits is
--     always the sum of the user's lots' `remaining`, and every movement of
--     credits into or out of a lot is a credit_lot_movements row of a ledger
--     entry;
--   * charges draw from lots in spending order (priority, soonest expiry,
--     never-expiring last, oldest); settlements give back to the lots drawn;
--   * what remains of a lot at its expiry leaves with a `lot_expiry` entry;
--   * plans grant an `allowance` lot per period; events record balance
--     crossings, expiries and allowances in the same transaction.
--
-- The charge, settlement, grant, sweeper and account paths that use these
-- (apply_delta, open_hold, settle_job, lock_user, grant_credits_at,
-- expire_stale_generation_jobs_at, close_account, record_opening_balance) are
-- in the earlier files and call the functions below at run time.
--
-- Lock order, as everywhere: the users row first, then that user's jobs,
-- then that user's lots (and subscription). No function locks a lot or a
-- subscription of a user whose row it does not hold.
--
-- Runs fresh, again (changing nothing), and over a database from before lots
-- (one `legacy` lot per user for the balance; see the end of this file).
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Tables
-- -----------------------------------------------------------------------------

/** Project settings: one row. */
CREATE TABLE IF NOT EXISTS public.credit_settings (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  -- A balance change from at least this to below it writes a low_balance event (0: never).
  low_balance_threshold integer NOT NULL DEFAULT 10 CHECK (low_balance_threshold BETWEEN 0 AND 1000000000),
  -- A lot_expiring event this long before a lot's expiry.
  lot_expiring_seconds integer NOT NULL DEFAULT 259200 CHECK (lot_expiring_seconds BETWEEN 1 AND 31536000),
  -- Ledger entries up to this id are from before lots: they have no movements.
  lots_since_entry_id bigint NOT NULL DEFAULT 0
);
INSERT INTO public.credit_settings (id, lots_since_entry_id)
VALUES (true, (SELECT coalesce(max(l.id), 0) FROM public.credit_ledger l))
ON CONFLICT (id) DO NOTHING;

/** Per-user settings; a NULL threshold means the project's. */
CREATE TABLE IF NOT EXISTS public.credit_user_settings (
  user_id uuid PRIMARY KEY REFERENCES public.users (id),
  low_balance_threshold integer CHECK (low_balance_threshold BETWEEN 0 AND 1000000000)
);

/** Plans: an allowance of `amount` credits per `period`. */
CREATE TABLE IF NOT EXISTS public.credit_plans (
  plan text PRIMARY KEY CHECK (char_length(plan) BETWEEN 1 AND 64),
  amount integer NOT NULL CHECK (amount BETWEEN 1 AND 1000000000),
  period text NOT NULL CHECK (period IN ('day', 'week', 'month')),
  rollover_max integer NOT NULL DEFAULT 0 CHECK (rollover_max BETWEEN 0 AND 1000000000),
  -- The plan's rate, concurrency and unit limits (creditgate.check_plan_limits).
  limits jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object'),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  updated_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

/** Lots: one per grant. users.credits = sum(remaining) per user. */
CREATE TABLE IF NOT EXISTS public.credit_lots (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES public.users (id),
  category text NOT NULL CHECK (char_length(category) BETWEEN 1 AND 32 AND category ~ '^[a-z][a-z0-9_-]*$'),
  priority integer NOT NULL CHECK (priority BETWEEN 0 AND 100),
  granted integer NOT NULL CHECK (granted > 0 OR (granted = 0 AND category = 'legacy')),
  remaining integer NOT NULL CHECK (remaining >= 0),
  expires_at timestamptz,
  reason text NOT NULL,
  idempotency_key text,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
  -- The ledger entry that opened the lot; NULL for lots the upgrade opened.
  grant_entry_id bigint REFERENCES public.credit_ledger (id),
  plan text REFERENCES public.credit_plans (plan),
  period_start timestamptz,
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  expired_at timestamptz,
  revoked_at timestamptz,
  expiring_notified_at timestamptz,
  -- remaining > 0, kept by PostgreSQL. The partial indexes name this column,
  -- not `remaining`: a charge that leaves a lot non-empty changes no indexed
  -- value, so its update is HOT (no index entry written), with the free
  -- space fillfactor leaves on each page.
  spendable boolean GENERATED ALWAYS AS (remaining > 0) STORED,
  CHECK ((plan IS NULL) = (period_start IS NULL))
) WITH (fillfactor = 80);
-- The spendable lots of a user in spending order (expires_at ASC puts NULL,
-- never, last): the charge reads this index and nothing else.
CREATE INDEX IF NOT EXISTS credit_lots_spending_order
  ON public.credit_lots (user_id, priority, expires_at, created_at, id) WHERE spendable;
-- The sweeper: lots with credits left, by expiry.
CREATE INDEX IF NOT EXISTS credit_lots_due
  ON public.credit_lots (expires_at) WHERE spendable AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS credit_lots_user_created ON public.credit_lots (user_id, created_at);
-- An allowance is granted once per user, plan and period.
CREATE UNIQUE INDEX IF NOT EXISTS credit_lots_one_allowance_per_period
  ON public.credit_lots (user_id, plan, period_start) WHERE plan IS NOT NULL;

/** Which lots each ledger entry moved credits into or out of. */
-- One index, the key: a movement is written on the charge's hot path and read
-- by its entry (a settlement reads its charge's). Lots are never deleted, so
-- the key to them needs no index of its own.
CREATE TABLE IF NOT EXISTS public.credit_lot_movements (
  id bigint GENERATED ALWAYS AS IDENTITY,
  ledger_id bigint NOT NULL REFERENCES public.credit_ledger (id),
  lot_id uuid NOT NULL REFERENCES public.credit_lots (id),
  delta integer NOT NULL CHECK (delta <> 0),
  PRIMARY KEY (ledger_id, id)
);

/** A user's plan: periods from `anchor`; the allowance of the period starting at `period_start` is granted. */
CREATE TABLE IF NOT EXISTS public.credit_plan_subscriptions (
  user_id uuid PRIMARY KEY REFERENCES public.users (id),
  plan text NOT NULL REFERENCES public.credit_plans (plan),
  anchor timestamptz NOT NULL,
  period_start timestamptz NOT NULL,
  next_period_start timestamptz NOT NULL,
  lot_id uuid REFERENCES public.credit_lots (id),
  subscribed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX IF NOT EXISTS credit_plan_subscriptions_due ON public.credit_plan_subscriptions (next_period_start);

/** Balance events, written in the transaction of the change that caused them. */
-- Keyed (user_id, id): every read is a user's events in id order, and a
-- table distributed by user_id can keep the key (docs/scaling.md). One
-- index, where (id) plus (user_id, id) were two.
CREATE TABLE IF NOT EXISTS public.credit_events (
  id bigint GENERATED ALWAYS AS IDENTITY,
  user_id uuid NOT NULL REFERENCES public.users (id),
  type text NOT NULL CHECK (type IN ('low_balance', 'depleted', 'lot_expiring', 'lot_expired', 'hold_expired',
                                     'allowance_granted')),
  payload jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(payload) = 'object'),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  CONSTRAINT credit_events_pkey PRIMARY KEY (user_id, id)
);
DO $$
BEGIN
  -- Earlier versions: PRIMARY KEY (id) and an index on (user_id, id).
  IF pg_catalog.pg_get_constraintdef((SELECT c.oid FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = 'public.credit_events'::regclass AND c.contype = 'p')) = 'PRIMARY KEY (id)' THEN
    ALTER TABLE public.credit_events DROP CONSTRAINT credit_events_pkey;
    ALTER TABLE public.credit_events ADD CONSTRAINT credit_events_pkey PRIMARY KEY (user_id, id);
  END IF;
END
$$;
DROP INDEX IF EXISTS public.credit_events_user_id;

COMMENT ON TABLE public.credit_lots IS
  'One lot per grant. Per user: sum(remaining) = users.credits; per lot: remaining = granted + sum(credit_lot_movements.delta).';
COMMENT ON TABLE public.credit_lot_movements IS
  'Which lots each ledger entry touched: a charge draws in spending order (one row per lot, in drawing order), a settlement gives back.';
COMMENT ON TABLE public.credit_events IS
  'low_balance, depleted, lot_expiring, lot_expired, hold_expired, allowance_granted: docs/rpc.md. Users read their own (RLS).';

-- Privileges and row-level security: clients read their own lots and events;
-- the server reads everything; nobody writes but the functions.
REVOKE ALL ON TABLE public.credit_settings, public.credit_user_settings, public.credit_plans, public.credit_lots,
  public.credit_lot_movements, public.credit_plan_subscriptions, public.credit_events
  FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.credit_lots, public.credit_events TO authenticated;
GRANT SELECT ON TABLE public.credit_settings, public.credit_user_settings, public.credit_plans, public.credit_lots,
  public.credit_lot_movements, public.credit_plan_subscriptions, public.credit_events TO service_role;
DO $$
DECLARE
  v_sequence text;
BEGIN
  FOREACH v_sequence IN ARRAY ARRAY[pg_catalog.pg_get_serial_sequence('public.credit_lot_movements', 'id'),
                                    pg_catalog.pg_get_serial_sequence('public.credit_events', 'id')] LOOP
    EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, anon, authenticated, service_role', v_sequence);
  END LOOP;
END
$$;

ALTER TABLE public.credit_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_user_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_lots ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_lot_movements ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_plan_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_events ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS credit_lots_select_own ON public.credit_lots;
CREATE POLICY credit_lots_select_own ON public.credit_lots
  FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
DROP POLICY IF EXISTS credit_lots_only_own ON public.credit_lots;
CREATE POLICY credit_lots_only_own ON public.credit_lots AS RESTRICTIVE
  FOR ALL TO anon, authenticated USING (user_id = (SELECT auth.uid()));
DROP POLICY IF EXISTS credit_events_select_own ON public.credit_events;
CREATE POLICY credit_events_select_own ON public.credit_events
  FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
DROP POLICY IF EXISTS credit_events_only_own ON public.credit_events;
CREATE POLICY credit_events_only_own ON public.credit_events AS RESTRICTIVE
  FOR ALL TO anon, authenticated USING (user_id = (SELECT auth.uid()));

-- Realtime (Supabase): changes to credit_events reach subscribed clients,
-- filtered by the RLS policy above.
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'supabase_realtime')
     AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_tables t
                     WHERE t.pubname = 'supabase_realtime' AND t.schemaname = 'public' AND t.tablename = 'credit_events') THEN
    ALTER PUBLICATION supabase_realtime ADD TABLE public.credit_events;
  END IF;
END
$$;

-- -----------------------------------------------------------------------------
-- Events
-- -----------------------------------------------------------------------------

/** Appends one event for the user. */
CREATE OR REPLACE FUNCTION creditgate.record_event(p_user_id uuid, p_type text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  INSERT INTO public.credit_events (user_id, type, payload) VALUES (p_user_id, p_type, p_payload);
END;
$$;

/**
 * After a balance decrease from p_before to p_after (ledger entry
 * p_entry_id): low_balance when it crossed the user's threshold (from at
 * least it to below it), depleted when it reached 0. Reads the threshold
 * only when a crossing is possible.
 */
CREATE OR REPLACE FUNCTION creditgate.note_balance_drop(p_user_id uuid, p_before integer, p_after integer, p_entry_id bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_threshold integer;
BEGIN
  IF p_before <= 0 THEN
    RETURN;
  END IF;
  SELECT coalesce(us.low_balance_threshold, s.low_balance_threshold) INTO v_threshold
  FROM public.credit_settings s LEFT JOIN public.credit_user_settings us ON us.user_id = p_user_id
  WHERE s.id;
  IF p_before >= v_threshold AND p_after < v_threshold THEN
    PERFORM creditgate.record_event(p_user_id, 'low_balance', pg_catalog.jsonb_build_object(
      'balance', p_after, 'previous_balance', p_before, 'threshold', v_threshold, 'entry_id', p_entry_id));
  END IF;
  IF p_after = 0 THEN
    PERFORM creditgate.record_event(p_user_id, 'depleted', pg_catalog.jsonb_build_object(
      'balance', 0, 'previous_balance', p_before, 'entry_id', p_entry_id));
  END IF;
END;
$$;

-- -----------------------------------------------------------------------------
-- Lots: open, draw, give back, take away
-- -----------------------------------------------------------------------------

/** Checks a grant's lot terms: expiry after p_now (or none), category word, priority 0..100. Errors: 22023. */
CREATE OR REPLACE FUNCTION creditgate.require_lot_terms(
  p_expires_at timestamptz, p_category text, p_priority integer, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require(p_expires_at IS NULL OR p_expires_at > p_now,
    'p_expires_at must be later than now (or NULL: never)',
    pg_catalog.jsonb_build_object('parameter', 'p_expires_at', 'value', p_expires_at, 'now', p_now));
  PERFORM creditgate.require(pg_catalog.char_length(p_category) BETWEEN 1 AND 32 AND p_category ~ '^[a-z][a-z0-9_-]*$',
    'p_category must be 1 to 32 characters: a lowercase letter, then lowercase letters, digits, _ or -',
    pg_catalog.jsonb_build_object('parameter', 'p_category', 'value', p_category));
  PERFORM creditgate.require_range('p_priority', p_priority, 0, 100);
END;
$$;

/**
 * Opens a lot of p_amount credits (the caller has added them to the balance
 * with ledger entry p_entry_id, or, for the upgrade, has them there already).
 * Returns its id.
 */
CREATE OR REPLACE FUNCTION creditgate.open_lot(
  p_user_id uuid, p_amount integer, p_category text, p_priority integer, p_expires_at timestamptz,
  p_reason text, p_idempotency_key text, p_metadata jsonb, p_entry_id bigint, p_plan text,
  p_period_start timestamptz, p_now timestamptz)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_lot_id uuid;
BEGIN
  INSERT INTO public.credit_lots AS l
    (user_id, category, priority, granted, remaining, expires_at, reason, idempotency_key, metadata,
     grant_entry_id, plan, period_start, created_at)
  VALUES
    (p_user_id, p_category, p_priority, p_amount, p_amount, p_expires_at, p_reason, p_idempotency_key,
     coalesce(p_metadata, '{}'::jsonb), p_entry_id, p_plan, p_period_start, p_now)
  RETURNING l.id INTO v_lot_id;
  RETURN v_lot_id;
END;
$$;

/**
 * Draws p_amount credits from the user's lots in spending order (priority,
 * soonest expiry, never-expiring last, oldest) for ledger entry p_entry_id:
 * one movement per lot drawn, in drawing order. The caller has expired the
 * user's due lots (lock_user) and taken p_amount from the balance, which the
 * lots cover (their sum is the balance).
 * Locks: the caller holds the users row; this locks the lots it draws from.
 */
CREATE OR REPLACE FUNCTION creditgate.draw_lots(p_user_id uuid, p_amount integer, p_entry_id bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_left integer := p_amount;
  v_take integer;
  v_lot record;
  v_lot_id uuid;
BEGIN
  -- The common case, one statement: the first lot in spending order covers
  -- it. No FOR UPDATE in the subquery: the caller's lock on the user's row
  -- keeps every other writer off the user's lots, and the UPDATE locks the
  -- row it changes.
  UPDATE public.credit_lots l SET remaining = l.remaining - p_amount
  WHERE l.id = (SELECT f.id FROM public.credit_lots f WHERE f.user_id = p_user_id AND f.spendable
                ORDER BY f.priority, f.expires_at, f.created_at, f.id LIMIT 1)
    AND l.remaining >= p_amount
  RETURNING l.id INTO v_lot_id;
  IF v_lot_id IS NOT NULL THEN
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (p_entry_id, v_lot_id, -p_amount);
    RETURN;
  END IF;
  FOR v_lot IN
    SELECT l.id, l.remaining FROM public.credit_lots l
    WHERE l.user_id = p_user_id AND l.spendable
    ORDER BY l.priority, l.expires_at, l.created_at, l.id
    FOR UPDATE
  LOOP
    v_take := least(v_lot.remaining, v_left);
    UPDATE public.credit_lots l SET remaining = l.remaining - v_take WHERE l.id = v_lot.id;
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (p_entry_id, v_lot.id, -v_take);
    v_left := v_left - v_take;
    EXIT WHEN v_left = 0;
  END LOOP;
  IF v_left > 0 THEN
    -- The lots do not cover the balance: verify_credit_ledger() would say
    -- lots_mismatch. Refuse rather than record a movement that is not there.
    RAISE EXCEPTION 'creditgate: the lots of user % lack % credits of the balance', p_user_id, v_left
      USING ERRCODE = 'XX000', HINT = 'Run verify_credit_ledger().';
  END IF;
END;
$$;

/**
 * Takes p_amount credits out of lot p_lot_id with a ledger entry of its own:
 * p_entry_type 'lot_expiry' (the lot expired: expired_at set, a lot_expired
 * event) or 'lot_revocation' (revoked_at set; a lot_expired event with
 * revoked: true when p_event, for credits that came back to a revoked lot).
 * Returns the new balance.
 * Locks: the caller holds the users row and the lot.
 */
CREATE OR REPLACE FUNCTION creditgate.take_from_lot(
  p_lot_id uuid, p_amount integer, p_entry_type text, p_description text, p_event boolean, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_lot public.credit_lots;
  v_balance integer;
  v_entry_id bigint;
BEGIN
  UPDATE public.credit_lots l
  SET remaining = l.remaining - p_amount,
      expired_at = CASE WHEN p_entry_type = 'lot_expiry' THEN coalesce(l.expired_at, p_now) ELSE l.expired_at END,
      revoked_at = CASE WHEN p_entry_type = 'lot_revocation' THEN coalesce(l.revoked_at, p_now) ELSE l.revoked_at END
  WHERE l.id = p_lot_id
  RETURNING l.* INTO v_lot;
  SELECT d.new_balance, d.entry_id INTO v_balance, v_entry_id
  FROM creditgate.apply_delta(v_lot.user_id, -p_amount, p_entry_type, p_entry_type, p_description,
    pg_catalog.jsonb_build_object('lot_id', p_lot_id, 'category', v_lot.category), NULL) d;
  INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (v_entry_id, p_lot_id, -p_amount);
  IF p_event THEN
    PERFORM creditgate.record_event(v_lot.user_id, 'lot_expired', pg_catalog.jsonb_build_object(
      'lot_id', p_lot_id, 'category', v_lot.category, 'amount', p_amount, 'expires_at', v_lot.expires_at,
      'entry_id', v_entry_id) || CASE WHEN p_entry_type = 'lot_revocation'
                                      THEN '{"revoked": true}'::jsonb ELSE '{}'::jsonb END);
  END IF;
  RETURN v_balance;
END;
$$;

/**
 * The user's legacy lot, opened (granted 0, no entry) if there is none: where
 * credits with no recorded lot go back (a hold charged before lots without a
 * charge entry).
 */
CREATE OR REPLACE FUNCTION creditgate.legacy_lot(p_user_id uuid, p_now timestamptz)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_lot_id uuid;
BEGIN
  SELECT l.id INTO v_lot_id FROM public.credit_lots l
  WHERE l.user_id = p_user_id AND l.category = 'legacy' AND l.expires_at IS NULL AND l.revoked_at IS NULL
  ORDER BY l.created_at, l.id LIMIT 1;
  IF NOT FOUND THEN
    v_lot_id := creditgate.open_lot(p_user_id, 0, 'legacy', 50, NULL, 'balance before lots', NULL, '{}'::jsonb,
      NULL, NULL, NULL, p_now);
  END IF;
  RETURN v_lot_id;
END;
$$;

/**
 * Gives p_amount credits of job p_job back to the lots its charge drew from,
 * for ledger entry p_entry_id (which added them to the balance): the lots
 * drawn last first, each at most what was drawn from it (a refund or expiry
 * returns the whole hold, so each lot gets all it gave; a completion returns
 * the unused part, the kept part staying with the lots drawn first). Credits
 * returning to a lot that has expired (expires_at <= p_now) or been revoked
 * leave again at once (take_from_lot). Returns the new balance.
 * Locks: the caller holds the users row and the job; this locks the lots.
 */
CREATE OR REPLACE FUNCTION creditgate.return_to_lots(
  p_job public.generation_jobs, p_amount integer, p_entry_id bigint, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_left integer := p_amount;
  v_give integer;
  v_drawn record;
  v_lot public.credit_lots;
  v_balance integer;
BEGIN
  FOR v_drawn IN
    SELECT m.lot_id, -m.delta AS amount FROM public.credit_ledger c
    JOIN public.credit_lot_movements m ON m.ledger_id = c.id
    WHERE c.user_id = p_job.user_id AND c.job_id = p_job.id AND c.entry_type = 'charge' AND m.delta < 0
    ORDER BY m.id DESC
  LOOP
    v_give := least(v_drawn.amount, v_left);
    UPDATE public.credit_lots l SET remaining = l.remaining + v_give WHERE l.id = v_drawn.lot_id
    RETURNING l.* INTO v_lot;
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (p_entry_id, v_lot.id, v_give);
    -- A revoked lot holds nothing but what just came back; an expired one
    -- may also hold a rest not swept yet: all of it leaves, in one entry.
    IF v_lot.revoked_at IS NOT NULL THEN
      PERFORM creditgate.take_from_lot(v_lot.id, v_lot.remaining, 'lot_revocation',
        'Lot revoked: credits returned to it leave again', true, p_now);
    ELSIF v_lot.expires_at <= p_now THEN
      PERFORM creditgate.take_from_lot(v_lot.id, v_lot.remaining, 'lot_expiry',
        'Lot expired: credits returned to it after its expiry', true, p_now);
    END IF;
    v_left := v_left - v_give;
    EXIT WHEN v_left = 0;
  END LOOP;
  IF v_left > 0 THEN
    -- A hold from before lots whose charge has no recorded lot.
    v_lot.id := creditgate.legacy_lot(p_job.user_id, p_now);
    UPDATE public.credit_lots l SET remaining = l.remaining + v_left WHERE l.id = v_lot.id;
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (p_entry_id, v_lot.id, v_left);
  END IF;
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_job.user_id;
  RETURN v_balance;
END;
$$;

/**
 * Expires what remains of each of the user's lots whose expiry is at or
 * before p_now: one lot_expiry entry and one lot_expired event per lot.
 * Returns how many lots.
 * Locks: the caller holds the users row; this locks the lots.
 */
CREATE OR REPLACE FUNCTION creditgate.expire_lots(p_user_id uuid, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_lot record;
  v_expired integer := 0;
BEGIN
  FOR v_lot IN
    SELECT l.id, l.remaining FROM public.credit_lots l
    WHERE l.user_id = p_user_id AND l.spendable AND l.expires_at <= p_now
    ORDER BY l.expires_at, l.created_at, l.id
    FOR UPDATE
  LOOP
    PERFORM creditgate.take_from_lot(v_lot.id, v_lot.remaining, 'lot_expiry', 'Lot expired', true, p_now);
    v_expired := v_expired + 1;
  END LOOP;
  RETURN v_expired;
END;
$$;

/**
 * Writes a lot_expiring event, once per lot, for each lot with credits left
 * that expires within the project's lot_expiring_seconds after p_now. A lot
 * whose user's row another transaction holds waits for the next sweep.
 * Returns how many events. Locks: each user row (SKIP LOCKED), then the lot.
 */
CREATE OR REPLACE FUNCTION creditgate.note_expiring_lots(p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_horizon timestamptz := p_now + pg_catalog.make_interval(secs =>
    (SELECT s.lot_expiring_seconds FROM public.credit_settings s WHERE s.id));
  v_lot record;
  v_noted integer := 0;
BEGIN
  FOR v_lot IN
    SELECT l.id, l.user_id FROM public.credit_lots l
    WHERE l.spendable AND l.expires_at > p_now AND l.expires_at <= v_horizon AND l.expiring_notified_at IS NULL
    ORDER BY l.user_id, l.expires_at
  LOOP
    PERFORM FROM public.users u WHERE u.id = v_lot.user_id FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    UPDATE public.credit_lots l SET expiring_notified_at = p_now
    WHERE l.id = v_lot.id AND l.remaining > 0 AND l.expiring_notified_at IS NULL
    RETURNING l.* INTO v_lot;
    IF FOUND THEN
      PERFORM creditgate.record_event(v_lot.user_id, 'lot_expiring', pg_catalog.jsonb_build_object(
        'lot_id', v_lot.id, 'category', v_lot.category, 'remaining', v_lot.remaining, 'expires_at', v_lot.expires_at));
      v_noted := v_noted + 1;
    END IF;
  END LOOP;
  RETURN v_noted;
END;
$$;

-- -----------------------------------------------------------------------------
-- Plans and allowances
-- -----------------------------------------------------------------------------

/** The start of period p_n of a plan of p_period anchored at p_anchor, counted in UTC. */
CREATE OR REPLACE FUNCTION creditgate.period_start(p_anchor timestamptz, p_period text, p_n integer)
RETURNS timestamptz
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN ((p_anchor AT TIME ZONE 'UTC') + p_n * CASE p_period WHEN 'day' THEN interval '1 day'
                                                           WHEN 'week' THEN interval '7 days'
                                                           ELSE interval '1 month' END) AT TIME ZONE 'UTC';
END;
$$;

/** The number of the period of p_period anchored at p_anchor that contains p_now (p_now >= p_anchor). */
CREATE OR REPLACE FUNCTION creditgate.period_index(p_anchor timestamptz, p_period text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_n integer;
  v_age interval;
BEGIN
  IF p_period = 'month' THEN
    v_age := pg_catalog.age(p_now AT TIME ZONE 'UTC', p_anchor AT TIME ZONE 'UTC');
    v_n := (EXTRACT(year FROM v_age) * 12 + EXTRACT(month FROM v_age))::integer;
  ELSE
    v_n := pg_catalog.floor(EXTRACT(epoch FROM p_now - p_anchor)
                            / CASE p_period WHEN 'day' THEN 86400 ELSE 604800 END)::integer;
  END IF;
  -- Month arithmetic clamps to the month's end: settle on the exact period.
  WHILE creditgate.period_start(p_anchor, p_period, v_n + 1) <= p_now LOOP
    v_n := v_n + 1;
  END LOOP;
  WHILE v_n > 0 AND creditgate.period_start(p_anchor, p_period, v_n) > p_now LOOP
    v_n := v_n - 1;
  END LOOP;
  RETURN v_n;
END;
$$;

/**
 * Grants the allowance of plan p_plan for the period [p_start, p_end) as an
 * `allowance` lot expiring at p_end, once per user, plan and period: returns
 * (lot_id, granted), granted 0 when that period's lot exists already. Up to
 * the plan's rollover_max of what remains of p_previous_lot_id moves into it
 * when that lot is the allowance of the period just before (it ends at
 * p_start) and not revoked; the rest of it expires with the lot.
 * Locks: the caller holds the users row; this locks the previous lot.
 */
CREATE OR REPLACE FUNCTION creditgate.grant_allowance(
  p_user_id uuid, p_plan public.credit_plans, p_start timestamptz, p_end timestamptz, p_previous_lot_id uuid,
  p_now timestamptz)
RETURNS TABLE (lot_id uuid, granted integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_carried integer := 0;
  v_previous public.credit_lots;
  v_entry_id bigint;
BEGIN
  SELECT l.id INTO lot_id FROM public.credit_lots l
  WHERE l.user_id = p_user_id AND l.plan = p_plan.plan AND l.period_start = p_start;
  IF FOUND THEN
    granted := 0;
    RETURN NEXT;
    RETURN;
  END IF;
  IF p_previous_lot_id IS NOT NULL THEN
    SELECT * INTO v_previous FROM public.credit_lots l WHERE l.id = p_previous_lot_id FOR UPDATE;
    IF v_previous.expires_at = p_start AND v_previous.revoked_at IS NULL THEN
      v_carried := least(v_previous.remaining, p_plan.rollover_max);
    END IF;
  END IF;

  SELECT d.entry_id INTO v_entry_id
  FROM creditgate.apply_delta(p_user_id, p_plan.amount, 'grant', 'grant', 'Plan allowance: ' || p_plan.plan,
    pg_catalog.jsonb_build_object('plan', p_plan.plan, 'period_start', p_start, 'period_end', p_end,
      'rollover', v_carried), NULL) d;
  lot_id := creditgate.open_lot(p_user_id, p_plan.amount + v_carried, 'allowance', 50, p_end,
    'Plan allowance: ' || p_plan.plan, NULL,
    pg_catalog.jsonb_build_object('rollover', v_carried, 'rollover_from', CASE WHEN v_carried > 0 THEN v_previous.id END),
    v_entry_id, p_plan.plan, p_start, p_now);
  IF v_carried > 0 THEN
    -- The carried credits move from the old lot to the new one on the same
    -- entry: the balance is unchanged by the move.
    UPDATE public.credit_lots l SET remaining = l.remaining - v_carried WHERE l.id = v_previous.id;
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (v_entry_id, v_previous.id, -v_carried);
  END IF;
  PERFORM creditgate.record_event(p_user_id, 'allowance_granted', pg_catalog.jsonb_build_object(
    'plan', p_plan.plan, 'lot_id', lot_id, 'amount', p_plan.amount, 'rollover', v_carried,
    'period_start', p_start, 'period_end', p_end, 'entry_id', v_entry_id));
  granted := p_plan.amount + v_carried;
  RETURN NEXT;
END;
$$;

/**
 * Grants the allowance of the user's plan for the period containing p_now,
 * when the subscription says a new period has started. Periods missed
 * entirely are not granted afterwards; only the current one is.
 * Locks: the caller holds the users row; this locks the subscription.
 */
CREATE OR REPLACE FUNCTION creditgate.renew_allowance(p_user_id uuid, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_subscription public.credit_plan_subscriptions;
  v_plan public.credit_plans;
  v_n integer;
  v_start timestamptz;
  v_end timestamptz;
  v_grant record;
BEGIN
  SELECT * INTO v_subscription FROM public.credit_plan_subscriptions s
  WHERE s.user_id = p_user_id AND s.next_period_start <= p_now FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  SELECT * INTO v_plan FROM public.credit_plans p WHERE p.plan = v_subscription.plan;
  v_n := creditgate.period_index(v_subscription.anchor, v_plan.period, p_now);
  v_start := creditgate.period_start(v_subscription.anchor, v_plan.period, v_n);
  v_end := creditgate.period_start(v_subscription.anchor, v_plan.period, v_n + 1);
  SELECT g.* INTO v_grant FROM creditgate.grant_allowance(p_user_id, v_plan, v_start, v_end, v_subscription.lot_id, p_now) g;
  UPDATE public.credit_plan_subscriptions s
  SET period_start = v_start, next_period_start = v_end, lot_id = v_grant.lot_id
  WHERE s.user_id = p_user_id;
END;
$$;

/**
 * Brings the user up to p_now: the due plan allowance granted (first, so the
 * rollover reads the previous allowance before it expires), holds past their
 * deadline expired, then lots past their expiry expired. Returns how many
 * holds expired.
 * Locks: the caller holds the users row; this locks the subscription, jobs, lots.
 */
CREATE OR REPLACE FUNCTION creditgate.catch_up(p_user_id uuid, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_holds integer;
BEGIN
  PERFORM creditgate.renew_allowance(p_user_id, p_now);
  v_holds := creditgate.expire_holds(p_user_id, p_now);
  PERFORM creditgate.expire_lots(p_user_id, p_now);
  RETURN v_holds;
END;
$$;

/**
 * Checks a plan's limits (upsert_credit_plan's p_limits) and returns them
 * normalised. The shape, every field optional:
 *   {"user": [{"limit", "window_seconds"}, ...],         -- replaces the user limit
 *    "operations": {"<operation>": [{"limit", "window_seconds"}, ...]},
 *    "concurrency": n,                                    -- open holds at once (1 to 1000)
 *    "units": [{"limit", "window_seconds"}, ...]}         -- unit (token) budget
 * Each list has 0 to 4 windows, distinct (an empty list: no such limit for
 * the plan's subscribers). A section a plan does not name falls back to the
 * caller's defaults (creditgate.resolve_plan_limits).
 * Errors: 22023 invalid_argument naming the field (p_limits.user[0].limit, ...).
 */
CREATE OR REPLACE FUNCTION creditgate.check_plan_limits(p_limits jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_field text;
  v_operation text;
  v_out jsonb := '{}'::jsonb;
  v_operations jsonb := '{}'::jsonb;
BEGIN
  PERFORM creditgate.require(pg_catalog.jsonb_typeof(p_limits) = 'object',
    'p_limits must be a JSON object {"user", "operations", "concurrency", "units"}',
    pg_catalog.jsonb_build_object('parameter', 'p_limits', 'type', pg_catalog.jsonb_typeof(p_limits)));
  SELECT pg_catalog.min(k) INTO v_field FROM pg_catalog.jsonb_object_keys(p_limits) AS f(k)
  WHERE k NOT IN ('user', 'operations', 'concurrency', 'units');
  PERFORM creditgate.require(v_field IS NULL,
    pg_catalog.format('p_limits has an unknown field "%s" (allowed: user, operations, concurrency, units)', v_field),
    pg_catalog.jsonb_build_object('parameter', 'p_limits.' || v_field));
  IF p_limits ? 'user' THEN
    v_out := v_out || pg_catalog.jsonb_build_object('user', creditgate.check_plan_windows(p_limits -> 'user', 'p_limits.user'));
  END IF;
  IF p_limits ? 'units' THEN
    v_out := v_out || pg_catalog.jsonb_build_object('units', creditgate.check_plan_windows(p_limits -> 'units', 'p_limits.units'));
  END IF;
  IF p_limits ? 'concurrency' THEN
    PERFORM creditgate.require(pg_catalog.jsonb_typeof(p_limits -> 'concurrency') = 'number'
        AND (p_limits ->> 'concurrency')::numeric = pg_catalog.trunc((p_limits ->> 'concurrency')::numeric)
        AND (p_limits ->> 'concurrency')::numeric BETWEEN 1 AND 1000,
      'p_limits.concurrency must be an integer from 1 to 1000',
      pg_catalog.jsonb_build_object('parameter', 'p_limits.concurrency', 'value', p_limits -> 'concurrency',
        'min', 1, 'max', 1000));
    v_out := v_out || pg_catalog.jsonb_build_object('concurrency', (p_limits ->> 'concurrency')::integer);
  END IF;
  IF p_limits ? 'operations' THEN
    PERFORM creditgate.require(pg_catalog.jsonb_typeof(p_limits -> 'operations') = 'object',
      'p_limits.operations must be a JSON object {"<operation>": [windows]}',
      pg_catalog.jsonb_build_object('parameter', 'p_limits.operations'));
    FOR v_operation IN SELECT k FROM pg_catalog.jsonb_object_keys(p_limits -> 'operations') AS f(k) ORDER BY k LOOP
      PERFORM creditgate.require(pg_catalog.char_length(v_operation) BETWEEN 1 AND creditgate.operation_type_length_max(),
        pg_catalog.format('p_limits.operations: an operation name is 1 to %s characters', creditgate.operation_type_length_max()),
        pg_catalog.jsonb_build_object('parameter', 'p_limits.operations', 'operation', pg_catalog.left(v_operation, 80)));
      v_operations := v_operations || pg_catalog.jsonb_build_object(v_operation,
        creditgate.check_plan_windows(p_limits -> 'operations' -> v_operation, 'p_limits.operations.' || v_operation));
    END LOOP;
    v_out := v_out || pg_catalog.jsonb_build_object('operations', v_operations);
  END IF;
  RETURN v_out;
END;
$$;

/**
 * A plan's list of windows p_windows (named p_name): 0 to 4 distinct
 * {"limit" (1 to rate_limit_max()), "window_seconds" (1 to 86400)},
 * returned normalised. Errors: 22023 invalid_argument.
 */
CREATE OR REPLACE FUNCTION creditgate.check_plan_windows(p_windows jsonb, p_name text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_index integer;
  v_entry jsonb;
  v_name text;
  v_field text;
  v_values integer[];
  v_number numeric;
  v_out jsonb := '[]'::jsonb;
BEGIN
  PERFORM creditgate.require(pg_catalog.jsonb_typeof(p_windows) = 'array'
      AND pg_catalog.jsonb_array_length(p_windows) <= 4,
    p_name || ' must be a JSON array of 0 to 4 {"limit", "window_seconds"}',
    pg_catalog.jsonb_build_object('parameter', p_name, 'max', 4));
  FOR v_index IN 0 .. pg_catalog.jsonb_array_length(p_windows) - 1 LOOP
    v_entry := p_windows -> v_index;
    v_name := pg_catalog.format('%s[%s]', p_name, v_index);
    PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_entry) = 'object'
        AND NOT EXISTS (SELECT FROM pg_catalog.jsonb_object_keys(v_entry) AS f(k) WHERE k NOT IN ('limit', 'window_seconds')),
      v_name || ' must be {"limit", "window_seconds"}', pg_catalog.jsonb_build_object('parameter', v_name));
    v_values := '{}'::integer[];
    FOREACH v_field IN ARRAY ARRAY['limit', 'window_seconds'] LOOP
      v_number := CASE WHEN pg_catalog.jsonb_typeof(v_entry -> v_field) = 'number' THEN (v_entry ->> v_field)::numeric END;
      PERFORM creditgate.require(v_number = pg_catalog.trunc(v_number) AND v_number BETWEEN 1 AND 1000000000,
        pg_catalog.format('%s.%s must be an integer', v_name, v_field),
        pg_catalog.jsonb_build_object('parameter', v_name || '.' || v_field, 'value', v_entry -> v_field));
      v_values := v_values || v_number::integer;
    END LOOP;
    PERFORM creditgate.require_range(v_name || '.limit', v_values[1], 1, creditgate.rate_limit_max());
    PERFORM creditgate.require_range(v_name || '.window_seconds', v_values[2], 1, creditgate.window_seconds_max());
    PERFORM creditgate.require(NOT v_out @> pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
        'limit', v_values[1], 'window_seconds', v_values[2])),
      v_name || ' repeats a window of ' || p_name, pg_catalog.jsonb_build_object('parameter', v_name));
    v_out := v_out || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('limit', v_values[1],
      'window_seconds', v_values[2]));
  END LOOP;
  RETURN v_out;
END;
$$;

/**
 * The limits of a charge by p_user_id for p_operation_type, p_limits
 * normalised by creditgate.parse_rate_limits, with the user's plan applied:
 * entries tagged "plan": s are replaced by the plan's section s (user,
 * operations.<p_operation_type>, concurrency, units) when the plan names it,
 * under the key of the section's first entry (a unit limit keeps its
 * cost, the estimate); else they stay, and placeholders go. Untagged
 * entries stay. Entries from the plan carry "from_plan": the plan's name.
 * One index lookup (the subscription and its plan). No user or plan: the
 * defaults, placeholders dropped.
 * Errors: 22023 when the plan's limits make more than
 * rate_limits_per_call_max() entries, or a units estimate (cost) above a
 * plan's unit limit.
 */
CREATE OR REPLACE FUNCTION creditgate.resolve_plan_limits(p_user_id uuid, p_operation_type text, p_limits jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_plan text;
  v_plan_limits jsonb;
  v_entry jsonb;
  v_section text;
  v_windows jsonb;
  v_window jsonb;
  v_done text[] := '{}'::text[];
  v_out jsonb := '[]'::jsonb;
  v_index integer;
BEGIN
  SELECT p.plan, p.limits INTO v_plan, v_plan_limits
  FROM public.credit_plan_subscriptions s JOIN public.credit_plans p ON p.plan = s.plan
  WHERE s.user_id = p_user_id;
  v_plan_limits := coalesce(v_plan_limits, '{}'::jsonb);
  FOR v_index IN 0 .. pg_catalog.jsonb_array_length(p_limits) - 1 LOOP
    v_entry := p_limits -> v_index;
    v_section := v_entry ->> 'plan';
    IF v_section IS NULL THEN
      v_out := v_out || pg_catalog.jsonb_build_array(v_entry);
      CONTINUE;
    END IF;
    v_windows := CASE v_section WHEN 'operation' THEN v_plan_limits -> 'operations' -> p_operation_type
                                WHEN 'user' THEN v_plan_limits -> 'user'
                                WHEN 'units' THEN v_plan_limits -> 'units'
                                ELSE v_plan_limits -> 'concurrency' END;
    IF v_windows IS NULL THEN
      IF NOT v_entry ? 'placeholder' THEN
        v_out := v_out || pg_catalog.jsonb_build_array(v_entry);
      END IF;
      CONTINUE;
    END IF;
    IF v_section = ANY (v_done) THEN
      CONTINUE;
    END IF;
    v_done := v_done || v_section;
    IF v_section = 'concurrency' THEN
      v_out := v_out || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('key', v_entry ->> 'key',
        'concurrency', (v_windows #>> '{}')::integer, 'plan', v_section, 'from_plan', v_plan));
      CONTINUE;
    END IF;
    FOR v_window IN SELECT w.value FROM pg_catalog.jsonb_array_elements(v_windows) WITH ORDINALITY AS w(value, position)
                    ORDER BY w.position LOOP
      IF (v_entry ->> 'cost')::integer > (v_window ->> 'limit')::integer THEN
        PERFORM creditgate.require(false,
          pg_catalog.format('the estimate (%s) exceeds the %s limit of plan %s (%s per %s s)', v_entry ->> 'cost',
            v_section, v_plan, v_window ->> 'limit', v_window ->> 'window_seconds'),
          pg_catalog.jsonb_build_object('parameter', 'cost', 'value', (v_entry ->> 'cost')::integer,
            'limit', (v_window ->> 'limit')::integer, 'plan', v_plan));
      END IF;
      v_out := v_out || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('key', v_entry ->> 'key',
        'limit', (v_window ->> 'limit')::integer, 'window_seconds', (v_window ->> 'window_seconds')::integer,
        'cost', coalesce((v_entry ->> 'cost')::integer, 1), 'plan', v_section, 'from_plan', v_plan)
        || CASE WHEN v_section = 'units' THEN '{"units": true}'::jsonb ELSE '{}'::jsonb END);
    END LOOP;
  END LOOP;
  PERFORM creditgate.require(pg_catalog.jsonb_array_length(v_out) <= creditgate.rate_limits_per_call_max(),
    pg_catalog.format('with plan %s''s limits the request has more than %s limits', v_plan,
      creditgate.rate_limits_per_call_max()),
    pg_catalog.jsonb_build_object('parameter', 'p_limits', 'entries', pg_catalog.jsonb_array_length(v_out),
      'max', creditgate.rate_limits_per_call_max(), 'plan', v_plan));
  RETURN v_out;
END;
$$;

SELECT creditgate.drop_other_versions('upsert_credit_plan',
  'p_plan text, p_amount integer, p_period text, p_rollover_max integer DEFAULT 0, p_limits jsonb DEFAULT NULL::jsonb',
  'TABLE(plan text, amount integer, period text, rollover_max integer, limits jsonb)');

/**
 * Creates plan p_plan or changes it (from each subscriber's next period;
 * its limits at once). p_limits: the plan's rate, concurrency and unit
 * limits (creditgate.check_plan_limits); NULL keeps a plan's limits ({} for
 * a new plan), {} clears them.
 * Errors: 22023.
 */
CREATE OR REPLACE FUNCTION public.upsert_credit_plan(
  p_plan text, p_amount integer, p_period text, p_rollover_max integer DEFAULT 0, p_limits jsonb DEFAULT NULL)
RETURNS TABLE (plan text, amount integer, period text, rollover_max integer, limits jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_limits jsonb;
BEGIN
  PERFORM creditgate.require_text('p_plan', p_plan, 64, false);
  PERFORM creditgate.require_range('p_amount', p_amount, 1, creditgate.cost_credits_max());
  PERFORM creditgate.require(p_period IN ('day', 'week', 'month'), 'p_period must be day, week or month',
    pg_catalog.jsonb_build_object('parameter', 'p_period', 'value', p_period));
  PERFORM creditgate.require_range('p_rollover_max', p_rollover_max, 0, creditgate.cost_credits_max());
  IF p_limits IS NOT NULL THEN
    v_limits := creditgate.check_plan_limits(p_limits);
  END IF;
  RETURN QUERY
    INSERT INTO public.credit_plans AS p (plan, amount, period, rollover_max, limits)
    VALUES (p_plan, p_amount, p_period, p_rollover_max, coalesce(v_limits, '{}'::jsonb))
    ON CONFLICT ON CONSTRAINT credit_plans_pkey DO UPDATE
      SET amount = excluded.amount, period = excluded.period, rollover_max = excluded.rollover_max,
          limits = coalesce(v_limits, p.limits), updated_at = pg_catalog.clock_timestamp()
    RETURNING p.plan, p.amount, p.period, p.rollover_max, p.limits;
END;
$$;
SELECT creditgate.expose('public.upsert_credit_plan(text, integer, text, integer, jsonb)', 'service_role');

/**
 * Subscribes the user to plan p_plan with periods from p_anchor (at most
 * p_now) and grants the current period's allowance at once. Another plan, or
 * the same plan with another anchor, replaces the subscription: what remains
 * of the user's live allowance lots (other than this period's of this plan)
 * is revoked first. The same plan and anchor again changes nothing.
 * Locks: the users row, then jobs, lots and the subscription.
 * Errors: 22023, PT404 user_not_found / plan_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.subscribe_credit_plan_at(
  p_user_id uuid, p_plan text, p_anchor timestamptz, p_now timestamptz)
RETURNS TABLE (plan text, period_start timestamptz, period_end timestamptz, lot_id uuid, granted integer,
               new_balance integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_plan public.credit_plans;
  v_current public.credit_plan_subscriptions;
  v_n integer;
  v_start timestamptz;
  v_end timestamptz;
  v_lot record;
  v_grant record;
  v_balance integer;
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  PERFORM creditgate.require_text('p_plan', p_plan, 64, false);
  PERFORM creditgate.require(p_anchor IS NOT NULL AND p_anchor <= p_now, 'p_anchor must be given and not in the future',
    pg_catalog.jsonb_build_object('parameter', 'p_anchor', 'value', p_anchor, 'now', p_now));
  SELECT * INTO v_plan FROM public.credit_plans p WHERE p.plan = p_plan;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'plan_not_found', 'Plan not found', pg_catalog.jsonb_build_object('plan', p_plan));
  END IF;

  v_balance := creditgate.lock_user(p_user_id, p_now, true);
  SELECT * INTO v_current FROM public.credit_plan_subscriptions s WHERE s.user_id = p_user_id FOR UPDATE;
  IF FOUND AND v_current.plan = p_plan AND v_current.anchor = p_anchor THEN
    RETURN QUERY SELECT v_current.plan, v_current.period_start, v_current.next_period_start, v_current.lot_id, 0,
      v_balance;
    RETURN;
  END IF;

  v_n := creditgate.period_index(p_anchor, v_plan.period, p_now);
  v_start := creditgate.period_start(p_anchor, v_plan.period, v_n);
  v_end := creditgate.period_start(p_anchor, v_plan.period, v_n + 1);
  -- The new plan replaces the old allowance: what remains of it is revoked.
  FOR v_lot IN
    SELECT l.id, l.remaining FROM public.credit_lots l
    WHERE l.user_id = p_user_id AND l.plan IS NOT NULL AND l.revoked_at IS NULL AND l.expires_at > p_now
      AND NOT (l.plan = p_plan AND l.period_start = v_start)
    ORDER BY l.created_at, l.id
    FOR UPDATE
  LOOP
    IF v_lot.remaining > 0 THEN
      PERFORM creditgate.take_from_lot(v_lot.id, v_lot.remaining, 'lot_revocation',
        'Lot revoked: the plan was changed', false, p_now);
    ELSE
      UPDATE public.credit_lots l SET revoked_at = p_now WHERE l.id = v_lot.id;
    END IF;
  END LOOP;

  SELECT g.* INTO v_grant FROM creditgate.grant_allowance(p_user_id, v_plan, v_start, v_end, NULL, p_now) g;
  INSERT INTO public.credit_plan_subscriptions AS s
    (user_id, plan, anchor, period_start, next_period_start, lot_id, subscribed_at)
  VALUES (p_user_id, p_plan, p_anchor, v_start, v_end, v_grant.lot_id, p_now)
  ON CONFLICT ON CONSTRAINT credit_plan_subscriptions_pkey DO UPDATE
    SET plan = excluded.plan, anchor = excluded.anchor, period_start = excluded.period_start,
        next_period_start = excluded.next_period_start, lot_id = excluded.lot_id, subscribed_at = excluded.subscribed_at;
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  RETURN QUERY SELECT p_plan, v_start, v_end, v_grant.lot_id, v_grant.granted, v_balance;
END;
$$;

/** Subscribe to a plan: see creditgate.subscribe_credit_plan_at. For service_role. */
CREATE OR REPLACE FUNCTION public.subscribe_credit_plan(p_user_id uuid, p_plan text, p_anchor timestamptz DEFAULT now())
RETURNS TABLE (plan text, period_start timestamptz, period_end timestamptz, lot_id uuid, granted integer,
               new_balance integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY SELECT * FROM creditgate.subscribe_credit_plan_at(p_user_id, p_plan, p_anchor,
    pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.subscribe_credit_plan(uuid, text, timestamptz)', 'service_role');

/**
 * Ends the user's subscription: no further allowance; the current allowance
 * lot stays spendable until its period ends. False when there was none.
 * Locks: the users row, then the subscription. Errors: 22023, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.cancel_credit_plan_at(p_user_id uuid, p_now timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  PERFORM creditgate.lock_user(p_user_id, p_now, false);
  DELETE FROM public.credit_plan_subscriptions s WHERE s.user_id = p_user_id;
  RETURN FOUND;
END;
$$;

/** End a subscription: see creditgate.cancel_credit_plan_at. For service_role. */
CREATE OR REPLACE FUNCTION public.cancel_credit_plan(p_user_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.cancel_credit_plan_at(p_user_id, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.cancel_credit_plan(uuid)', 'service_role');

-- -----------------------------------------------------------------------------
-- Lots: read, revoke
-- -----------------------------------------------------------------------------

/**
 * Every lot of the user, the user caught up first (due lots and holds
 * expired): spendable lots (remaining > 0) first in spending order, then the
 * others, newest first.
 * Locks: the users row, only when the user has something due.
 * Errors: 22023, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.get_credit_lots_at(p_user_id uuid, p_now timestamptz)
RETURNS TABLE (lot_id uuid, category text, priority integer, granted integer, remaining integer,
               expires_at timestamptz, created_at timestamptz, reason text, spendable boolean, plan text,
               period_start timestamptz, expired_at timestamptz, revoked_at timestamptz, metadata jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  IF creditgate.user_due(p_user_id, p_now) THEN
    PERFORM creditgate.lock_user(p_user_id, p_now, false);
  ELSIF NOT EXISTS (SELECT FROM public.users u WHERE u.id = p_user_id) THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found', pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  RETURN QUERY
    SELECT l.id, l.category, l.priority, l.granted, l.remaining, l.expires_at, l.created_at, l.reason,
           l.remaining > 0, l.plan, l.period_start, l.expired_at, l.revoked_at, l.metadata
    FROM public.credit_lots l
    WHERE l.user_id = p_user_id
    ORDER BY l.remaining > 0 DESC,
             CASE WHEN l.remaining > 0 THEN l.priority END,
             CASE WHEN l.remaining > 0 THEN l.expires_at END,
             CASE WHEN l.remaining > 0 THEN l.created_at END,
             CASE WHEN l.remaining = 0 THEN l.created_at END DESC,
             l.id;
END;
$$;

SELECT creditgate.drop_other_versions('get_credit_lots', 'p_user_id uuid',
  'TABLE(lot_id uuid, category text, priority integer, granted integer, remaining integer, expires_at timestamp with time zone, created_at timestamp with time zone, reason text, spendable boolean, plan text, period_start timestamp with time zone, expired_at timestamp with time zone, revoked_at timestamp with time zone, metadata jsonb)');

/** A user's lots: see creditgate.get_credit_lots_at. For service_role. */
CREATE OR REPLACE FUNCTION public.get_credit_lots(p_user_id uuid)
RETURNS TABLE (lot_id uuid, category text, priority integer, granted integer, remaining integer,
               expires_at timestamptz, created_at timestamptz, reason text, spendable boolean, plan text,
               period_start timestamptz, expired_at timestamptz, revoked_at timestamptz, metadata jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY SELECT * FROM creditgate.get_credit_lots_at(p_user_id, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.get_credit_lots(uuid)', 'service_role');

/**
 * Takes back what remains of lot p_lot_id (never more): a lot_revocation
 * entry, revoked_at set. Credits that come back to it later leave again at
 * once. A second revoke changes nothing. Returns the new balance.
 * Locks: the users row (the user caught up), then the lot.
 * Errors: 22023, PT404 lot_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.revoke_credit_lot_at(p_lot_id uuid, p_reason text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_user_id uuid;
  v_lot public.credit_lots;
  v_balance integer;
BEGIN
  PERFORM creditgate.require_id('p_lot_id', p_lot_id);
  PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), false);
  SELECT l.user_id INTO v_user_id FROM public.credit_lots l WHERE l.id = p_lot_id;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'lot_not_found', 'Lot not found', pg_catalog.jsonb_build_object('lot_id', p_lot_id));
  END IF;
  v_balance := creditgate.lock_user(v_user_id, p_now, false);
  SELECT * INTO v_lot FROM public.credit_lots l WHERE l.id = p_lot_id FOR UPDATE;
  IF v_lot.revoked_at IS NOT NULL THEN
    RETURN v_balance;
  END IF;
  IF v_lot.remaining > 0 THEN
    RETURN creditgate.take_from_lot(p_lot_id, v_lot.remaining, 'lot_revocation', 'Lot revoked: ' || p_reason,
      false, p_now);
  END IF;
  UPDATE public.credit_lots l SET revoked_at = p_now WHERE l.id = p_lot_id;
  RETURN v_balance;
END;
$$;

/** Revoke a lot: see creditgate.revoke_credit_lot_at. For service_role. */
CREATE OR REPLACE FUNCTION public.revoke_credit_lot(p_lot_id uuid, p_reason text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.revoke_credit_lot_at(p_lot_id, p_reason, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.revoke_credit_lot(uuid, text)', 'service_role');

-- -----------------------------------------------------------------------------
-- Events and settings: read, set
-- -----------------------------------------------------------------------------

/**
 * The user's events after id p_after, oldest first, at most p_limit.
 * Errors: 22023.
 */
CREATE OR REPLACE FUNCTION public.get_credit_events(p_user_id uuid, p_after bigint DEFAULT 0, p_limit integer DEFAULT 100)
RETURNS TABLE (id bigint, type text, payload jsonb, created_at timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  PERFORM creditgate.require(p_after >= 0, 'p_after must be 0 or more',
    pg_catalog.jsonb_build_object('parameter', 'p_after', 'value', p_after));
  PERFORM creditgate.require_range('p_limit', p_limit, 1, 1000);
  RETURN QUERY
    SELECT e.id, e.type, e.payload, e.created_at FROM public.credit_events e
    WHERE e.user_id = p_user_id AND e.id > p_after
    ORDER BY e.id
    LIMIT p_limit;
END;
$$;
SELECT creditgate.expose('public.get_credit_events(uuid, bigint, integer)', 'service_role');

/** Sets the project defaults (NULL: unchanged) and returns them. Errors: 22023. */
CREATE OR REPLACE FUNCTION public.set_credit_settings(
  p_low_balance_threshold integer DEFAULT NULL, p_lot_expiring_seconds integer DEFAULT NULL)
RETURNS TABLE (low_balance_threshold integer, lot_expiring_seconds integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_low_balance_threshold IS NOT NULL THEN
    PERFORM creditgate.require_range('p_low_balance_threshold', p_low_balance_threshold, 0, creditgate.cost_credits_max());
  END IF;
  IF p_lot_expiring_seconds IS NOT NULL THEN
    PERFORM creditgate.require_range('p_lot_expiring_seconds', p_lot_expiring_seconds, 1, 31536000);
  END IF;
  RETURN QUERY
    UPDATE public.credit_settings s
    SET low_balance_threshold = coalesce(p_low_balance_threshold, s.low_balance_threshold),
        lot_expiring_seconds = coalesce(p_lot_expiring_seconds, s.lot_expiring_seconds)
    WHERE s.id
    RETURNING s.low_balance_threshold, s.lot_expiring_seconds;
END;
$$;
SELECT creditgate.expose('public.set_credit_settings(integer, integer)', 'service_role');

/**
 * Sets the user's low-balance threshold (NULL: the project's) and returns the
 * threshold now in force for the user.
 * Locks: the users row. Errors: 22023, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION public.set_low_balance_threshold(p_user_id uuid, p_threshold integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_threshold integer;
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  IF p_threshold IS NOT NULL THEN
    PERFORM creditgate.require_range('p_threshold', p_threshold, 0, creditgate.cost_credits_max());
  END IF;
  PERFORM FROM public.users u WHERE u.id = p_user_id AND u.closed_at IS NULL FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found', pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  INSERT INTO public.credit_user_settings AS us (user_id, low_balance_threshold) VALUES (p_user_id, p_threshold)
  ON CONFLICT ON CONSTRAINT credit_user_settings_pkey DO UPDATE SET low_balance_threshold = excluded.low_balance_threshold;
  SELECT coalesce(p_threshold, s.low_balance_threshold) INTO v_threshold FROM public.credit_settings s WHERE s.id;
  RETURN v_threshold;
END;
$$;
SELECT creditgate.expose('public.set_low_balance_threshold(uuid, integer)', 'service_role');

-- -----------------------------------------------------------------------------
-- Reconciliation
-- -----------------------------------------------------------------------------

SELECT creditgate.drop_other_versions('verify_credit_ledger', '',
  'TABLE(user_id uuid, problem text, details jsonb)');

/**
 * One row per inconsistency; empty means sound. Problems:
 *   balance_mismatch   users.credits <> the sum of the user's deltas
 *   negative_balance   a balance below zero (only a legacy row can be)
 *   chain_broken       balance_after <> the previous balance_after + delta, by id
 *   out_of_order       a later id with an earlier timestamp (rows from before creditgate excepted)
 *   job_settled_twice  a job with more than one settlement entry, or an open job with one
 *   job_ledger_mismatch a job whose ledger entries do not add up to what it kept
 *   lots_mismatch      a balance (0 or more) that is not the sum of the user's lots' remaining
 *   lot_ledger_mismatch a lot whose remaining is not granted + its movements
 *   entry_lots_mismatch an entry since lots whose delta is not its movements plus the lots it opened
 * Locks: none (reads one snapshot).
 */
CREATE OR REPLACE FUNCTION public.verify_credit_ledger()
RETURNS TABLE (user_id uuid, problem text, details jsonb)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  WITH sums AS (
    SELECT l.user_id, sum(l.delta) AS delta_sum FROM public.credit_ledger l GROUP BY l.user_id
  ),
  chained AS (
    SELECT l.id, l.user_id, l.delta, l.balance_after, l.created_at, l.entry_type,
           lag(l.balance_after) OVER w AS previous_balance,
           lag(l.created_at) OVER w AS previous_created_at,
           lag(l.entry_type) OVER w AS previous_entry_type
    FROM public.credit_ledger l
    WINDOW w AS (PARTITION BY l.user_id ORDER BY l.id)
  ),
  job_entries AS (
    SELECT l.job_id,
           sum(l.delta) AS delta_sum,
           count(*) FILTER (WHERE l.entry_type = 'charge') AS charges,
           count(*) FILTER (WHERE l.entry_type IN ('refund', 'expiry', 'completion')) AS settlements
    FROM public.credit_ledger l WHERE l.job_id IS NOT NULL GROUP BY l.job_id
  ),
  lot_sums AS (
    SELECT t.user_id, sum(t.remaining) AS remaining FROM public.credit_lots t GROUP BY t.user_id
  ),
  lot_movements AS (
    SELECT m.lot_id, sum(m.delta) AS delta_sum FROM public.credit_lot_movements m GROUP BY m.lot_id
  ),
  entry_movements AS (
    SELECT m.ledger_id, sum(m.delta) AS delta_sum FROM public.credit_lot_movements m GROUP BY m.ledger_id
  ),
  entry_lots AS (
    SELECT t.grant_entry_id, sum(t.granted) AS granted FROM public.credit_lots t
    WHERE t.grant_entry_id IS NOT NULL GROUP BY t.grant_entry_id
  )
  SELECT u.id, 'balance_mismatch',
         pg_catalog.jsonb_build_object('balance', u.credits, 'ledger_sum', coalesce(s.delta_sum, 0))
  FROM public.users u LEFT JOIN sums s ON s.user_id = u.id
  WHERE u.credits <> coalesce(s.delta_sum, 0)
  UNION ALL
  SELECT u.id, 'negative_balance', pg_catalog.jsonb_build_object('balance', u.credits)
  FROM public.users u WHERE u.credits < 0
  UNION ALL
  SELECT c.user_id, 'chain_broken',
         pg_catalog.jsonb_build_object('entry_id', c.id, 'balance_after', c.balance_after,
           'expected', coalesce(c.previous_balance, 0) + c.delta)
  FROM chained c WHERE c.balance_after <> coalesce(c.previous_balance, 0) + c.delta
  UNION ALL
  SELECT c.user_id, 'out_of_order',
         pg_catalog.jsonb_build_object('entry_id', c.id, 'created_at', c.created_at,
           'previous_created_at', c.previous_created_at)
  FROM chained c
  WHERE c.created_at < c.previous_created_at AND c.entry_type <> 'legacy' AND c.previous_entry_type <> 'legacy'
  UNION ALL
  SELECT j.user_id, 'job_settled_twice',
         pg_catalog.jsonb_build_object('job_id', j.id, 'status', j.status, 'settlements', e.settlements)
  FROM public.generation_jobs j JOIN job_entries e ON e.job_id = j.id
  WHERE e.settlements > 1 OR (e.settlements = 1 AND j.status = 'pending')
  UNION ALL
  SELECT j.user_id, 'job_ledger_mismatch',
         pg_catalog.jsonb_build_object('job_id', j.id, 'status', j.status, 'cost', j.cost,
           'captured', j.captured_credits, 'ledger_sum', e.delta_sum)
  FROM public.generation_jobs j JOIN job_entries e ON e.job_id = j.id
  WHERE e.charges <> 1
     OR -e.delta_sum <> CASE WHEN j.status = 'pending' THEN j.cost
                             ELSE coalesce(j.captured_credits, -1) END
  UNION ALL
  SELECT u.id, 'lots_mismatch',
         pg_catalog.jsonb_build_object('balance', u.credits, 'lots_remaining', coalesce(t.remaining, 0))
  FROM public.users u LEFT JOIN lot_sums t ON t.user_id = u.id
  WHERE u.credits >= 0 AND u.credits <> coalesce(t.remaining, 0)
  UNION ALL
  SELECT t.user_id, 'lot_ledger_mismatch',
         pg_catalog.jsonb_build_object('lot_id', t.id, 'granted', t.granted, 'remaining', t.remaining,
           'movements', coalesce(m.delta_sum, 0))
  FROM public.credit_lots t LEFT JOIN lot_movements m ON m.lot_id = t.id
  WHERE t.remaining <> t.granted + coalesce(m.delta_sum, 0)
  UNION ALL
  SELECT l.user_id, 'entry_lots_mismatch',
         pg_catalog.jsonb_build_object('entry_id', l.id, 'entry_type', l.entry_type, 'delta', l.delta,
           'movements', coalesce(m.delta_sum, 0), 'lots_opened', coalesce(o.granted, 0))
  FROM public.credit_ledger l
  LEFT JOIN entry_movements m ON m.ledger_id = l.id
  LEFT JOIN entry_lots o ON o.grant_entry_id = l.id
  WHERE l.id > (SELECT s.lots_since_entry_id FROM public.credit_settings s WHERE s.id)
    AND l.entry_type <> 'legacy'
    AND l.delta <> coalesce(m.delta_sum, 0) + coalesce(o.granted, 0)
$$;
SELECT creditgate.expose('public.verify_credit_ledger()', 'service_role');

-- -----------------------------------------------------------------------------
-- Upgrade: balances from before lots
-- -----------------------------------------------------------------------------
-- Each user without lots whose balance or open holds hold credits gets one
-- `legacy` lot (no expiry, no ledger entry: the balance does not change).
-- Open holds map to it: granted = balance + their costs, and each hold's
-- charge entry gets a movement of -cost on it, so a refund, expiry or
-- completion of such a hold gives back to the legacy lot like any other.
-- A re-run finds every such user with a lot and changes nothing.
DO $$
DECLARE
  v_user record;
  v_lot_id uuid;
BEGIN
  FOR v_user IN
    SELECT u.id, u.credits,
           coalesce((SELECT sum(j.cost) FROM public.generation_jobs j JOIN public.credit_ledger c
                       ON c.job_id = j.id AND c.entry_type = 'charge'
                     WHERE j.user_id = u.id AND j.status = 'pending'), 0)::integer AS held
    FROM public.users u
    WHERE u.credits >= 0
      AND NOT EXISTS (SELECT FROM public.credit_lots t WHERE t.user_id = u.id)
    ORDER BY u.id
    FOR UPDATE OF u
  LOOP
    CONTINUE WHEN v_user.credits = 0 AND v_user.held = 0;
    INSERT INTO public.credit_lots AS t (user_id, category, priority, granted, remaining, reason)
    VALUES (v_user.id, 'legacy', 50, v_user.credits + v_user.held, v_user.credits, 'balance before lots')
    RETURNING t.id INTO v_lot_id;
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta)
    SELECT c.id, v_lot_id, -j.cost
    FROM public.generation_jobs j JOIN public.credit_ledger c ON c.job_id = j.id AND c.entry_type = 'charge'
    WHERE j.user_id = v_user.id AND j.status = 'pending'
    ORDER BY c.id;
  END LOOP;
END
$$;

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA creditgate FROM PUBLIC;
NOTIFY pgrst, 'reload schema';
