-- Rate-limit namespaces: check_rate_limit's (type, identifier) pairs are
-- stored under an unambiguous encoding in the reserved 'creditgate:'
-- namespace, so no two pairs share a counter, nor a pair and an
-- apply_rate_limit key; callers of apply_rate_limit(s) cannot use that
-- namespace; the Edge Function's path (charge_credits_with_limit[s]) can.
BEGIN;
\ir _helpers.psql
SELECT plan(23);

SELECT tests.create_user('alice');
SELECT tests.give('alice', 100);
\set t0 '''2030-01-01 12:00:00+00''::timestamptz'

-- ('b:c', 'a') and ('c', 'a:b') were both the key 'a:b:c'.
SELECT is((SELECT allowed FROM creditgate.check_rate_limit_at('b:c', 'a', 1, 60, :t0)), true, 'check_rate_limit(''b:c'', ''a''): allowed, its limit of 1 now used');
SELECT is((SELECT allowed FROM creditgate.check_rate_limit_at('c', 'a:b', 1, 60, :t0)), true, 'check_rate_limit(''c'', ''a:b''): its own counter, allowed');
SELECT is((SELECT allowed FROM creditgate.check_rate_limit_at('b:c', 'a', 1, 60, :t0)), false, '(''b:c'', ''a'') again: refused, so the counters are real');
SELECT is((SELECT allowed FROM creditgate.apply_rate_limit_at('a:b:c', 1, 60, 1, :t0)), true, 'apply_rate_limit(''a:b:c''): not either pair''s counter');
SELECT is((SELECT allowed FROM creditgate.apply_rate_limit_at('a:b:c', 1, 60, 1, :t0)), false, '(and it counts on its own)');
SELECT is((SELECT allowed FROM creditgate.check_rate_limit_at('c', 'a:b', 1, 60, :t0)), false, '(''c'', ''a:b'') again: refused by its own counter');
SELECT is(creditgate.check_rate_limit_key('a', 'b:c'), 'creditgate:check:1:a:b:c', 'the stored key: reserved prefix, length-prefixed type');
SELECT isnt(creditgate.check_rate_limit_key('a:b', 'c'), creditgate.check_rate_limit_key('a', 'b:c'), 'two pairs, two keys');
-- check_rate_limit and check_rate_limit_at write the key out instead of calling check_rate_limit_key: the same key.
SELECT is((SELECT count(*)::integer FROM public.rate_limits WHERE key = creditgate.check_rate_limit_key('a', 'b:c')), 1,
  'check_rate_limit_at stores under check_rate_limit_key''s key');
SELECT allowed AS ns_allowed FROM public.check_rate_limit('id-9', 'ns', 5, 60) \gset
SELECT is(:'ns_allowed'::boolean AND EXISTS (SELECT FROM public.rate_limits WHERE key = creditgate.check_rate_limit_key('ns', 'id-9')), true,
  'public.check_rate_limit stores under check_rate_limit_key''s key');

-- The longest pair fits the stored key bound.
SELECT is((SELECT allowed FROM creditgate.check_rate_limit_at(repeat('i', 190), repeat('t', 64), 1, 60, :t0)), true,
  'a 64-character type and a 190-character identifier still work (275 characters stored)');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.check_rate_limit_at(repeat('i', 191), 'user', 1, 60, %s)$$, :'t0'),
  '22023', 'an identifier of 191 characters');

-- The reserved prefix.
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.apply_rate_limit_at('creditgate:check:1:a:b:c', 5, 60, 1, %s)$$, :'t0'),
  '22023', 'apply_rate_limit cannot reach check_rate_limit''s counters');
SELECT is(tests.error_of($$SELECT * FROM public.apply_rate_limit('creditgate:ip:1.2.3.4', 5, 60)$$) - 'details',
  '{"code": "22023", "hint": "invalid_argument", "message": "p_key: the key prefix ''creditgate:'' is reserved for creditgate''s own limits"}'::jsonb,
  'apply_rate_limit: 22023 invalid_argument, the message says the prefix is reserved');
SELECT * FROM tests.refused($$SELECT * FROM public.apply_rate_limits('[{"key":"ok","limit":5,"window_seconds":60},{"key":"creditgate:user:x","limit":5,"window_seconds":60}]')$$,
  '22023', 'apply_rate_limits refuses a creditgate: key');
SELECT is(tests.error_of($$SELECT * FROM public.apply_rate_limits('[{"key":"creditgate:user:x","limit":5,"window_seconds":60}]')$$) ->> 'message',
  'p_limits[0].key: the key prefix ''creditgate:'' is reserved for creditgate''s own limits', '(naming the entry)');
SELECT is((SELECT allowed FROM public.apply_rate_limit('Creditgate:x', 1, 60)), true, 'the prefix is exact: Creditgate:x is an ordinary key');

-- The Edge Function's path may use creditgate: keys, except check_rate_limit's.
SELECT is((SELECT allowed FROM creditgate.charge_credits_with_limit_at(tests.id_of('alice'), 'image', 1, 'creditgate:user:alice', 5, 60,
  NULL, '{}', 900, 1, :t0)), true, 'charge_credits_with_limit accepts creditgate:user:<uuid>');
SELECT * FROM tests.refused(format($$SELECT * FROM creditgate.charge_credits_with_limit_at(%L, 'image', 1, 'creditgate:check:1:a:b:c', 5, 60, NULL, '{}', 900, 1, %s)$$,
  tests.id_of('alice'), :'t0'), '22023', 'but not check_rate_limit''s creditgate:check:');

SELECT * FROM finish();
ROLLBACK;
