-- =============================================================================
-- bench/proposals/charge_inline.sql: a second proposed step for the charge
-- path, applied over the migrations (which already hold the first one,
-- hot_path.sql, folded in by commit 2170960). Same behaviour, errors and
-- results.
--
-- Measure it:     cargo dev bench --patch bench/proposals/charge_inline.sql --only charge
-- Check it:       cargo dev bench --patch-check bench/proposals/charge_inline.sql
--
-- Why: after hot_path.sql a charge costs ~0.95 ms of executor time against the
-- seed's ~0.47 ms (pg_stat_statements, `cargo dev bench --analyze`). The
-- statements themselves account for ~0.56 ms; the rest is calls. Every
-- creditgate function is SECURITY DEFINER with SET search_path (pgTAP
-- 01-schema), so each call saves and restores the GUC state and none is
-- inlined. The charge still made four such calls on its success path:
-- charge_request_hash, claim_idempotency_key, lock_user, apply_delta. Here
-- charge_credits_at does their work inline and calls them only where they
-- raise an error (or release expired holds), so each error keeps one source.
--
-- Measured (cargo dev bench --only charge, 3 x 6 s, same session): no gain
-- beyond the noise (charge over 1000 users 0.64x -> 0.59x of the seed, hot
-- user 0.87x -> 0.77x, runs on a shared 2-core machine). The nested calls are
-- not where the rest of the gap is; NOT recommended as it stands. Kept so the
-- next person does not repeat it.
-- =============================================================================

-- The inline fingerprint must be charge_request_hash's, exactly.
DO $$
BEGIN
  ASSERT creditgate.charge_request_hash('image', 3, '{"a": [1, "x"]}', 900)
       = pg_catalog.md5(pg_catalog.jsonb_build_object('operation_type', 'image', 'cost', 3,
           'metadata', '{"a": [1, "x"]}'::jsonb, 'hold_seconds', 900)::text),
    'creditgate.charge_request_hash changed: update bench/proposals/charge_inline.sql';
END
$$;

CREATE OR REPLACE FUNCTION creditgate.charge_credits_at(
  p_user_id uuid, p_operation_type text, p_cost integer, p_idempotency_key text,
  p_metadata jsonb, p_hold_seconds integer, p_now timestamptz)
RETURNS TABLE (job_id uuid, new_balance integer, replayed boolean, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
  v_metadata jsonb := coalesce(p_metadata, '{}'::jsonb);
  v_hash text;
  v_stored public.idempotency_keys;
  v_closed_at timestamptz;
  v_balance integer;
  v_job_id uuid;
  v_expires_at timestamptz;
BEGIN
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

  -- creditgate.claim_idempotency_key, inline: the claim is the same advisory
  -- lock; the function runs only to raise PT409 (still held elsewhere: its
  -- own try fails too) or PT422 (it reads the same row and refuses it).
  IF p_idempotency_key IS NOT NULL THEN
    v_hash := pg_catalog.md5(pg_catalog.jsonb_build_object(
      'operation_type', p_operation_type, 'cost', p_cost, 'metadata', v_metadata, 'hold_seconds', p_hold_seconds)::text);
    IF NOT pg_catalog.pg_try_advisory_xact_lock(
        pg_catalog.hashtextextended(p_user_id::text || ':' || p_idempotency_key, 7146)) THEN
      PERFORM creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge', v_hash);
    END IF;
    SELECT * INTO v_stored FROM public.idempotency_keys k WHERE k.user_id = p_user_id AND k.key = p_idempotency_key;
    IF FOUND THEN
      IF v_stored.operation IS DISTINCT FROM 'charge' OR v_stored.request_hash IS DISTINCT FROM v_hash
         OR v_stored.response IS NULL THEN
        PERFORM creditgate.claim_idempotency_key(p_user_id, p_idempotency_key, 'charge', v_hash);
      END IF;
      RETURN QUERY SELECT (v_stored.response ->> 'job_id')::uuid, (v_stored.response ->> 'new_balance')::integer, true,
        (v_stored.response ->> 'expires_at')::timestamptz;
      RETURN;
    END IF;
  END IF;

  -- creditgate.lock_user, inline; the function runs only to raise PT404 or
  -- to release expired holds (it locks the same row again, which is free).
  SELECT u.closed_at, u.credits INTO v_closed_at, v_balance FROM public.users u WHERE u.id = p_user_id FOR UPDATE;
  IF NOT FOUND OR v_closed_at IS NOT NULL
     OR EXISTS (SELECT FROM public.generation_jobs j
                WHERE j.user_id = p_user_id AND j.status IN ('pending', 'processing') AND j.expires_at <= p_now) THEN
    v_balance := creditgate.lock_user(p_user_id, p_now, true);
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
    (p_user_id, p_operation_type, 'pending', p_cost, p_idempotency_key, v_metadata, p_now, v_expires_at)
  RETURNING j.id INTO v_job_id;

  -- creditgate.apply_delta, inline.
  UPDATE public.users u SET credits = u.credits - p_cost WHERE u.id = p_user_id RETURNING u.credits INTO v_balance;
  INSERT INTO public.credit_ledger
    (user_id, delta, balance_after, operation_type, description, metadata, job_id, entry_type)
  VALUES
    (p_user_id, -p_cost, v_balance, p_operation_type, p_operation_type || ' generation',
     v_metadata || pg_catalog.jsonb_build_object('job_id', v_job_id, 'idempotency_key', p_idempotency_key),
     v_job_id, 'charge');

  IF p_idempotency_key IS NOT NULL THEN
    INSERT INTO public.idempotency_keys (user_id, key, operation, status, request_hash, response, job_id)
    VALUES (p_user_id, p_idempotency_key, 'charge', 'completed', v_hash,
      pg_catalog.jsonb_build_object('job_id', v_job_id, 'new_balance', v_balance, 'expires_at', v_expires_at),
      v_job_id);
  END IF;
  RETURN QUERY SELECT v_job_id, v_balance, false, v_expires_at;
END;
$$;
REVOKE ALL ON FUNCTION creditgate.charge_credits_at(uuid, text, integer, text, jsonb, integer, timestamptz) FROM PUBLIC;
