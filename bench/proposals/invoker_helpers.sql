-- =============================================================================
-- bench/proposals/invoker_helpers.sql: a proposal, measured with
-- `cargo dev bench --patch bench/proposals/invoker_helpers.sql` and checked
-- with `cargo dev bench --patch-check bench/proposals/invoker_helpers.sql`.
-- Not applied by the migrations.
--
-- The private creditgate.* helpers become SECURITY INVOKER without their own
-- `SET search_path`. Every one is called only by its owner: from a
-- SECURITY DEFINER public function (which already runs with
-- search_path = pg_catalog, pg_temp, and as the owner), from pg_cron (as the
-- owner) or from tests; EXECUTE on them is granted to no client role. So
-- they would run with the same role and search_path as today, without
-- paying for the GUC save and restore on every call (docs/scaling.md,
-- "Where the time goes"). Trigger functions keep SECURITY DEFINER (they
-- fire as whichever role writes the table).
-- =============================================================================
DO $$
DECLARE
  v_function regprocedure;
BEGIN
  FOR v_function IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'creditgate'::regnamespace AND p.prosecdef
      AND p.prorettype <> 'trigger'::regtype
  LOOP
    EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER RESET search_path', v_function);
  END LOOP;
END
$$;
