-- A legacy database from before the seed, as the seed document finds it:
--   * public.users(id uuid, credits integer): no primary key, one NULL balance;
--   * public.credit_ledger with uuid ids, signed `amount integer NOT NULL`,
--     a reason, and no `delta` (the seed's functions fail on it with
--     "null value in column amount");
--   * an older rate_limits table (fixed window, open to anon) and a
--     check_rate_limit of another signature;
--   * a signup trigger that gives 10 credits without a ledger row.
-- Balances are partly explained by the ledger (alice), partly not (bob, dave),
-- not at all (carol, frank); zed's ledger rows outlived his account.
-- Loaded as the superuser into a Supabase-compatible database, then the
-- migrations run over it twice; tests/upgrade/NN-*.sql check the result.

CREATE TABLE public.users (
  id uuid,
  credits integer
);

CREATE TABLE public.credit_ledger (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL,
  amount integer NOT NULL,
  reason text,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.rate_limits (
  key text PRIMARY KEY,
  count integer NOT NULL DEFAULT 0,
  reset_at timestamptz NOT NULL
);
ALTER TABLE public.rate_limits ENABLE ROW LEVEL SECURITY;
CREATE POLICY "anyone can count" ON public.rate_limits FOR ALL USING (true);

CREATE FUNCTION public.check_rate_limit(p_key text, p_limit integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_count integer;
BEGIN
  INSERT INTO public.rate_limits (key, count, reset_at) VALUES (p_key, 1, now() + interval '1 minute')
  ON CONFLICT (key) DO UPDATE SET count = rate_limits.count + 1
  RETURNING count INTO v_count;
  RETURN v_count <= p_limit;
END;
$$;

CREATE FUNCTION public.handle_new_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  INSERT INTO public.users (id, credits) VALUES (NEW.id, 10);
  RETURN NEW;
END;
$$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
  FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();

-- Auth users; the signup trigger gives each 10 credits, then their balances moved.
INSERT INTO auth.users (id, email) VALUES
  ('a11ce000-0000-4000-8000-000000000001', 'alice@legacy.test'),
  ('b0b00000-0000-4000-8000-000000000002', 'bob@legacy.test'),
  ('ca401000-0000-4000-8000-000000000003', 'carol@legacy.test'),
  ('da7e0000-0000-4000-8000-000000000004', 'dave@legacy.test'),
  ('e5140000-0000-4000-8000-000000000005', 'erin@legacy.test'),
  ('96ace000-0000-4000-8000-000000000007', 'grace@legacy.test');
UPDATE public.users SET credits = 120 WHERE id = 'a11ce000-0000-4000-8000-000000000001';
UPDATE public.users SET credits = 80 WHERE id = 'b0b00000-0000-4000-8000-000000000002';
UPDATE public.users SET credits = 40 WHERE id = 'ca401000-0000-4000-8000-000000000003';
UPDATE public.users SET credits = NULL WHERE id = 'da7e0000-0000-4000-8000-000000000004';
UPDATE public.users SET credits = 0 WHERE id = 'e5140000-0000-4000-8000-000000000005';
-- grace's row was lost: an auth user without an account.
DELETE FROM public.users WHERE id = '96ace000-0000-4000-8000-000000000007';
-- frank: an account without an auth user.
INSERT INTO public.users (id, credits) VALUES ('f4a4c000-0000-4000-8000-000000000006', 7);

-- Ledger rows, inserted out of time order.
INSERT INTO public.credit_ledger (id, user_id, amount, reason, created_at) VALUES
  ('00000000-0000-4000-a000-000000000003', 'a11ce000-0000-4000-8000-000000000001', -30, 'image', '2024-01-03 10:00:00+00'),
  ('00000000-0000-4000-a000-000000000001', 'a11ce000-0000-4000-8000-000000000001', 100, 'purchase', '2024-01-01 10:00:00+00'),
  ('00000000-0000-4000-a000-000000000005', 'b0b00000-0000-4000-8000-000000000002', 50, 'purchase', '2024-01-02 09:00:00+00'),
  ('00000000-0000-4000-a000-000000000002', 'a11ce000-0000-4000-8000-000000000001', 50, 'purchase', '2024-01-02 10:00:00+00'),
  ('00000000-0000-4000-a000-000000000006', 'da7e0000-0000-4000-8000-000000000004', 5, 'promo', '2024-01-04 10:00:00+00'),
  ('00000000-0000-4000-a000-000000000007', '2ed00000-0000-4000-8000-000000000009', 20, 'purchase', '2023-12-01 10:00:00+00'),
  ('00000000-0000-4000-a000-000000000008', '2ed00000-0000-4000-8000-000000000009', -20, 'image', '2023-12-02 10:00:00+00');
