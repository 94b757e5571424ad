-- =============================================================================
-- creditgate 2/4: credits. Charge (a hold), settle it (complete, refund,
-- expire), grant, balance and reconciliation. Words: docs/glossary.md.
--
-- Every public function is a thin wrapper: it reads the clock once and calls
-- an internal creditgate.*_at(..., p_now) that no client may call, so tests
-- drive time through p_now.
--
-- Functions on the request path are plpgsql, even one-line wrappers: a
-- SECURITY DEFINER function is never inlined, and PostgreSQL (before 18)
-- parses and plans a LANGUAGE sql function again at every call, where
-- plpgsql keeps its plans for the session. Only the named limits (constants)
-- and verify_credit_ledger (one query, run rarely) stay LANGUAGE sql.
--
-- Lock order, the same in every function so that no two calls can deadlock:
-- the rate_limits row (charge_credits_with_limit only), then the users row,
-- then that user's generation_jobs rows. Idempotency keys use a non-blocking
-- advisory lock, taken before any of them.
--
-- Errors (docs/rpc.md): SQLSTATE 22023 invalid_argument, PT402
-- insufficient_credits, PT404 user_not_found / job_not_found, PT409
-- job_already_settled / idempotency_in_flight, PT422 idempotency_key_reused.
-- The creditgate code is in HINT, machine-readable JSON in DETAIL.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Earlier versions' internal functions: the dead ones go, and those whose
-- parameter names or result changed are dropped so that CREATE OR REPLACE
-- below can install them (plpgsql callers find them by name at run time).
-- -----------------------------------------------------------------------------
DROP FUNCTION IF EXISTS creditgate.require_charge_arguments(uuid, text, integer, text, integer);
DROP FUNCTION IF EXISTS creditgate.void_open_holds(uuid, timestamptz, text, text, text, text, timestamptz);
DROP FUNCTION IF EXISTS creditgate.release_expired_holds(uuid, timestamptz);
DROP FUNCTION IF EXISTS creditgate.require_open(public.generation_jobs);
DROP FUNCTION IF EXISTS creditgate.require_idempotency_scope(text);
-- Before lots, the grant's clock twin had no expiry, category or priority.
DROP FUNCTION IF EXISTS creditgate.grant_credits_at(uuid, integer, text, text, jsonb, timestamptz);
DO $$
BEGIN
  IF (SELECT 'p_captured' = ANY (p.proargnames) FROM pg_catalog.pg_proc p WHERE p.oid =
      to_regprocedure('creditgate.settle_job(public.generation_jobs, text, integer, text, text, text, text, timestamptz)')) THEN
    DROP FUNCTION creditgate.settle_job(public.generation_jobs, text, integer, text, text, text, text, timestamptz);
  END IF;
  IF (SELECT 'p_operation' = ANY (p.proargnames) FROM pg_catalog.pg_proc p WHERE p.oid =
      to_regprocedure('creditgate.record_idempotency_key(uuid, text, text, text, jsonb, uuid)')) THEN
    DROP FUNCTION creditgate.record_idempotency_key(uuid, text, text, text, jsonb, uuid);
  END IF;
  IF (SELECT 'p_operation' = ANY (p.proargnames) FROM pg_catalog.pg_proc p WHERE p.oid =
      to_regprocedure('creditgate.claim_idempotency_key(uuid, text, text, text)')) THEN
    DROP FUNCTION creditgate.claim_idempotency_key(uuid, text, text, text);
  END IF;
  -- Before lots, apply_delta returned the balance only; now TABLE(new_balance, entry_id).
  IF (SELECT pg_catalog.pg_get_function_result(p.oid) NOT LIKE 'TABLE%' FROM pg_catalog.pg_proc p WHERE p.oid =
      to_regprocedure('creditgate.apply_delta(uuid, integer, text, text, text, jsonb, uuid)')) THEN
    DROP FUNCTION creditgate.apply_delta(uuid, integer, text, text, text, jsonb, uuid);
  END IF;
  IF (SELECT 'replayed' = ANY (p.proargnames) FROM pg_catalog.pg_proc p WHERE p.oid =
      to_regprocedure('creditgate.open_hold(uuid, text, integer, text, text, jsonb, integer, timestamptz)')) THEN
    DROP FUNCTION creditgate.open_hold(uuid, text, integer, text, text, jsonb, integer, timestamptz);
  END IF;
END
$$;

-- -----------------------------------------------------------------------------
-- Limits. Each is named, enforced before any change, and tested at the bound
-- and one past it.
-- -----------------------------------------------------------------------------

-- One charge or grant: two of them cannot overflow an integer.
CREATE OR REPLACE FUNCTION creditgate.cost_credits_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 1000000000 $$;
-- Balance plus open holds: every sum a function computes stays below 2^31.
CREATE OR REPLACE FUNCTION creditgate.balance_credits_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 2000000000 $$;
-- Stripe's limit for idempotency keys, and an index bound.
CREATE OR REPLACE FUNCTION creditgate.idempotency_key_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 255 $$;
-- An operation type is a name ("image_generation"), not a payload.
CREATE OR REPLACE FUNCTION creditgate.operation_type_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 64 $$;
-- Metadata is copied into the job and the ledger: keep rows small.
CREATE OR REPLACE FUNCTION creditgate.metadata_bytes_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 4096 $$;
-- A refund or grant reason is a sentence.
CREATE OR REPLACE FUNCTION creditgate.reason_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 500 $$;
-- The common URL limit of browsers and CDNs.
CREATE OR REPLACE FUNCTION creditgate.result_url_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 2048 $$;
-- A hold longer than a day is a lost job, not a slow one.
CREATE OR REPLACE FUNCTION creditgate.hold_seconds_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 86400 $$;
-- Rate limits: buckets per window (W/20 is the most a request can be refused early).
CREATE OR REPLACE FUNCTION creditgate.rate_limit_buckets() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 20 $$;
-- Requests (or weight units) per window: far above any per-user policy, and
-- small enough that no sum of weights in a window can overflow an integer.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 1000000 $$;
-- Windows from one second to one day.
CREATE OR REPLACE FUNCTION creditgate.window_seconds_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 86400 $$;
-- A limit key names a subject ("user:<uuid>", "ip:<address>"); also an index bound.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_key_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 255 $$;
-- A limit key as stored: a caller's (at most 255), or check_rate_limit's encoded
-- pair 'creditgate:check:' || length(type) || ':' || type || ':' || identifier,
-- at most 17 + 2 + 1 + 64 + 1 + 190 = 275 characters.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_stored_key_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 320 $$;
-- Entries of one apply_rate_limits / charge_credits_with_limits call.
CREATE OR REPLACE FUNCTION creditgate.rate_limits_per_call_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 16 $$;
-- check_rate_limit's p_type and p_identifier.
CREATE OR REPLACE FUNCTION creditgate.rate_limit_type_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 64 $$;
CREATE OR REPLACE FUNCTION creditgate.rate_limit_identifier_length_max() RETURNS integer
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT 190 $$;

-- These functions are the only place a limit is written. They are IMMUTABLE
-- and take no argument, so the planner evaluates a call once, when it plans
-- the expression that contains it (PL/pgSQL keeps that plan for the session):
-- `p_cost BETWEEN 1 AND creditgate.cost_credits_max()` runs as a comparison
-- with a constant, at the cost of a literal (measured: docs/rpc.md, Limits).

/**
 * Every limit, one row each, under a stable name: what tests compare with the
 * client's constants (src/types.rs). Owner only, like every creditgate function.
 */
CREATE OR REPLACE FUNCTION creditgate.limits()
RETURNS TABLE (name text, value bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT l.name, l.value FROM (VALUES
    (1, 'cost_credits_max', creditgate.cost_credits_max()::bigint),
    (2, 'balance_credits_max', creditgate.balance_credits_max()),
    (3, 'idempotency_key_length_max', creditgate.idempotency_key_length_max()),
    (4, 'operation_type_length_max', creditgate.operation_type_length_max()),
    (5, 'metadata_bytes_max', creditgate.metadata_bytes_max()),
    (6, 'reason_length_max', creditgate.reason_length_max()),
    (7, 'result_url_length_max', creditgate.result_url_length_max()),
    (8, 'hold_seconds_max', creditgate.hold_seconds_max()),
    (9, 'rate_limit_max', creditgate.rate_limit_max()),
    (10, 'window_seconds_max', creditgate.window_seconds_max()),
    (11, 'rate_limit_key_length_max', creditgate.rate_limit_key_length_max()),
    (12, 'rate_limit_stored_key_length_max', creditgate.rate_limit_stored_key_length_max()),
    (13, 'rate_limit_type_length_max', creditgate.rate_limit_type_length_max()),
    (14, 'rate_limit_identifier_length_max', creditgate.rate_limit_identifier_length_max()),
    (15, 'limits_per_call_max', creditgate.rate_limits_per_call_max()),
    (16, 'rate_limit_buckets', creditgate.rate_limit_buckets())
  ) AS l(position, name, value)
  ORDER BY l.position
$$;

-- -----------------------------------------------------------------------------
-- Errors and argument checks
-- -----------------------------------------------------------------------------

/**
 * Raises an error PostgREST turns into the right HTTP status: SQLSTATE
 * p_sqlstate, the creditgate code p_code in HINT, p_details (JSON) in DETAIL.
 */
CREATE OR REPLACE FUNCTION creditgate.fail(p_sqlstate text, p_code text, p_message text, p_details jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION USING
    ERRCODE = p_sqlstate,
    MESSAGE = p_message,
    DETAIL = coalesce(p_details, '{}'::jsonb)::text,
    HINT = p_code;
END;
$$;

/** Raises invalid_argument (22023) with p_message unless p_ok is true. */
CREATE OR REPLACE FUNCTION creditgate.require(p_ok boolean, p_message text, p_details jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_ok IS NOT TRUE THEN
    PERFORM creditgate.fail('22023', 'invalid_argument', p_message, p_details);
  END IF;
END;
$$;

/** Requires p_value (parameter p_name) within [p_min, p_max]; NULL is refused. */
CREATE OR REPLACE FUNCTION creditgate.require_range(p_name text, p_value integer, p_min integer, p_max integer)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require(p_value BETWEEN p_min AND p_max,
    pg_catalog.format('%s must be between %s and %s', p_name, p_min, p_max),
    pg_catalog.jsonb_build_object('parameter', p_name, 'value', p_value, 'min', p_min, 'max', p_max));
END;
$$;

/** Requires text parameter p_name to be at most p_max characters, and non-empty; NULL only when optional. */
CREATE OR REPLACE FUNCTION creditgate.require_text(p_name text, p_value text, p_max integer, p_optional boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_value IS NULL THEN
    PERFORM creditgate.require(p_optional, pg_catalog.format('%s is required', p_name),
      pg_catalog.jsonb_build_object('parameter', p_name));
  ELSE
    PERFORM creditgate.require(pg_catalog.char_length(p_value) BETWEEN 1 AND p_max,
      pg_catalog.format('%s must be 1 to %s characters', p_name, p_max),
      pg_catalog.jsonb_build_object('parameter', p_name, 'length', pg_catalog.char_length(p_value), 'max', p_max));
  END IF;
END;
$$;

/** Requires uuid parameter p_name to be given. */
CREATE OR REPLACE FUNCTION creditgate.require_id(p_name text, p_value uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require(p_value IS NOT NULL, pg_catalog.format('%s is required', p_name),
    pg_catalog.jsonb_build_object('parameter', p_name));
END;
$$;

/** Metadata as stored: NULL becomes {}; it must be a JSON object of at most metadata_bytes_max() bytes. */
CREATE OR REPLACE FUNCTION creditgate.clean_metadata(p_metadata jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
  v_bytes integer := pg_catalog.octet_length(v_metadata::text);
BEGIN
  PERFORM creditgate.require(pg_catalog.jsonb_typeof(v_metadata) = 'object', 'p_metadata must be a JSON object',
    pg_catalog.jsonb_build_object('parameter', 'p_metadata', 'type', pg_catalog.jsonb_typeof(v_metadata)));
  PERFORM creditgate.require(v_bytes <= creditgate.metadata_bytes_max(),
    pg_catalog.format('p_metadata must be at most %s bytes as JSON text', creditgate.metadata_bytes_max()),
    pg_catalog.jsonb_build_object('parameter', 'p_metadata', 'bytes', v_bytes, 'max', creditgate.metadata_bytes_max()));
  RETURN v_metadata;
END;
$$;

/**
 * Drops every public function named p_name whose arguments (names, types,
 * defaults) or result differ from ours, so CREATE OR REPLACE can install ours:
 * an older check_rate_limit of another signature, say. Existing callers of the
 * seed's signatures keep working because those signatures are ours.
 */
CREATE OR REPLACE FUNCTION creditgate.drop_other_versions(p_name text, p_arguments text, p_result text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_function regprocedure;
BEGIN
  FOR v_function IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'public'::regnamespace AND p.proname = p_name
      AND (pg_catalog.pg_get_function_arguments(p.oid) <> p_arguments
           OR pg_catalog.pg_get_function_result(p.oid) <> p_result)
  LOOP
    RAISE NOTICE 'creditgate: replacing %', v_function;
    EXECUTE pg_catalog.format('DROP FUNCTION %s', v_function);
  END LOOP;
END;
$$;

-- -----------------------------------------------------------------------------
-- Balance changes: the one path every credit movement takes
-- -----------------------------------------------------------------------------

/**
 * Adds p_delta to the user's balance and appends the ledger row that records
 * it, with balance_after; a decrease that crosses the user's low-balance
 * threshold or reaches 0 writes its balance event (creditgate.note_balance_drop).
 * Returns the new balance and the entry's id. The caller moves the lots the
 * entry touches (20250601000500_creditgate_lots.sql): draw_lots,
 * return_to_lots, take_from_lot, or a new lot.
 * Locks: the caller holds the users row (creditgate.lock_user).
 */
CREATE OR REPLACE FUNCTION creditgate.apply_delta(
  p_user_id uuid, p_delta integer, p_entry_type text, p_operation_type text,
  p_description text, p_metadata jsonb, p_job_id uuid)
RETURNS TABLE (new_balance integer, entry_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  UPDATE public.users u SET credits = u.credits + p_delta WHERE u.id = p_user_id
  RETURNING u.credits INTO new_balance;

  INSERT INTO public.credit_ledger AS l
    (user_id, delta, balance_after, operation_type, description, metadata, job_id, entry_type)
  VALUES
    (p_user_id, p_delta, new_balance, p_operation_type, p_description, p_metadata, p_job_id, p_entry_type)
  RETURNING l.id INTO entry_id;
  IF p_delta < 0 THEN
    PERFORM creditgate.note_balance_drop(p_user_id, new_balance - p_delta, new_balance, entry_id);
  END IF;
  RETURN NEXT;
END;
$$;

/**
 * Settles an open job once: status p_status, p_kept credits kept, the rest of
 * the hold returned with a ledger entry of type p_entry_type (its
 * operation_type is the job's). Returns the new balance.
 * Locks: the caller holds the users row, then the job row.
 */
CREATE OR REPLACE FUNCTION creditgate.settle_job(
  p_job public.generation_jobs, p_status text, p_kept integer, p_entry_type text,
  p_description text, p_error_message text, p_result_url text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_returned integer := p_job.cost - p_kept;
  v_balance integer;
  v_entry_id bigint;
BEGIN
  UPDATE public.generation_jobs j
  SET status = p_status,
      completed_at = p_now,
      captured_credits = p_kept,
      refunded_credits = v_returned,
      error_message = coalesce(p_error_message, j.error_message),
      result_url = coalesce(p_result_url, j.result_url)
  WHERE j.id = p_job.id;

  IF v_returned > 0 THEN
    SELECT d.new_balance, d.entry_id INTO v_balance, v_entry_id
    FROM creditgate.apply_delta(p_job.user_id, v_returned, p_entry_type, p_job.operation_type, p_description,
      pg_catalog.jsonb_build_object('job_id', p_job.id), p_job.id) d;
    IF p_entry_type = 'expiry' THEN
      PERFORM creditgate.record_event(p_job.user_id, 'hold_expired', pg_catalog.jsonb_build_object(
        'job_id', p_job.id, 'operation_type', p_job.operation_type, 'cost', p_job.cost, 'entry_id', v_entry_id));
    END IF;
    -- Back to the lots the charge drew from; what comes back to an expired
    -- or revoked lot leaves again at once (the balance returned is after that).
    RETURN creditgate.return_to_lots(p_job, v_returned, v_entry_id, p_now);
  END IF;
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_job.user_id;
  RETURN v_balance;
END;
$$;

/**
 * Settles each pending job of the user due at or before p_due_by, returning
 * its whole hold (status p_status, a ledger entry of type p_entry_type):
 * expiry, or the refunds of an account closure. Returns how many.
 * Locks: the caller holds the users row; this locks the jobs.
 */
CREATE OR REPLACE FUNCTION creditgate.settle_pending_jobs(
  p_user_id uuid, p_due_by timestamptz, p_status text, p_entry_type text,
  p_description text, p_error_message text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_job public.generation_jobs;
  v_settled integer := 0;
BEGIN
  FOR v_job IN
    SELECT * FROM public.generation_jobs j
    WHERE j.user_id = p_user_id AND j.status = 'pending' AND j.expires_at <= p_due_by
    ORDER BY j.expires_at, j.id
    FOR UPDATE
  LOOP
    PERFORM creditgate.settle_job(v_job, p_status, 0, p_entry_type, p_description, p_error_message, NULL, p_now);
    v_settled := v_settled + 1;
  END LOOP;
  RETURN v_settled;
END;
$$;

/**
 * Expires the user's holds whose deadline is at or before p_now (status
 * expired, an expiry entry returning the whole hold). Returns how many.
 * Locks: the caller holds the users row; this locks the jobs.
 */
CREATE OR REPLACE FUNCTION creditgate.expire_holds(p_user_id uuid, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.settle_pending_jobs(p_user_id, p_now, 'expired', 'expiry', 'Hold expired',
    'Hold expired before completion', p_now);
END;
$$;

/**
 * True when the user has something due at p_now: a hold past its deadline, a
 * lot past its expiry with credits left, or a plan period whose allowance is
 * not granted yet. One query of three index probes.
 */
CREATE OR REPLACE FUNCTION creditgate.user_due(p_user_id uuid, p_now timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN EXISTS (SELECT FROM public.generation_jobs j
                 WHERE j.user_id = p_user_id AND j.status = 'pending' AND j.expires_at <= p_now)
      OR EXISTS (SELECT FROM public.credit_lots l
                 WHERE l.user_id = p_user_id AND l.spendable AND l.expires_at <= p_now)
      OR EXISTS (SELECT FROM public.credit_plan_subscriptions s
                 WHERE s.user_id = p_user_id AND s.next_period_start <= p_now);
END;
$$;

/**
 * Locks the user's row, catches the user up (creditgate.catch_up: the due
 * plan allowance granted, holds past their deadline expired, lots past
 * their expiry expired; so an expired hold never blocks a charge and an
 * expired lot is never spent) and returns the balance. One read of the row;
 * the catch-up runs only when creditgate.user_due finds something, which
 * most calls do not.
 * Locks: the users row (FOR UPDATE), then the user's expired jobs, then lots.
 * Errors: PT404 user_not_found; also when p_open and the account is closed.
 */
CREATE OR REPLACE FUNCTION creditgate.lock_user(p_user_id uuid, p_now timestamptz, p_open boolean)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_closed_at timestamptz;
  v_balance integer;
BEGIN
  SELECT u.closed_at, u.credits INTO v_closed_at, v_balance
  FROM public.users u WHERE u.id = p_user_id FOR UPDATE;
  IF NOT FOUND OR (p_open AND v_closed_at IS NOT NULL) THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found',
      pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  IF creditgate.user_due(p_user_id, p_now) THEN
    PERFORM creditgate.catch_up(p_user_id, p_now);
    SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  END IF;
  RETURN v_balance;
END;
$$;

/** Raises PT409 job_already_settled unless the job is pending. */
CREATE OR REPLACE FUNCTION creditgate.require_pending(p_job public.generation_jobs)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_job.status <> 'pending' THEN
    PERFORM creditgate.fail('PT409', 'job_already_settled', 'Job already settled',
      pg_catalog.jsonb_build_object('job_id', p_job.id, 'status', p_job.status));
  END IF;
END;
$$;

-- -----------------------------------------------------------------------------
-- Idempotency (IETF Idempotency-Key draft, Stripe): keys scoped per user and
-- per kind of request (the scope: 'charge' for every charge function, 'grant'
-- for grant_credits); within a scope, same key and request -> the original
-- result; same key, other request -> PT422; same key while the first is still
-- running -> PT409. The same key in the other scope is another key.
-- Every path claims a key with claim_idempotency_key and stores its result
-- with record_idempotency_key, once per call.
-- -----------------------------------------------------------------------------

/**
 * Claims (p_user_id, p_scope, p_key) for this transaction, p_scope being
 * 'charge' or 'grant', and returns the stored response of an earlier
 * identical request (same p_request_hash) in that scope, or NULL when the key
 * is new there (or NULL). The claim is a transaction-scoped advisory lock on
 * the scoped key, taken without waiting: held by another transaction means
 * that request is in flight. The same key in the other scope is not looked at.
 * Errors: 22023 (unknown scope), PT409 idempotency_in_flight, PT422
 * idempotency_key_reused.
 */
CREATE OR REPLACE FUNCTION creditgate.claim_idempotency_key(
  p_user_id uuid, p_key text, p_scope text, p_request_hash text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_stored public.idempotency_keys;
BEGIN
  IF p_key IS NULL THEN
    RETURN NULL;
  END IF;
  IF p_scope IS DISTINCT FROM 'charge' AND p_scope IS DISTINCT FROM 'grant' THEN
    PERFORM creditgate.require(false, 'the idempotency scope must be charge or grant',
      pg_catalog.jsonb_build_object('parameter', 'p_operation', 'value', p_scope));
  END IF;
  -- A uuid has no ':' and a scope is one word: the lock name is unambiguous.
  IF NOT pg_catalog.pg_try_advisory_xact_lock(
      pg_catalog.hashtextextended(p_user_id::text || ':' || p_scope || ':' || p_key, 7146)) THEN
    PERFORM creditgate.fail('PT409', 'idempotency_in_flight',
      'A request with this idempotency key is still in progress',
      pg_catalog.jsonb_build_object('idempotency_key', p_key, 'operation', p_scope));
  END IF;

  SELECT * INTO v_stored FROM public.idempotency_keys k
  WHERE k.user_id = p_user_id AND k.operation = p_scope AND k.key = p_key;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF v_stored.request_hash IS DISTINCT FROM p_request_hash OR v_stored.response IS NULL THEN
    PERFORM creditgate.fail('PT422', 'idempotency_key_reused',
      'This idempotency key was already used for a different request',
      pg_catalog.jsonb_build_object('idempotency_key', p_key, 'operation', v_stored.operation));
  END IF;
  RETURN v_stored.response;
END;
$$;

/**
 * Stores what a retry with (p_user_id, p_scope, p_key) gets back, after
 * creditgate.claim_idempotency_key claimed it. Does nothing for a NULL key.
 * Errors: 22023 (unknown scope).
 */
CREATE OR REPLACE FUNCTION creditgate.record_idempotency_key(
  p_user_id uuid, p_key text, p_scope text, p_request_hash text, p_response jsonb, p_job_id uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_key IS NOT NULL THEN
    IF p_scope IS DISTINCT FROM 'charge' AND p_scope IS DISTINCT FROM 'grant' THEN
      PERFORM creditgate.require(false, 'the idempotency scope must be charge or grant',
        pg_catalog.jsonb_build_object('parameter', 'p_operation', 'value', p_scope));
    END IF;
    INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
    VALUES (p_user_id, p_key, p_scope, 'completed', p_request_hash, p_response, p_job_id);
  END IF;
END;
$$;

/** The fingerprint of a charge request: what must match for a retry to replay. */
CREATE OR REPLACE FUNCTION creditgate.charge_request_hash(
  p_operation_type text, p_cost integer, p_metadata jsonb, p_hold_seconds integer)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN pg_catalog.md5(pg_catalog.jsonb_build_object(
    'operation_type', p_operation_type, 'cost', p_cost,
    'metadata', p_metadata, 'hold_seconds', p_hold_seconds)::text);
END;
$$;

-- -----------------------------------------------------------------------------
-- Charge: a hold. Every charge function (charge_credits, atomic_charge_credits,
-- charge_credits_with_limit(s)) checks its arguments once with
-- check_charge_arguments, then calls charge_checked, which hashes the request,
-- claims the key, spends the limits and opens the hold (open_hold), once each.
-- -----------------------------------------------------------------------------

/**
 * Checks a charge's arguments and returns its metadata as stored ({} for
 * NULL). The whole check is one expression; the precise checks run only when
 * it fails, to raise the error that names the parameter.
 * Errors: 22023 invalid_argument.
 */
CREATE OR REPLACE FUNCTION creditgate.check_charge_arguments(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text, p_metadata jsonb,
  p_hold_seconds integer)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
BEGIN
  IF NOT (p_user_id IS NOT NULL
          AND pg_catalog.char_length(p_operation_type) BETWEEN 1 AND creditgate.operation_type_length_max()
          AND p_cost BETWEEN 1 AND creditgate.cost_credits_max()
          AND (p_idempotency_key IS NULL
               OR pg_catalog.char_length(p_idempotency_key) BETWEEN 1 AND creditgate.idempotency_key_length_max())
          AND p_hold_seconds BETWEEN 1 AND creditgate.hold_seconds_max()) IS TRUE THEN
    PERFORM creditgate.require_id('p_user_id', p_user_id);
    PERFORM creditgate.require_text('p_operation_type', p_operation_type, creditgate.operation_type_length_max(), false);
    PERFORM creditgate.require_range('p_cost', p_cost, 1, creditgate.cost_credits_max());
    PERFORM creditgate.require_text('p_idempotency_key', p_idempotency_key, creditgate.idempotency_key_length_max(), true);
    PERFORM creditgate.require_range('p_hold_seconds', p_hold_seconds, 1, creditgate.hold_seconds_max());
  END IF;
  IF (pg_catalog.jsonb_typeof(v_metadata) = 'object'
      AND pg_catalog.octet_length(v_metadata::text) <= creditgate.metadata_bytes_max()) THEN
    RETURN v_metadata;
  END IF;
  RETURN creditgate.clean_metadata(p_metadata);
END;
$$;

/**
 * The hold itself: locks the user, takes p_cost credits, opens the job until
 * p_now + p_hold_seconds and records what a retry with p_idempotency_key gets
 * back (p_request_hash is its fingerprint). Called by charge_checked only,
 * with checked arguments and the key claimed.
 * Locks: the users row, then the user's expired jobs.
 * Errors: PT402 insufficient_credits {"balance","needed"}, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.open_hold(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text, p_request_hash text,
  p_metadata jsonb, p_hold_seconds integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, new_balance integer, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_balance integer;
  v_closed_at timestamptz;
  v_threshold integer;
  v_entry_id bigint;
  v_job_id uuid;
  v_lot_id uuid;
  v_expires_at timestamptz;
BEGIN
  -- The charge is the hottest path: the helpers it would call
  -- (creditgate.lock_user, user_due, apply_delta, note_balance_drop,
  -- draw_lots' common case, record_idempotency_key) are written out here,
  -- statement for statement, saving a SECURITY DEFINER call each
  -- (docs/scaling.md, "Where the time goes"). Rare branches
  -- (catch-up, a balance event, a charge spanning lots) still call them.
  -- lock_user (p_open): the users row, then the catch-up if anything is due.
  SELECT u.closed_at, u.credits INTO v_closed_at, v_balance
  FROM public.users u WHERE u.id = p_user_id FOR UPDATE;
  IF NOT FOUND OR v_closed_at IS NOT NULL THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found',
      pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  IF EXISTS (SELECT FROM public.generation_jobs j
             WHERE j.user_id = p_user_id AND j.status = 'pending' AND j.expires_at <= p_now)
     OR EXISTS (SELECT FROM public.credit_lots l
                WHERE l.user_id = p_user_id AND l.spendable AND l.expires_at <= p_now)
     OR EXISTS (SELECT FROM public.credit_plan_subscriptions s
                WHERE s.user_id = p_user_id AND s.next_period_start <= p_now) THEN
    PERFORM creditgate.catch_up(p_user_id, p_now);
    SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  END IF;
  IF v_balance < p_cost THEN
    PERFORM creditgate.fail('PT402', 'insufficient_credits',
      pg_catalog.format('Insufficient credits: has %s needs %s', v_balance, p_cost),
      pg_catalog.jsonb_build_object('balance', v_balance, 'needed', p_cost));
  END IF;

  v_expires_at := p_now + pg_catalog.make_interval(secs => p_hold_seconds);
  INSERT INTO public.generation_jobs AS j
    (user_id, operation_type, status, cost, idempotency_key, metadata, created_at, expires_at)
  VALUES
    (p_user_id, p_operation_type, 'pending', p_cost, p_idempotency_key, p_metadata, p_now, v_expires_at)
  RETURNING j.id INTO v_job_id;

  -- apply_delta: the balance and its ledger entry; the low-balance threshold
  -- read in the same statement (note_balance_drop runs only on a crossing).
  UPDATE public.users u SET credits = u.credits - p_cost WHERE u.id = p_user_id
  RETURNING u.credits,
    (SELECT coalesce(us.low_balance_threshold, cs.low_balance_threshold)
     FROM public.credit_settings cs LEFT JOIN public.credit_user_settings us ON us.user_id = p_user_id
     WHERE cs.id)
  INTO v_balance, v_threshold;
  INSERT INTO public.credit_ledger AS l
    (user_id, delta, balance_after, operation_type, description, metadata, job_id, entry_type)
  VALUES
    (p_user_id, -p_cost, v_balance, p_operation_type, p_operation_type || ' generation',
     p_metadata || pg_catalog.jsonb_build_object('job_id', v_job_id, 'idempotency_key', p_idempotency_key),
     v_job_id, 'charge')
  RETURNING l.id INTO v_entry_id;
  IF v_balance + p_cost > 0 AND (v_balance = 0 OR (v_balance + p_cost >= v_threshold AND v_balance < v_threshold)) THEN
    PERFORM creditgate.note_balance_drop(p_user_id, v_balance + p_cost, v_balance, v_entry_id);
  END IF;

  -- draw_lots' common case: the first lot in spending order covers it (the
  -- users row lock keeps other writers off the user's lots).
  UPDATE public.credit_lots l SET remaining = l.remaining - p_cost
  WHERE l.id = (SELECT f.id FROM public.credit_lots f WHERE f.user_id = p_user_id AND f.spendable
                ORDER BY f.priority, f.expires_at, f.created_at, f.id LIMIT 1)
    AND l.remaining >= p_cost
  RETURNING l.id INTO v_lot_id;
  IF v_lot_id IS NOT NULL THEN
    INSERT INTO public.credit_lot_movements (ledger_id, lot_id, delta) VALUES (v_entry_id, v_lot_id, -p_cost);
  ELSE
    PERFORM creditgate.draw_lots(p_user_id, p_cost, v_entry_id);
  END IF;

  -- record_idempotency_key for the 'charge' scope.
  IF p_idempotency_key IS NOT NULL THEN
    INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
    VALUES (p_user_id, p_idempotency_key, 'charge', 'completed', p_request_hash,
            pg_catalog.jsonb_build_object('job_id', v_job_id, 'new_balance', v_balance, 'expires_at', v_expires_at),
            v_job_id);
  END IF;
  RETURN QUERY SELECT v_job_id, v_balance, v_expires_at;
END;
$$;

/**
 * A charge whose arguments are checked (check_charge_arguments; p_metadata
 * as it returned it) and whose limits are normalised (parse_rate_limits, or
 * '[]'): hashes the request and claims the key (when there is one), spends
 * the limits unless it is a replay, then opens the hold. A replay returns the
 * original job (replayed = true) and spends nothing; a refusal by a limit
 * returns allowed = false and the job fields NULL.
 * Locks: idempotency claim, the rate_limits rows (canonical order; not for a
 * refusal), the users row, the user's jobs.
 * Errors: those of claim_idempotency_key and open_hold.
 */
CREATE OR REPLACE FUNCTION creditgate.charge_checked(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text, p_metadata jsonb,
  p_hold_seconds integer, p_limits jsonb, p_now timestamptz)
RETURNS TABLE (allowed boolean, job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz,
               limits jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_hash text;
  v_replay jsonb;
  v_rates jsonb := '{"allowed": true, "limits": []}'::jsonb;
  v_hold record;
BEGIN
  IF p_idempotency_key IS NOT NULL THEN
    -- creditgate.charge_request_hash, written out (a pgTAP test keeps them equal).
    v_hash := pg_catalog.md5(pg_catalog.jsonb_build_object(
      'operation_type', p_operation_type, 'cost', p_cost,
      'metadata', p_metadata, 'hold_seconds', p_hold_seconds)::text);
    v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge', v_hash);
  END IF;
  IF pg_catalog.jsonb_array_length(p_limits) > 0 THEN
    IF p_limits @? '$[*] ? (exists(@.units) || exists(@.concurrency) || exists(@.plan))' THEN
      -- Concurrency, unit or plan limits: creditgate.charge_with_limit_kinds
      -- (20250601000300); plain rate limits never take this path.
      RETURN QUERY SELECT * FROM creditgate.charge_with_limit_kinds(p_user_id, p_operation_type, p_cost,
        p_idempotency_key, v_hash, v_replay, p_metadata, p_hold_seconds, p_limits, p_now);
      RETURN;
    END IF;
    -- Rate limits live in 20250601000300_creditgate_rate_limits.sql.
    v_rates := creditgate.apply_rate_limits_at(p_limits, v_replay IS NULL, p_now);
  END IF;

  IF v_replay IS NOT NULL THEN
    RETURN QUERY SELECT true, (v_replay ->> 'job_id')::uuid, (v_replay ->> 'new_balance')::integer, true,
      (v_replay ->> 'expires_at')::timestamptz, v_rates -> 'limits';
    RETURN;
  END IF;
  IF NOT (v_rates ->> 'allowed')::boolean THEN
    RETURN QUERY SELECT false, NULL::uuid, NULL::integer, false, NULL::timestamptz, v_rates -> 'limits';
    RETURN;
  END IF;

  SELECT h.* INTO v_hold FROM creditgate.open_hold(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_hash,
    p_metadata, p_hold_seconds, p_now) h;
  RETURN QUERY SELECT true, v_hold.job_id, v_hold.new_balance, false, v_hold.expires_at, v_rates -> 'limits';
END;
$$;

/**
 * Takes p_cost credits from the user's balance and opens a job holding them
 * until p_now + p_hold_seconds. With a key, a retry returns the original job
 * and balance (replayed = true) and charges nothing; without one, no
 * idempotency work is done at all.
 * Locks: idempotency claim, the users row, then the user's expired jobs.
 * Errors: 22023, PT402 insufficient_credits {"balance","needed"}, PT404
 * user_not_found, PT409 idempotency_in_flight, PT422 idempotency_key_reused.
 */
CREATE OR REPLACE FUNCTION creditgate.charge_credits_at(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text,
  p_metadata jsonb, p_hold_seconds integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := creditgate.check_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key,
    p_metadata, p_hold_seconds);
BEGIN
  RETURN QUERY
    SELECT c.job_id, c.new_balance, c.replayed, c.expires_at
    FROM creditgate.charge_checked(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_metadata,
      p_hold_seconds, '[]'::jsonb, p_now) c;
END;
$$;

SELECT creditgate.drop_other_versions('charge_credits',
  $a$p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900$a$,
  'TABLE(job_id uuid, new_balance integer, replayed boolean, expires_at timestamp with time zone)');

/**
 * Charge with a hold of p_hold_seconds (default 15 minutes): see
 * creditgate.charge_credits_at. For service_role.
 */
CREATE OR REPLACE FUNCTION public.charge_credits(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb, p_hold_seconds integer DEFAULT 900)
RETURNS TABLE (job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  -- creditgate.charge_credits_at's body at the clock's time (one call less).
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_metadata jsonb := creditgate.check_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key,
    p_metadata, p_hold_seconds);
BEGIN
  RETURN QUERY
    SELECT c.job_id, c.new_balance, c.replayed, c.expires_at
    FROM creditgate.charge_checked(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_metadata,
      p_hold_seconds, '[]'::jsonb, v_now) c;
END;
$$;
SELECT creditgate.expose('public.charge_credits(uuid, text, integer, text, jsonb, integer)', 'service_role');

SELECT creditgate.drop_other_versions('atomic_charge_credits',
  $a$p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb$a$,
  'TABLE(job_id uuid, new_balance integer)');

/**
 * The seed's charge, same signature and result: charge_credits with the
 * default hold (900 s), with creditgate.charge_credits_at's body written out
 * (one SECURITY DEFINER call less). A retry with the same key returns the
 * original row.
 */
CREATE OR REPLACE FUNCTION public.atomic_charge_credits(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (job_id uuid, new_balance integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  -- creditgate.charge_credits_at's body at the clock's time (one call less).
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_metadata jsonb := creditgate.check_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key,
    p_metadata, 900);
BEGIN
  RETURN QUERY
    SELECT c.job_id, c.new_balance
    FROM creditgate.charge_checked(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_metadata,
      900, '[]'::jsonb, v_now) c;
END;
$$;
SELECT creditgate.expose('public.atomic_charge_credits(uuid, text, integer, text, jsonb)', 'service_role');

-- -----------------------------------------------------------------------------
-- Settlement: complete, refund
-- -----------------------------------------------------------------------------

/**
 * Completes an open job: keeps p_actual_cost (default: the whole hold) and
 * returns the rest of the hold in the same transaction.
 * Locks: the users row (expiring due holds), then the job.
 * An expired hold (deadline passed; expired by this call or earlier) is
 * not an error: one row (job_id, 'expired', balance, refunded = the hold),
 * the expiry committed with the caller's transaction; callers
 * treat status 'expired' as job_already_settled.
 * Errors: 22023 (p_actual_cost outside 0..cost, p_result_url not http(s)),
 * PT404 job_not_found, PT409 job_already_settled (completed or failed).
 */
CREATE OR REPLACE FUNCTION creditgate.complete_job_at(
  p_job_id uuid, p_result_url text, p_actual_cost integer, p_actual_units integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, status text, new_balance integer, refunded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_user_id uuid;
  v_units jsonb;
  v_status text;
  v_job public.generation_jobs;
  v_kept integer;
  v_balance integer;
BEGIN
  -- One expression; the precise checks run only to raise the error.
  IF NOT (p_job_id IS NOT NULL
          AND (p_result_url IS NULL OR (pg_catalog.char_length(p_result_url) BETWEEN 1 AND creditgate.result_url_length_max()
                                        AND p_result_url ~* '^https?://'))
          AND (p_actual_cost IS NULL OR p_actual_cost BETWEEN 0 AND creditgate.cost_credits_max())
          AND (p_actual_units IS NULL OR p_actual_units BETWEEN 0 AND creditgate.rate_limit_max())) IS TRUE THEN
    PERFORM creditgate.require_id('p_job_id', p_job_id);
    PERFORM creditgate.require_text('p_result_url', p_result_url, creditgate.result_url_length_max(), true);
    PERFORM creditgate.require(p_result_url IS NULL OR p_result_url ~* '^https?://',
      'p_result_url must be an http:// or https:// URL',
      pg_catalog.jsonb_build_object('parameter', 'p_result_url', 'allowed_schemes', pg_catalog.jsonb_build_array('http', 'https')));
    IF p_actual_cost IS NOT NULL THEN
      PERFORM creditgate.require_range('p_actual_cost', p_actual_cost, 0, creditgate.cost_credits_max());
    END IF;
    IF p_actual_units IS NOT NULL THEN
      PERFORM creditgate.require_range('p_actual_units', p_actual_units, 0, creditgate.rate_limit_max());
    END IF;
  END IF;

  SELECT j.user_id, j.limit_units, j.status INTO v_user_id, v_units, v_status
  FROM public.generation_jobs j WHERE j.id = p_job_id;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'job_not_found', 'Job not found', pg_catalog.jsonb_build_object('job_id', p_job_id));
  END IF;
  IF v_units IS NOT NULL AND p_actual_units IS NOT NULL AND v_status = 'pending' THEN
    -- The unit limits' rows before the user, in the order a charge takes them.
    PERFORM creditgate.lock_unit_rows(v_units);
  END IF;
  v_balance := creditgate.lock_user(v_user_id, p_now, false);
  SELECT * INTO v_job FROM public.generation_jobs j WHERE j.id = p_job_id FOR UPDATE;
  IF v_job.status = 'expired' THEN
    -- The hold expired (just now in lock_user, or earlier): not
    -- an error, which would roll the expiry back. One row says so:
    -- status 'expired', the whole hold refunded, the balance; nothing kept.
    RETURN QUERY SELECT v_job.id, 'expired'::text, v_balance, v_job.cost;
    RETURN;
  END IF;
  IF v_job.status <> 'pending' THEN
    PERFORM creditgate.require_pending(v_job);
  END IF;
  IF p_actual_cost > v_job.cost THEN
    PERFORM creditgate.require(false, 'p_actual_cost cannot exceed the held amount',
      pg_catalog.jsonb_build_object('parameter', 'p_actual_cost', 'value', p_actual_cost, 'held', v_job.cost));
  END IF;

  v_kept := coalesce(p_actual_cost, v_job.cost);
  v_balance := creditgate.settle_job(v_job, 'completed', v_kept, 'completion',
    'Completion: unused part of the hold returned', NULL, p_result_url, p_now);
  IF v_job.limit_units IS NOT NULL AND p_actual_units IS NOT NULL THEN
    PERFORM creditgate.correct_units(v_job, p_actual_units);
  END IF;
  RETURN QUERY SELECT v_job.id, 'completed'::text, v_balance, v_job.cost - v_kept;
END;
$$;

/** complete_job_at without units: the clock twin tests call. */
CREATE OR REPLACE FUNCTION creditgate.complete_generation_job_at(
  p_job_id uuid, p_result_url text, p_actual_cost integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, status text, new_balance integer, refunded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY SELECT * FROM creditgate.complete_job_at(p_job_id, p_result_url, p_actual_cost, NULL, p_now);
END;
$$;

SELECT creditgate.drop_other_versions('complete_generation_job',
  'p_job_id uuid, p_result_url text DEFAULT NULL::text, p_actual_cost integer DEFAULT NULL::integer, p_actual_units integer DEFAULT NULL::integer',
  'TABLE(job_id uuid, status text, new_balance integer, refunded integer)');

/** Complete a job: see creditgate.complete_generation_job_at. For service_role. */
CREATE OR REPLACE FUNCTION public.complete_generation_job(
  p_job_id uuid, p_result_url text DEFAULT NULL, p_actual_cost integer DEFAULT NULL, p_actual_units integer DEFAULT NULL)
RETURNS TABLE (job_id uuid, status text, new_balance integer, refunded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.complete_job_at(p_job_id, p_result_url, p_actual_cost, p_actual_units,
      pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.complete_generation_job(uuid, text, integer, integer)', 'service_role');

/**
 * Refunds an open job of this user: the whole hold goes back (status failed),
 * and the whole units estimate to its unit limits (creditgate.correct_units).
 * p_amount must be NULL or exactly the held amount.
 * Locks: the users row (expiring due holds), then the job.
 * An expired hold (expired by this call or earlier) is not an error: the
 * new balance is returned and the job stays 'expired' (refunded_credits =
 * cost); read generation_jobs.status to tell it from a refund.
 * Errors: 22023, PT404 user_not_found / job_not_found (also another user's
 * job), PT409 job_already_settled (completed or failed).
 */
CREATE OR REPLACE FUNCTION creditgate.refund_credits_at(
  p_user_id uuid, p_job_id uuid, p_amount integer, p_reason text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_job public.generation_jobs;
  v_units jsonb;
  v_balance integer;
  v_reason text := coalesce(p_reason, 'no reason given');
BEGIN
  -- One expression; the precise checks run only to raise the error.
  IF NOT (p_user_id IS NOT NULL AND p_job_id IS NOT NULL
          AND (p_amount IS NULL OR p_amount BETWEEN 1 AND creditgate.cost_credits_max())
          AND (p_reason IS NULL OR pg_catalog.char_length(p_reason) BETWEEN 1 AND creditgate.reason_length_max())) IS TRUE THEN
    PERFORM creditgate.require_id('p_user_id', p_user_id);
    PERFORM creditgate.require_id('p_job_id', p_job_id);
    IF p_amount IS NOT NULL THEN
      PERFORM creditgate.require_range('p_amount', p_amount, 1, creditgate.cost_credits_max());
    END IF;
    PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), true);
  END IF;

  SELECT j.limit_units INTO v_units FROM public.generation_jobs j
  WHERE j.id = p_job_id AND j.user_id = p_user_id AND j.status = 'pending';
  IF v_units IS NOT NULL THEN
    -- The unit limits' rows before the user, in the order a charge takes them.
    PERFORM creditgate.lock_unit_rows(v_units);
  END IF;
  v_balance := creditgate.lock_user(p_user_id, p_now, false);
  SELECT * INTO v_job FROM public.generation_jobs j WHERE j.id = p_job_id AND j.user_id = p_user_id FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'job_not_found', 'Job not found', pg_catalog.jsonb_build_object('job_id', p_job_id));
  END IF;
  IF v_job.status = 'expired' AND (p_amount IS NULL OR p_amount = v_job.cost) THEN
    -- The hold expired (just now in lock_user, or earlier): the
    -- credits are back, which is what a refund asks. Not an error, which
    -- would roll the expiry back: the new balance, the job stays 'expired'.
    RETURN v_balance;
  END IF;
  IF v_job.status <> 'pending' THEN
    PERFORM creditgate.require_pending(v_job);
  END IF;
  IF p_amount <> v_job.cost THEN
    PERFORM creditgate.require(false, 'p_amount must equal the held amount',
      pg_catalog.jsonb_build_object('parameter', 'p_amount', 'value', p_amount, 'held', v_job.cost));
  END IF;

  v_balance := creditgate.settle_job(v_job, 'failed', 0, 'refund', 'Refund: ' || v_reason, 'Refunded: ' || v_reason,
    NULL, p_now);
  IF v_job.limit_units IS NOT NULL THEN
    -- Nothing was used: the whole estimate goes back to the unit limits.
    PERFORM creditgate.correct_units(v_job, 0);
  END IF;
  RETURN v_balance;
END;
$$;

SELECT creditgate.drop_other_versions('refund_credits',
  'p_user_id uuid, p_job_id uuid, p_amount integer, p_reason text', 'integer');

/** The seed's refund, same signature and result (the new balance): see creditgate.refund_credits_at. */
CREATE OR REPLACE FUNCTION public.refund_credits(p_user_id uuid, p_job_id uuid, p_amount integer, p_reason text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.refund_credits_at(p_user_id, p_job_id, p_amount, p_reason, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.refund_credits(uuid, uuid, integer, text)', 'service_role');

-- -----------------------------------------------------------------------------
-- Grants
-- -----------------------------------------------------------------------------

/**
 * Adds p_amount credits as a new lot (category p_category, priority
 * p_priority, expiring at p_expires_at or never). With a key (a payment
 * webhook's event id), a retry returns the original new balance and adds
 * nothing. The request's fingerprint names expiry, category and priority only
 * when they are not the defaults, so keys stored before lots still replay.
 * Locks: idempotency claim, the users row, then the user's expired jobs and lots.
 * Errors: 22023 (also when balance + open holds would pass
 * balance_credits_max()), PT404 user_not_found, PT409 idempotency_in_flight,
 * PT422 idempotency_key_reused.
 */
CREATE OR REPLACE FUNCTION creditgate.grant_credits_at(
  p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text, p_metadata jsonb,
  p_expires_at timestamptz, p_category text, p_priority integer, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := creditgate.clean_metadata(p_metadata);
  v_category text := coalesce(p_category, 'paid');
  v_priority integer := coalesce(p_priority, 50);
  v_request jsonb;
  v_hash text;
  v_replay jsonb;
  v_balance integer;
  v_entry_id bigint;
  v_lot_id uuid;
  v_held bigint;
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  PERFORM creditgate.require_range('p_amount', p_amount, 1, creditgate.cost_credits_max());
  PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), false);
  PERFORM creditgate.require_text('p_idempotency_key', p_idempotency_key, creditgate.idempotency_key_length_max(), true);
  PERFORM creditgate.require_lot_terms(p_expires_at, v_category, v_priority, p_now);

  v_request := pg_catalog.jsonb_build_object('amount', p_amount, 'reason', p_reason, 'metadata', v_metadata);
  IF p_expires_at IS NOT NULL OR v_category <> 'paid' OR v_priority <> 50 THEN
    v_request := v_request || pg_catalog.jsonb_build_object(
      'expires_at', p_expires_at, 'category', v_category, 'priority', v_priority);
  END IF;
  v_hash := pg_catalog.md5(v_request::text);
  v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'grant', v_hash);
  IF v_replay IS NOT NULL THEN
    RETURN (v_replay ->> 'new_balance')::integer;
  END IF;

  v_balance := creditgate.lock_user(p_user_id, p_now, true);
  SELECT coalesce(sum(j.cost), 0) INTO v_held FROM public.generation_jobs j
  WHERE j.user_id = p_user_id AND j.status = 'pending';
  -- Bounding balance + holds bounds every later refund: none can overflow.
  PERFORM creditgate.require(v_balance::bigint + v_held + p_amount <= creditgate.balance_credits_max(),
    pg_catalog.format('the grant would take balance plus open holds past %s credits', creditgate.balance_credits_max()),
    pg_catalog.jsonb_build_object('parameter', 'p_amount', 'value', p_amount, 'balance', v_balance,
      'held', v_held, 'max', creditgate.balance_credits_max()));

  SELECT d.new_balance, d.entry_id INTO v_balance, v_entry_id
  FROM creditgate.apply_delta(p_user_id, p_amount, 'grant', 'grant', p_reason,
    v_metadata || pg_catalog.jsonb_build_object('idempotency_key', p_idempotency_key), NULL) d;
  v_lot_id := creditgate.open_lot(p_user_id, p_amount, v_category, v_priority, p_expires_at, p_reason,
    p_idempotency_key, v_metadata, v_entry_id, NULL, NULL, p_now);
  PERFORM creditgate.record_idempotency_key(p_user_id, p_idempotency_key, 'grant', v_hash,
    pg_catalog.jsonb_build_object('new_balance', v_balance), NULL);
  RETURN v_balance;
END;
$$;

SELECT creditgate.drop_other_versions('grant_credits',
  $a$p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb, p_expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone, p_category text DEFAULT 'paid'::text, p_priority integer DEFAULT 50$a$,
  'integer');

/**
 * Grant, idempotent by key: see creditgate.grant_credits_at. The seed's five
 * arguments, positional or named, are this function with the defaults (one
 * function: a second, five-argument one would make those calls ambiguous).
 * For service_role.
 */
CREATE OR REPLACE FUNCTION public.grant_credits(
  p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb, p_expires_at timestamptz DEFAULT NULL, p_category text DEFAULT 'paid',
  p_priority integer DEFAULT 50)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.grant_credits_at(p_user_id, p_amount, p_reason, p_idempotency_key, p_metadata,
    p_expires_at, p_category, p_priority, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.grant_credits(uuid, integer, text, text, jsonb, timestamptz, text, integer)', 'service_role');

-- -----------------------------------------------------------------------------
-- Balance reads and expiry
-- -----------------------------------------------------------------------------

/**
 * The user's balance with the user caught up first (due holds and lots
 * expired, a due allowance granted), so a read never shows an expired hold
 * as spent or an expired lot as spendable.
 * Locks: the users row, only when the user has something due.
 * Errors: 22023, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.get_credit_balance_at(p_user_id uuid, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_balance integer;
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  IF creditgate.user_due(p_user_id, p_now) THEN
    RETURN creditgate.lock_user(p_user_id, p_now, false);
  END IF;
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found', pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  RETURN v_balance;
END;
$$;

SELECT creditgate.drop_other_versions('get_credit_balance', 'p_user_id uuid', 'integer');

/** A user's balance, due holds expired first: see creditgate.get_credit_balance_at. For service_role. */
CREATE OR REPLACE FUNCTION public.get_credit_balance(p_user_id uuid)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.get_credit_balance_at(p_user_id, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.get_credit_balance(uuid)', 'service_role');

SELECT creditgate.drop_other_versions('get_my_credit_balance', '', 'integer');

/**
 * The calling user's own balance (auth.uid()), due holds expired first. The one
 * function `authenticated` may call.
 * Errors: 42501 without a user in the JWT, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION public.get_my_credit_balance()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_user_id uuid := auth.uid();
BEGIN
  IF v_user_id IS NULL THEN
    RAISE EXCEPTION 'get_my_credit_balance needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN creditgate.get_credit_balance_at(v_user_id, pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.get_my_credit_balance()', 'authenticated, service_role');

/**
 * The sweeper: catches up every user with something due at p_now
 * (creditgate.catch_up: the due plan allowance granted, holds past their
 * deadline expired, lots past their expiry expired), then writes the
 * lot_expiring events that are due. Returns how many holds it expired. A
 * user whose row another transaction holds is skipped: that user is caught up
 * at their next balance check or the next sweep.
 * Locks: each user row (SKIP LOCKED), then that user's jobs and lots.
 */
CREATE OR REPLACE FUNCTION creditgate.expire_stale_generation_jobs_at(p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_user_id uuid;
  v_expired integer := 0;
BEGIN
  FOR v_user_id IN
    SELECT j.user_id FROM public.generation_jobs j WHERE j.status = 'pending' AND j.expires_at <= p_now
    UNION
    SELECT l.user_id FROM public.credit_lots l WHERE l.spendable AND l.expires_at <= p_now
    UNION
    SELECT s.user_id FROM public.credit_plan_subscriptions s WHERE s.next_period_start <= p_now
    ORDER BY 1
  LOOP
    PERFORM FROM public.users u WHERE u.id = v_user_id FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
      v_expired := v_expired + creditgate.catch_up(v_user_id, p_now);
    END IF;
  END LOOP;
  PERFORM creditgate.note_expiring_lots(p_now);
  RETURN v_expired;
END;
$$;

SELECT creditgate.drop_other_versions('expire_stale_generation_jobs', '', 'integer');

/** The sweeper (pg_cron runs it every minute where available): see creditgate.expire_stale_generation_jobs_at. */
CREATE OR REPLACE FUNCTION public.expire_stale_generation_jobs()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.expire_stale_generation_jobs_at(pg_catalog.clock_timestamp());
END;
$$;
SELECT creditgate.expose('public.expire_stale_generation_jobs()', 'service_role');

-- -----------------------------------------------------------------------------
-- Reconciliation: verify_credit_ledger() is in 20250601000500_creditgate_lots.sql
-- (a LANGUAGE sql body must name tables that exist, and it checks the lots).
-- -----------------------------------------------------------------------------


-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
-- PostgreSQL grants EXECUTE on a new function to PUBLIC; the schema's
-- default privileges (20250601000100) revoke it, and this statement does it
-- for a creditgate function created another way (by another role, or before).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA creditgate FROM PUBLIC;
NOTIFY pgrst, 'reload schema';
