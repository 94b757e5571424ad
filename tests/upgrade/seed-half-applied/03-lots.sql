-- Lots on the half-applied seed: every balance became one `legacy` lot,
-- open holds mapped to it (docs/rpc.md, "Upgrade"), and the lots reconcile.
BEGIN;
\ir ../../../supabase/tests/database/_helpers.psql
SELECT plan(3);

SELECT is_empty($$
  SELECT u.id FROM public.users u
  WHERE u.credits > 0 AND (SELECT array_agg(l.category || ':' || l.remaining || ':' || (l.expires_at IS NULL))
                           FROM public.credit_lots l WHERE l.user_id = u.id)
                          IS DISTINCT FROM ARRAY['legacy:' || u.credits || ':true']
$$, 'every balance from before lots is one legacy lot, never expiring');
SELECT is_empty($$
  SELECT j.id FROM public.generation_jobs j JOIN public.credit_ledger c ON c.job_id = j.id AND c.entry_type = 'charge'
  WHERE j.status = 'pending' AND NOT EXISTS (SELECT FROM public.credit_lot_movements m WHERE m.ledger_id = c.id)
$$, 'every open hold with a charge entry draws from the legacy lot');
SELECT is_empty($$SELECT * FROM public.verify_credit_ledger() WHERE problem LIKE '%lot%'$$, 'the lots reconcile');

SELECT * FROM finish();
ROLLBACK;
