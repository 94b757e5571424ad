-- A second legacy database: Supabase's usual template, where someone pasted
-- the seed's first migration statement by statement and followed its
-- troubleshooting advice (`ADD COLUMN delta`), so part of it stuck:
--   * users(id REFERENCES auth.users ON DELETE CASCADE, email, credits DEFAULT 10)
--     with the seed's CHECK constraint;
--   * credit_ledger with a serial id, `amount NOT NULL`, an empty `delta`,
--     a key to users ON DELETE CASCADE, the seed's DO INSTEAD NOTHING rules
--     and its verify_ledger_delta trigger;
--   * the seed's generation_jobs (global idempotency index, key to auth.users
--     ON DELETE CASCADE) with a job it charged and never completed and two it
--     refunded; its idempotency_keys (UNIQUE (key, user_id), keys of
--     charges only, `operation` = the charge's operation type); its atomic_charge_credits and
--     refund_credits (SECURITY INVOKER, executable by anyone);
--   * the seed's rate_limits, check_rate_limit and cleanup_expired_rate_limits.

CREATE TABLE public.users (
  id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
  email text,
  credits integer NOT NULL DEFAULT 10,
  created_at timestamptz DEFAULT now()
);
CREATE TABLE public.credit_ledger (
  id serial PRIMARY KEY,
  user_id uuid REFERENCES public.users (id) ON DELETE CASCADE,
  amount integer NOT NULL,
  type text,
  created_at timestamptz DEFAULT now()
);
ALTER TABLE public.credit_ledger ADD COLUMN IF NOT EXISTS delta integer;
CREATE TABLE public.idempotency_keys (
  key text NOT NULL,
  user_id uuid NOT NULL,
  operation text,
  status text,
  created_at timestamptz DEFAULT now(),
  UNIQUE (key, user_id)
);

-- Data from before the seed.
INSERT INTO auth.users (id, email) VALUES
  ('a11ce000-0000-4000-8000-000000000001', 'alice@seed.test'),
  ('b0b00000-0000-4000-8000-000000000002', 'bob@seed.test');
INSERT INTO public.users (id, email, credits) VALUES
  ('a11ce000-0000-4000-8000-000000000001', 'alice@seed.test', 55),
  ('b0b00000-0000-4000-8000-000000000002', 'bob@seed.test', 10);
INSERT INTO public.credit_ledger (user_id, amount, type, created_at) VALUES
  ('a11ce000-0000-4000-8000-000000000001', 100, 'purchase', '2024-01-01 10:00:00+00'),
  ('a11ce000-0000-4000-8000-000000000001', -40, 'image', '2024-01-02 10:00:00+00'),
  ('a11ce000-0000-4000-8000-000000000001', -5, 'image', '2024-01-03 10:00:00+00');

-- The seed's first migration, the statements that went through.
CREATE TABLE IF NOT EXISTS generation_jobs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    operation_type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    cost INTEGER NOT NULL,
    idempotency_key TEXT,
    result_url TEXT,
    error_message TEXT,
    metadata JSONB DEFAULT '{}'::jsonb,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    completed_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX IF NOT EXISTS idx_generation_jobs_user_id ON generation_jobs(user_id);
CREATE INDEX IF NOT EXISTS idx_generation_jobs_status ON generation_jobs(status);
CREATE UNIQUE INDEX IF NOT EXISTS idx_generation_jobs_idempotency ON generation_jobs(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE OR REPLACE RULE credit_ledger_no_update AS ON UPDATE TO credit_ledger DO INSTEAD NOTHING;
CREATE OR REPLACE RULE credit_ledger_no_delete AS ON DELETE TO credit_ledger DO INSTEAD NOTHING;
CREATE OR REPLACE FUNCTION atomic_charge_credits(
    p_user_id UUID, p_operation_type TEXT, p_cost INTEGER, p_idempotency_key TEXT DEFAULT NULL, p_metadata JSONB DEFAULT '{}'::jsonb)
RETURNS TABLE(job_id UUID, new_balance INTEGER) AS $$
BEGIN
    RAISE EXCEPTION 'the seed''s version';
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION refund_credits(p_user_id UUID, p_job_id UUID, p_amount INTEGER, p_reason TEXT)
RETURNS INTEGER AS $$
BEGIN
    RAISE EXCEPTION 'the seed''s version';
END;
$$ LANGUAGE plpgsql;
ALTER TABLE generation_jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Users can view own jobs" ON generation_jobs FOR SELECT USING (auth.uid() = user_id);
CREATE POLICY "Service role can manage jobs" ON generation_jobs FOR ALL USING (auth.role() = 'service_role');
ALTER TABLE users ADD CONSTRAINT users_credits_non_negative CHECK (credits >= 0);
CREATE OR REPLACE FUNCTION verify_ledger_delta() RETURNS TRIGGER AS $$
BEGIN
    IF NEW.delta IS NULL THEN RAISE EXCEPTION 'Delta cannot be NULL'; END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER verify_ledger_before_insert BEFORE INSERT ON credit_ledger FOR EACH ROW EXECUTE FUNCTION verify_ledger_delta();
GRANT SELECT ON generation_jobs TO authenticated;

-- The seed's second migration, without the index that stopped it loading.
CREATE TABLE IF NOT EXISTS rate_limits (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  identifier TEXT NOT NULL,
  type TEXT NOT NULL CHECK (type IN ('user', 'ip')),
  request_count INTEGER NOT NULL DEFAULT 1,
  window_start TIMESTAMPTZ NOT NULL,
  window_end TIMESTAMPTZ NOT NULL,
  created_at TIMESTAMPTZ DEFAULT NOW(),
  updated_at TIMESTAMPTZ DEFAULT NOW(),
  UNIQUE(identifier, type, window_start)
);
CREATE OR REPLACE FUNCTION check_rate_limit(p_identifier TEXT, p_type TEXT, p_max_requests INTEGER, p_window_seconds INTEGER)
RETURNS TABLE (allowed BOOLEAN, current_count INTEGER, window_end TIMESTAMPTZ, remaining INTEGER) AS $$
BEGIN
  RAISE EXCEPTION 'the seed''s version';
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE FUNCTION cleanup_expired_rate_limits() RETURNS INTEGER AS $$
BEGIN
  RETURN 0;
END;
$$ LANGUAGE plpgsql;
ALTER TABLE rate_limits ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Service role can manage rate limits" ON rate_limits FOR ALL USING (true);
INSERT INTO rate_limits (identifier, type, request_count, window_start, window_end)
VALUES ('1.2.3.4', 'ip', 3, '2024-01-01 10:00', '2024-01-01 10:01');

-- What the seed's functions left.
INSERT INTO generation_jobs (id, user_id, operation_type, status, cost, idempotency_key, created_at, completed_at, error_message) VALUES
  ('00000000-0000-4000-b000-000000000001', 'a11ce000-0000-4000-8000-000000000001', 'image', 'pending', 40, 'k1', '2024-01-02 10:00:00+00', NULL, NULL),
  ('00000000-0000-4000-b000-000000000002', 'a11ce000-0000-4000-8000-000000000001', 'image', 'failed', 5, NULL, '2024-01-03 10:00:00+00', '2024-01-03 10:01:00+00', 'Refunded: timeout'),
  ('00000000-0000-4000-b000-000000000003', 'b0b00000-0000-4000-8000-000000000002', 'grant', 'failed', 5, 'k2', '2024-01-02 11:00:00+00', '2024-01-02 11:01:00+00', 'Refunded: timeout');
-- The seed keyed only charges and wrote their operation type as `operation`:
-- k1 is alice's charged job; bob's k2 keyed a charge (refunded) of an
-- operation type that happens to be called 'grant'.
INSERT INTO public.idempotency_keys (key, user_id, operation, status, created_at) VALUES
  ('k1', 'a11ce000-0000-4000-8000-000000000001', 'image', 'started', '2024-01-02 10:00:00+00'),
  ('k2', 'b0b00000-0000-4000-8000-000000000002', 'grant', 'started', '2024-01-02 11:00:00+00');
