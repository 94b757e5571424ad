-- =============================================================================
-- creditgate 2/4: credits. Charge (a hold), complete (capture), refund (void),
-- expire, grant, balance and reconciliation.
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

REVOKE ALL ON FUNCTION creditgate.cost_credits_max(), creditgate.balance_credits_max(),
  creditgate.idempotency_key_length_max(), creditgate.operation_type_length_max(),
  creditgate.metadata_bytes_max(), creditgate.reason_length_max(),
  creditgate.result_url_length_max(), creditgate.hold_seconds_max() FROM PUBLIC;

-- The hot functions below (lock_user, charge, complete, refund) check their
-- arguments inline with these bounds as literals, and call the named checks
-- only when one fails, to raise the precise error. Every creditgate function
-- is SECURITY DEFINER with its own search_path, so none is inlined: a call
-- costs a GUC save and restore, and a charge used to make about 25 of them.
-- The literals must equal the named limits: a changed limit fails this file
-- instead of drifting from them.
DO $$
BEGIN
  IF NOT (creditgate.cost_credits_max() = 1000000000
          AND creditgate.idempotency_key_length_max() = 255
          AND creditgate.operation_type_length_max() = 64
          AND creditgate.metadata_bytes_max() = 4096
          AND creditgate.reason_length_max() = 500
          AND creditgate.result_url_length_max() = 2048
          AND creditgate.hold_seconds_max() = 86400) THEN
    RAISE EXCEPTION 'creditgate: a named limit changed: update the literals of the fast paths in 20250601000200_creditgate_credits.sql';
  END IF;
END
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
REVOKE ALL ON FUNCTION creditgate.fail(text, text, text, jsonb) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.require(boolean, text, jsonb) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.require_range(text, integer, integer, integer) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.require_text(text, text, integer, boolean) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.require_id(text, uuid) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.clean_metadata(jsonb) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.drop_other_versions(text, text, text) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- Balance changes: the one path every credit movement takes
-- -----------------------------------------------------------------------------

/**
 * Adds p_delta to the user's balance and appends the ledger row that records
 * it, with balance_after. Returns the new balance.
 * Locks: the caller holds the users row (creditgate.lock_user).
 */
CREATE OR REPLACE FUNCTION creditgate.apply_delta(
  p_user_id uuid, p_delta integer, p_entry_type text, p_operation_type text,
  p_description text, p_metadata jsonb, p_job_id uuid)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_balance integer;
BEGIN
  UPDATE public.users u SET credits = u.credits + p_delta WHERE u.id = p_user_id
  RETURNING u.credits INTO v_balance;

  INSERT INTO public.credit_ledger
    (user_id, delta, balance_after, operation_type, description, metadata, job_id, entry_type)
  VALUES
    (p_user_id, p_delta, v_balance, p_operation_type, p_description, p_metadata, p_job_id, p_entry_type);
  RETURN v_balance;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.apply_delta(uuid, integer, text, text, text, jsonb, uuid) FROM PUBLIC;

/**
 * Settles an open job once: status p_status, p_captured credits kept, the rest
 * of the hold returned with a ledger entry of type p_entry_type. Returns the
 * new balance.
 * Locks: the caller holds the users row, then the job row.
 */
CREATE OR REPLACE FUNCTION creditgate.settle_job(
  p_job public.generation_jobs, p_status text, p_captured integer, p_entry_type text,
  p_description text, p_error_message text, p_result_url text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_returned integer := p_job.cost - p_captured;
  v_balance integer;
BEGIN
  UPDATE public.generation_jobs j
  SET status = p_status,
      completed_at = p_now,
      captured_credits = p_captured,
      refunded_credits = v_returned,
      error_message = coalesce(p_error_message, j.error_message),
      result_url = coalesce(p_result_url, j.result_url)
  WHERE j.id = p_job.id;

  IF v_returned > 0 THEN
    RETURN creditgate.apply_delta(p_job.user_id, v_returned, p_entry_type, p_entry_type, p_description,
      pg_catalog.jsonb_build_object('job_id', p_job.id), p_job.id);
  END IF;
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_job.user_id;
  RETURN v_balance;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.settle_job(public.generation_jobs, text, integer, text, text, text, text, timestamptz) FROM PUBLIC;

/**
 * Returns the whole of each open hold of the user due at or before p_due_by
 * (status p_status, a ledger entry of type p_entry_type). Returns how many.
 * Locks: the caller holds the users row; this locks the jobs.
 */
CREATE OR REPLACE FUNCTION creditgate.void_open_holds(
  p_user_id uuid, p_due_by timestamptz, p_status text, p_entry_type text,
  p_description text, p_error_message text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_job public.generation_jobs;
  v_voided integer := 0;
BEGIN
  FOR v_job IN
    SELECT * FROM public.generation_jobs j
    WHERE j.user_id = p_user_id AND j.status IN ('pending', 'processing') AND j.expires_at <= p_due_by
    ORDER BY j.expires_at, j.id
    FOR UPDATE
  LOOP
    PERFORM creditgate.settle_job(v_job, p_status, 0, p_entry_type, p_description, p_error_message, NULL, p_now);
    v_voided := v_voided + 1;
  END LOOP;
  RETURN v_voided;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.void_open_holds(uuid, timestamptz, text, text, text, text, timestamptz) FROM PUBLIC;

/**
 * Refunds the user's holds whose deadline is at or before p_now (status
 * expired). Returns how many it released.
 * Locks: the caller holds the users row; this locks the jobs.
 */
CREATE OR REPLACE FUNCTION creditgate.release_expired_holds(p_user_id uuid, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.void_open_holds(p_user_id, p_now, 'expired', 'expiry', 'Hold expired',
    'Hold expired before completion', p_now);
END;
$$;
REVOKE ALL ON FUNCTION creditgate.release_expired_holds(uuid, timestamptz) FROM PUBLIC;

/**
 * Locks the user's row, releases the user's expired holds (so an expired hold
 * never blocks a charge) and returns the balance. One read of the row; the
 * release runs only when an index probe finds an expired hold, which most
 * calls do not.
 * Locks: the users row (FOR UPDATE), then the user's expired jobs.
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
  IF EXISTS (SELECT FROM public.generation_jobs j
             WHERE j.user_id = p_user_id AND j.status IN ('pending', 'processing') AND j.expires_at <= p_now) THEN
    PERFORM creditgate.release_expired_holds(p_user_id, p_now);
    SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  END IF;
  RETURN v_balance;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.lock_user(uuid, timestamptz, boolean) FROM PUBLIC;

/** Raises PT409 job_already_settled unless the job is open. */
CREATE OR REPLACE FUNCTION creditgate.require_open(p_job public.generation_jobs)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_job.status NOT IN ('pending', 'processing') THEN
    PERFORM creditgate.fail('PT409', 'job_already_settled', 'Job already settled',
      pg_catalog.jsonb_build_object('job_id', p_job.id, 'status', p_job.status));
  END IF;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.require_open(public.generation_jobs) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- Idempotency (IETF Idempotency-Key draft, Stripe): keys scoped per user and
-- per kind of request (the scope: 'charge' for every charge function, 'grant'
-- for grant_credits); within a scope, same key and request -> the original
-- result; same key, other request -> PT422; same key while the first is still
-- running -> PT409. The same key in the other scope is another key.
-- -----------------------------------------------------------------------------

/** The scopes an idempotency key can be claimed in (idempotency_keys.operation). */
CREATE OR REPLACE FUNCTION creditgate.require_idempotency_scope(p_scope text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require(p_scope IN ('charge', 'grant'),
    'the idempotency scope must be charge or grant',
    pg_catalog.jsonb_build_object('parameter', 'p_operation', 'value', p_scope));
END;
$$;
REVOKE ALL ON FUNCTION creditgate.require_idempotency_scope(text) FROM PUBLIC;

/**
 * Claims (p_user_id, p_operation, p_key) for this transaction, p_operation
 * being the scope ('charge' or 'grant'), and returns the stored response of
 * an earlier identical request in that scope, or NULL when the key is new
 * there (or NULL). The claim is a transaction-scoped advisory lock on the
 * scoped key, taken without waiting: held by another transaction means that
 * request is in flight. The same key in the other scope is not looked at.
 * Errors: 22023 (unknown scope), PT409 idempotency_in_flight, PT422
 * idempotency_key_reused.
 */
CREATE OR REPLACE FUNCTION creditgate.claim_idempotency_key(
  p_user_id uuid, p_key text, p_operation text, p_request_hash text)
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
  IF p_operation IS DISTINCT FROM 'charge' AND p_operation IS DISTINCT FROM 'grant' THEN
    PERFORM creditgate.require_idempotency_scope(p_operation);
  END IF;
  -- A uuid has no ':' and a scope is one word: the lock name is unambiguous.
  IF NOT pg_catalog.pg_try_advisory_xact_lock(
      pg_catalog.hashtextextended(p_user_id::text || ':' || p_operation || ':' || p_key, 7146)) THEN
    PERFORM creditgate.fail('PT409', 'idempotency_in_flight',
      'A request with this idempotency key is still in progress',
      pg_catalog.jsonb_build_object('idempotency_key', p_key, 'operation', p_operation));
  END IF;

  SELECT * INTO v_stored FROM public.idempotency_keys k
  WHERE k.user_id = p_user_id AND k.operation = p_operation AND k.key = p_key;
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
REVOKE ALL ON FUNCTION creditgate.claim_idempotency_key(uuid, text, text, text) FROM PUBLIC;

/**
 * Stores what a retry with (p_user_id, p_operation, p_key) gets back, in the
 * scope p_operation. Does nothing for a NULL key. Errors: 22023 (unknown scope).
 */
CREATE OR REPLACE FUNCTION creditgate.record_idempotency_key(
  p_user_id uuid, p_key text, p_operation text, p_request_hash text, p_response jsonb, p_job_id uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF p_key IS NOT NULL THEN
    IF p_operation IS DISTINCT FROM 'charge' AND p_operation IS DISTINCT FROM 'grant' THEN
      PERFORM creditgate.require_idempotency_scope(p_operation);
    END IF;
    INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
    VALUES (p_user_id, p_key, p_operation, 'completed', p_request_hash, p_response, p_job_id);
  END IF;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.record_idempotency_key(uuid, text, text, text, jsonb, uuid) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION creditgate.charge_request_hash(text, integer, jsonb, integer) FROM PUBLIC;

-- -----------------------------------------------------------------------------
-- Charge: a hold
-- -----------------------------------------------------------------------------

/** The argument checks of a charge, shared by every function that charges. */
CREATE OR REPLACE FUNCTION creditgate.require_charge_arguments(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text, p_hold_seconds integer)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  PERFORM creditgate.require_text('p_operation_type', p_operation_type, creditgate.operation_type_length_max(), false);
  PERFORM creditgate.require_range('p_cost', p_cost, 1, creditgate.cost_credits_max());
  PERFORM creditgate.require_text('p_idempotency_key', p_idempotency_key, creditgate.idempotency_key_length_max(), true);
  PERFORM creditgate.require_range('p_hold_seconds', p_hold_seconds, 1, creditgate.hold_seconds_max());
END;
$$;
REVOKE ALL ON FUNCTION creditgate.require_charge_arguments(uuid, text, integer, text, integer) FROM PUBLIC;

/**
 * The hold itself, once the arguments are checked and the key claimed (or
 * NULL): locks the user, takes p_cost credits, opens the job until p_now +
 * p_hold_seconds and stores what a retry with p_idempotency_key gets back
 * (p_request_hash is its fingerprint). Every charge ends here, so the key is
 * validated, hashed and claimed once per call, by the caller.
 * Locks: the users row, then the user's expired jobs.
 * Errors: PT402 insufficient_credits {"balance","needed"}, PT404 user_not_found.
 */
CREATE OR REPLACE FUNCTION creditgate.open_hold(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text, p_request_hash text,
  p_metadata jsonb, p_hold_seconds integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_balance integer;
  v_job_id uuid;
  v_expires_at timestamptz;
BEGIN
  v_balance := creditgate.lock_user(p_user_id, p_now, true);
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

  v_balance := creditgate.apply_delta(p_user_id, -p_cost, 'charge', p_operation_type,
    p_operation_type || ' generation',
    p_metadata || pg_catalog.jsonb_build_object('job_id', v_job_id, 'idempotency_key', p_idempotency_key),
    v_job_id);

  -- What a retry gets back (creditgate.record_idempotency_key, inline).
  IF p_idempotency_key IS NOT NULL THEN
    INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
    VALUES (p_user_id, p_idempotency_key, 'charge', 'completed', p_request_hash,
      pg_catalog.jsonb_build_object('job_id', v_job_id, 'new_balance', v_balance, 'expires_at', v_expires_at),
      v_job_id);
  END IF;
  RETURN QUERY SELECT v_job_id, v_balance, false, v_expires_at;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.open_hold(uuid, text, integer, text, text, jsonb, integer, timestamptz) FROM PUBLIC;

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
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
  v_hash text;
  v_replay jsonb;
BEGIN
  -- Fast path of creditgate.clean_metadata and require_charge_arguments (the
  -- literals are the named limits, asserted above); they run only to raise
  -- the precise error.
  IF NOT (pg_catalog.jsonb_typeof(v_metadata) = 'object'
          AND pg_catalog.octet_length(v_metadata::text) <= 4096) THEN
    v_metadata := creditgate.clean_metadata(p_metadata);
  END IF;
  IF NOT (p_user_id IS NOT NULL
          AND pg_catalog.char_length(p_operation_type) BETWEEN 1 AND 64
          AND p_cost BETWEEN 1 AND 1000000000
          AND (p_idempotency_key IS NULL OR pg_catalog.char_length(p_idempotency_key) BETWEEN 1 AND 255)
          AND p_hold_seconds BETWEEN 1 AND 86400) IS TRUE THEN
    PERFORM creditgate.require_charge_arguments(p_user_id, p_operation_type, p_cost, p_idempotency_key, p_hold_seconds);
  END IF;

  IF p_idempotency_key IS NOT NULL THEN
    v_hash := creditgate.charge_request_hash(p_operation_type, p_cost, v_metadata, p_hold_seconds);
    v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge', v_hash);
    IF v_replay IS NOT NULL THEN
      RETURN QUERY SELECT (v_replay ->> 'job_id')::uuid, (v_replay ->> 'new_balance')::integer, true,
        (v_replay ->> 'expires_at')::timestamptz;
      RETURN;
    END IF;
  END IF;

  RETURN QUERY SELECT * FROM creditgate.open_hold(p_user_id, p_operation_type, p_cost, p_idempotency_key, v_hash,
    v_metadata, p_hold_seconds, p_now);
END;
$$;
REVOKE ALL ON FUNCTION creditgate.charge_credits_at(uuid, text, integer, text, jsonb, integer, timestamptz) FROM PUBLIC;

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
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.charge_credits_at(p_user_id, p_operation_type, p_cost, p_idempotency_key,
      p_metadata, p_hold_seconds, pg_catalog.clock_timestamp());
END;
$$;
REVOKE ALL ON FUNCTION public.charge_credits(uuid, text, integer, text, jsonb, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.charge_credits(uuid, text, integer, text, jsonb, integer) TO service_role;

SELECT creditgate.drop_other_versions('atomic_charge_credits',
  $a$p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb$a$,
  'TABLE(job_id uuid, new_balance integer)');

/**
 * The seed's charge, same signature and result: charge_credits with the
 * default hold (900 s), calling creditgate.charge_credits_at directly (one
 * SECURITY DEFINER call less). A retry with the same key returns the
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
BEGIN
  RETURN QUERY
    SELECT c.job_id, c.new_balance
    FROM creditgate.charge_credits_at(p_user_id, p_operation_type, p_cost, p_idempotency_key, p_metadata, 900,
      pg_catalog.clock_timestamp()) c;
END;
$$;
REVOKE ALL ON FUNCTION public.atomic_charge_credits(uuid, text, integer, text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.atomic_charge_credits(uuid, text, integer, text, jsonb) TO service_role;

-- -----------------------------------------------------------------------------
-- Settlement: complete (capture), refund (void)
-- -----------------------------------------------------------------------------

/**
 * Completes an open job: keeps p_actual_cost (default: the whole hold) and
 * returns the rest of the hold in the same transaction.
 * Locks: the users row (releasing expired holds), then the job.
 * An expired hold (deadline passed; released by this call or earlier) is
 * not an error: one row (job_id, 'expired', balance, refunded = the hold),
 * the hold released and committed with the caller's transaction; callers
 * treat status 'expired' as job_already_settled.
 * Errors: 22023 (p_actual_cost outside 0..cost, p_result_url not http(s)),
 * PT404 job_not_found, PT409 job_already_settled (completed or failed).
 */
CREATE OR REPLACE FUNCTION creditgate.complete_generation_job_at(
  p_job_id uuid, p_result_url text, p_actual_cost integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, status text, new_balance integer, refunded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_user_id uuid;
  v_job public.generation_jobs;
  v_captured integer;
  v_balance integer;
BEGIN
  -- Fast path (literals: the named limits, asserted above); the named checks
  -- run only to raise the precise error.
  IF NOT (p_job_id IS NOT NULL
          AND (p_result_url IS NULL OR (pg_catalog.char_length(p_result_url) BETWEEN 1 AND 2048
                                        AND p_result_url ~* '^https?://'))
          AND (p_actual_cost IS NULL OR p_actual_cost BETWEEN 0 AND 1000000000)) IS TRUE THEN
    PERFORM creditgate.require_id('p_job_id', p_job_id);
    PERFORM creditgate.require_text('p_result_url', p_result_url, creditgate.result_url_length_max(), true);
    PERFORM creditgate.require(p_result_url IS NULL OR p_result_url ~* '^https?://',
      'p_result_url must be an http:// or https:// URL',
      pg_catalog.jsonb_build_object('parameter', 'p_result_url', 'allowed_schemes', pg_catalog.jsonb_build_array('http', 'https')));
    IF p_actual_cost IS NOT NULL THEN
      PERFORM creditgate.require_range('p_actual_cost', p_actual_cost, 0, creditgate.cost_credits_max());
    END IF;
  END IF;

  SELECT j.user_id INTO v_user_id FROM public.generation_jobs j WHERE j.id = p_job_id;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'job_not_found', 'Job not found', pg_catalog.jsonb_build_object('job_id', p_job_id));
  END IF;
  v_balance := creditgate.lock_user(v_user_id, p_now, false);
  SELECT * INTO v_job FROM public.generation_jobs j WHERE j.id = p_job_id FOR UPDATE;
  IF v_job.status = 'expired' THEN
    -- The hold expired (released just now by lock_user, or earlier): not
    -- an error, which would roll the release back. One row says so:
    -- status 'expired', the whole hold refunded, the balance; nothing captured.
    RETURN QUERY SELECT v_job.id, 'expired'::text, v_balance, v_job.cost;
    RETURN;
  END IF;
  IF v_job.status NOT IN ('pending', 'processing') THEN
    PERFORM creditgate.require_open(v_job);
  END IF;
  IF p_actual_cost > v_job.cost THEN
    PERFORM creditgate.require(false, 'p_actual_cost cannot exceed the held amount',
      pg_catalog.jsonb_build_object('parameter', 'p_actual_cost', 'value', p_actual_cost, 'held', v_job.cost));
  END IF;

  v_captured := coalesce(p_actual_cost, v_job.cost);
  v_balance := creditgate.settle_job(v_job, 'completed', v_captured, 'capture',
    'Capture: unused part of the hold returned', NULL, p_result_url, p_now);
  RETURN QUERY SELECT v_job.id, 'completed'::text, v_balance, v_job.cost - v_captured;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.complete_generation_job_at(uuid, text, integer, timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('complete_generation_job',
  'p_job_id uuid, p_result_url text DEFAULT NULL::text, p_actual_cost integer DEFAULT NULL::integer',
  'TABLE(job_id uuid, status text, new_balance integer, refunded integer)');

/** Capture: see creditgate.complete_generation_job_at. For service_role. */
CREATE OR REPLACE FUNCTION public.complete_generation_job(
  p_job_id uuid, p_result_url text DEFAULT NULL, p_actual_cost integer DEFAULT NULL)
RETURNS TABLE (job_id uuid, status text, new_balance integer, refunded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN QUERY
    SELECT * FROM creditgate.complete_generation_job_at(p_job_id, p_result_url, p_actual_cost, pg_catalog.clock_timestamp());
END;
$$;
REVOKE ALL ON FUNCTION public.complete_generation_job(uuid, text, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.complete_generation_job(uuid, text, integer) TO service_role;

/**
 * Refunds an open job of this user: the whole hold goes back (status failed).
 * p_amount must be NULL or exactly the held amount.
 * Locks: the users row (releasing expired holds), then the job.
 * An expired hold (released by this call or earlier) is not an error: the
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
  v_balance integer;
  v_reason text := coalesce(p_reason, 'no reason given');
BEGIN
  -- Fast path (literals: the named limits, asserted above); the named checks
  -- run only to raise the precise error.
  IF NOT (p_user_id IS NOT NULL AND p_job_id IS NOT NULL
          AND (p_amount IS NULL OR p_amount BETWEEN 1 AND 1000000000)
          AND (p_reason IS NULL OR pg_catalog.char_length(p_reason) BETWEEN 1 AND 500)) IS TRUE THEN
    PERFORM creditgate.require_id('p_user_id', p_user_id);
    PERFORM creditgate.require_id('p_job_id', p_job_id);
    IF p_amount IS NOT NULL THEN
      PERFORM creditgate.require_range('p_amount', p_amount, 1, creditgate.cost_credits_max());
    END IF;
    PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), true);
  END IF;

  v_balance := creditgate.lock_user(p_user_id, p_now, false);
  SELECT * INTO v_job FROM public.generation_jobs j WHERE j.id = p_job_id AND j.user_id = p_user_id FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'job_not_found', 'Job not found', pg_catalog.jsonb_build_object('job_id', p_job_id));
  END IF;
  IF v_job.status = 'expired' AND (p_amount IS NULL OR p_amount = v_job.cost) THEN
    -- The hold expired (released just now by lock_user, or earlier): the
    -- credits are back, which is what a refund asks. Not an error, which
    -- would roll the release back: the new balance, the job stays 'expired'.
    RETURN v_balance;
  END IF;
  IF v_job.status NOT IN ('pending', 'processing') THEN
    PERFORM creditgate.require_open(v_job);
  END IF;
  IF p_amount <> v_job.cost THEN
    PERFORM creditgate.require(false, 'p_amount must equal the held amount',
      pg_catalog.jsonb_build_object('parameter', 'p_amount', 'value', p_amount, 'held', v_job.cost));
  END IF;

  RETURN creditgate.settle_job(v_job, 'failed', 0, 'refund', 'Refund: ' || v_reason, 'Refunded: ' || v_reason, NULL, p_now);
END;
$$;
REVOKE ALL ON FUNCTION creditgate.refund_credits_at(uuid, uuid, integer, text, timestamptz) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION public.refund_credits(uuid, uuid, integer, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.refund_credits(uuid, uuid, integer, text) TO service_role;

-- -----------------------------------------------------------------------------
-- Grants (top-ups)
-- -----------------------------------------------------------------------------

/**
 * Adds p_amount credits. With a key (a payment webhook's event id), a retry
 * returns the original new balance and adds nothing.
 * Locks: idempotency claim, the users row, then the user's expired jobs.
 * Errors: 22023 (also when balance + open holds would pass
 * balance_credits_max()), PT404 user_not_found, PT409 idempotency_in_flight,
 * PT422 idempotency_key_reused.
 */
CREATE OR REPLACE FUNCTION creditgate.grant_credits_at(
  p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text, p_metadata jsonb, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_metadata jsonb := creditgate.clean_metadata(p_metadata);
  v_hash text;
  v_replay jsonb;
  v_balance integer;
  v_held bigint;
BEGIN
  PERFORM creditgate.require_id('p_user_id', p_user_id);
  PERFORM creditgate.require_range('p_amount', p_amount, 1, creditgate.cost_credits_max());
  PERFORM creditgate.require_text('p_reason', p_reason, creditgate.reason_length_max(), false);
  PERFORM creditgate.require_text('p_idempotency_key', p_idempotency_key, creditgate.idempotency_key_length_max(), true);

  v_hash := pg_catalog.md5(pg_catalog.jsonb_build_object(
    'amount', p_amount, 'reason', p_reason, 'metadata', v_metadata)::text);
  v_replay := creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'grant', v_hash);
  IF v_replay IS NOT NULL THEN
    RETURN (v_replay ->> 'new_balance')::integer;
  END IF;

  v_balance := creditgate.lock_user(p_user_id, p_now, true);
  SELECT coalesce(sum(j.cost), 0) INTO v_held FROM public.generation_jobs j
  WHERE j.user_id = p_user_id AND j.status IN ('pending', 'processing');
  -- Bounding balance + holds bounds every later refund: none can overflow.
  PERFORM creditgate.require(v_balance::bigint + v_held + p_amount <= creditgate.balance_credits_max(),
    pg_catalog.format('the grant would take balance plus open holds past %s credits', creditgate.balance_credits_max()),
    pg_catalog.jsonb_build_object('parameter', 'p_amount', 'value', p_amount, 'balance', v_balance,
      'held', v_held, 'max', creditgate.balance_credits_max()));

  v_balance := creditgate.apply_delta(p_user_id, p_amount, 'grant', 'grant', p_reason,
    v_metadata || pg_catalog.jsonb_build_object('idempotency_key', p_idempotency_key), NULL);
  PERFORM creditgate.record_idempotency_key(p_user_id, p_idempotency_key, 'grant', v_hash,
    pg_catalog.jsonb_build_object('new_balance', v_balance), NULL);
  RETURN v_balance;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.grant_credits_at(uuid, integer, text, text, jsonb, timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('grant_credits',
  $a$p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text DEFAULT NULL::text, p_metadata jsonb DEFAULT '{}'::jsonb$a$,
  'integer');

/** Top-up, idempotent by key: see creditgate.grant_credits_at. For service_role. */
CREATE OR REPLACE FUNCTION public.grant_credits(
  p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text DEFAULT NULL,
  p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  RETURN creditgate.grant_credits_at(p_user_id, p_amount, p_reason, p_idempotency_key, p_metadata,
    pg_catalog.clock_timestamp());
END;
$$;
REVOKE ALL ON FUNCTION public.grant_credits(uuid, integer, text, text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.grant_credits(uuid, integer, text, text, jsonb) TO service_role;

-- -----------------------------------------------------------------------------
-- Balance reads and expiry
-- -----------------------------------------------------------------------------

/**
 * The user's balance with expired holds released first, so a read never
 * shows an expired hold as spent.
 * Locks: the users row, only when the user has an expired hold to release.
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
  IF EXISTS (SELECT FROM public.generation_jobs j
             WHERE j.user_id = p_user_id AND j.status IN ('pending', 'processing') AND j.expires_at <= p_now) THEN
    RETURN creditgate.lock_user(p_user_id, p_now, false);
  END IF;
  SELECT u.credits INTO v_balance FROM public.users u WHERE u.id = p_user_id;
  IF NOT FOUND THEN
    PERFORM creditgate.fail('PT404', 'user_not_found', 'User not found', pg_catalog.jsonb_build_object('user_id', p_user_id));
  END IF;
  RETURN v_balance;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.get_credit_balance_at(uuid, timestamptz) FROM PUBLIC;

SELECT creditgate.drop_other_versions('get_credit_balance', 'p_user_id uuid', 'integer');

/** A user's balance, expired holds released: see creditgate.get_credit_balance_at. For service_role. */
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
REVOKE ALL ON FUNCTION public.get_credit_balance(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.get_credit_balance(uuid) TO service_role;

SELECT creditgate.drop_other_versions('get_my_credit_balance', '', 'integer');

/**
 * The calling user's own balance (auth.uid()), expired holds released. The one
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
REVOKE ALL ON FUNCTION public.get_my_credit_balance() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.get_my_credit_balance() TO authenticated, service_role;

/**
 * The sweeper: refunds every open hold whose deadline is at or before p_now.
 * Returns how many holds it released. A user whose row another transaction
 * holds is skipped: that user's holds go at their next balance check or the
 * next sweep.
 * Locks: each user row (SKIP LOCKED), then that user's jobs.
 */
CREATE OR REPLACE FUNCTION creditgate.expire_stale_generation_jobs_at(p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_user_id uuid;
  v_released integer := 0;
BEGIN
  FOR v_user_id IN
    SELECT DISTINCT j.user_id FROM public.generation_jobs j
    WHERE j.status IN ('pending', 'processing') AND j.expires_at <= p_now
    ORDER BY j.user_id
  LOOP
    PERFORM FROM public.users u WHERE u.id = v_user_id FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
      v_released := v_released + creditgate.release_expired_holds(v_user_id, p_now);
    END IF;
  END LOOP;
  RETURN v_released;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.expire_stale_generation_jobs_at(timestamptz) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION public.expire_stale_generation_jobs() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.expire_stale_generation_jobs() TO service_role;

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
           count(*) FILTER (WHERE l.entry_type IN ('refund', 'expiry', 'capture')) AS settlements
    FROM public.credit_ledger l WHERE l.job_id IS NOT NULL GROUP BY l.job_id
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
  WHERE e.settlements > 1 OR (e.settlements = 1 AND j.status IN ('pending', 'processing'))
  UNION ALL
  SELECT j.user_id, 'job_ledger_mismatch',
         pg_catalog.jsonb_build_object('job_id', j.id, 'status', j.status, 'cost', j.cost,
           'captured', j.captured_credits, 'ledger_sum', e.delta_sum)
  FROM public.generation_jobs j JOIN job_entries e ON e.job_id = j.id
  WHERE e.charges <> 1
     OR -e.delta_sum <> CASE WHEN j.status IN ('pending', 'processing') THEN j.cost
                             ELSE coalesce(j.captured_credits, -1) END
$$;
REVOKE ALL ON FUNCTION public.verify_credit_ledger() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.verify_credit_ledger() TO service_role;

-- -----------------------------------------------------------------------------
-- PostgREST reloads its schema cache at commit, so new and changed functions
-- are callable at once (as `supabase db push` users expect).
-- -----------------------------------------------------------------------------
NOTIFY pgrst, 'reload schema';
