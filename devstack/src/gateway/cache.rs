//! The schema cache: functions, tables and role settings read from
//! pg_catalog for the exposed schemas, as PostgREST's `SchemaCache.hs` keeps
//! them. Reloaded on `NOTIFY pgrst, 'reload schema'` (see `listener`).

use std::collections::HashMap;

use serde::Deserialize;
use tokio_postgres::types::Type;

#[derive(Debug, Clone, Deserialize)]
pub struct RoutineParam {
    pub name: String,
    /// The type as SQL text (`integer`, `text[]`, `public.my_enum`), with
    /// `character` widened to `character varying` as PostgREST does.
    #[serde(rename = "type")]
    pub type_name: String,
    pub required: bool,
    pub variadic: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    Volatile,
    Stable,
    Immutable,
}

#[derive(Debug, Clone)]
pub struct Routine {
    pub schema: String,
    pub name: String,
    pub params: Vec<RoutineParam>,
    pub returns_setof: bool,
    /// A composite result: a row type, `TABLE(...)`, or OUT/INOUT parameters.
    pub returns_composite: bool,
    pub return_type_schema: String,
    pub return_type_name: String,
    pub volatility: Volatility,
    pub has_variadic: bool,
}

impl Routine {
    pub fn returns_void(&self) -> bool {
        !self.returns_setof && !self.returns_composite && self.return_type_schema == "pg_catalog" && self.return_type_name == "void"
    }
    pub fn returns_scalar(&self) -> bool {
        !self.returns_setof && !self.returns_composite
    }
    pub fn returns_setof_scalar(&self) -> bool {
        self.returns_setof && !self.returns_composite
    }
    pub fn returns_single_composite(&self) -> bool {
        !self.returns_setof && self.returns_composite
    }
    /// A single value or row: the page total is always 1.
    pub fn returns_single(&self) -> bool {
        !self.returns_setof
    }
    /// `schema.name(a => integer, b => text)`, as in PGRST203's message.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|p| format!("{} => {}", p.name, p.type_name)).collect();
        format!("{}.{}({})", self.schema, self.name, params.join(", "))
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
    pub primary_key: Vec<String>,
    pub insertable: bool,
    pub updatable: bool,
    pub deletable: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SchemaCache {
    /// (schema, name) -> overloads, fewest parameters first.
    pub routines: HashMap<(String, String), Vec<Routine>>,
    pub tables: HashMap<(String, String), Table>,
    /// Settings of the roles the authenticator can become (`ALTER ROLE anon
    /// SET statement_timeout = '3s'`), applied per request as PostgREST does.
    pub role_settings: HashMap<String, Vec<(String, String)>>,
}

impl SchemaCache {
    pub fn routines(&self, schema: &str, name: &str) -> &[Routine] {
        self.routines.get(&(schema.to_string(), name.to_string())).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn table(&self, schema: &str, name: &str) -> Option<&Table> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }

    pub fn routine_names_in(&self, schema: &str) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.routines.keys().filter(|(s, _)| s == schema).map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Reads the cache for `schemas` through `client` (the authenticator).
    pub async fn load(client: &mut deadpool_postgres::Object, schemas: &[String]) -> Result<SchemaCache, tokio_postgres::Error> {
        let tx = client.build_transaction().read_only(true).start().await?;
        // With only pg_catalog on the path, regtype::text qualifies every
        // other type (`public.my_enum`), so names resolve from any schema.
        tx.batch_execute("SET LOCAL search_path TO pg_catalog").await?;
        let schemas_param = schemas.to_vec();
        let rows = tx.query_typed(ROUTINES_SQL, &[(&schemas_param, Type::TEXT_ARRAY)]).await?;
        let mut cache = SchemaCache::default();
        for row in rows {
            let args_json: String = row.try_get(2)?;
            let params: Vec<RoutineParam> = serde_json::from_str(&args_json).unwrap_or_default();
            let unnamed = params.iter().filter(|p| p.name.is_empty()).count();
            let callable = match unnamed {
                0 => true,
                1 => params.first().map(|p| matches!(p.type_name.as_str(), "bytea" | "json" | "jsonb" | "text" | "xml")).unwrap_or(false),
                _ => false,
            };
            if !callable {
                continue;
            }
            let volatility: String = row.try_get(7)?;
            let routine = Routine {
                schema: row.try_get(0)?,
                name: row.try_get(1)?,
                params,
                returns_setof: row.try_get(3)?,
                returns_composite: row.try_get(4)?,
                return_type_schema: row.try_get(5)?,
                return_type_name: row.try_get(6)?,
                volatility: match volatility.as_str() {
                    "i" => Volatility::Immutable,
                    "s" => Volatility::Stable,
                    _ => Volatility::Volatile,
                },
                has_variadic: row.try_get(8)?,
            };
            cache.routines.entry((routine.schema.clone(), routine.name.clone())).or_default().push(routine);
        }
        for overloads in cache.routines.values_mut() {
            overloads.sort_by_key(|r| r.params.len());
        }

        for row in tx.query_typed(TABLES_SQL, &[(&schemas_param, Type::TEXT_ARRAY)]).await? {
            let columns: String = row.try_get(2)?;
            let pk: String = row.try_get(3)?;
            let table = Table {
                schema: row.try_get(0)?,
                name: row.try_get(1)?,
                columns: serde_json::from_str(&columns).unwrap_or_default(),
                primary_key: serde_json::from_str(&pk).unwrap_or_default(),
                insertable: row.try_get(4)?,
                updatable: row.try_get(5)?,
                deletable: row.try_get(6)?,
            };
            cache.tables.insert((table.schema.clone(), table.name.clone()), table);
        }

        for row in tx.query_typed(ROLE_SETTINGS_SQL, &[]).await? {
            let role: String = row.try_get(0)?;
            let settings: String = row.try_get(1)?;
            let pairs: Vec<(String, String)> = serde_json::from_str(&settings).unwrap_or_default();
            cache.role_settings.insert(role, pairs);
        }
        tx.commit().await?;
        Ok(cache)
    }
}

/// Functions of the exposed schemas: input parameters (name, type, whether
/// required, variadic), the return type with domains resolved to their base,
/// whether it is a set, whether it is composite (a row type or OUT/TABLE
/// parameters), and the volatility.
const ROUTINES_SQL: &str = r#"
WITH RECURSIVE base_types(oid, base) AS (
  SELECT t.oid, t.oid FROM pg_catalog.pg_type t WHERE t.typtype <> 'd'
  UNION ALL
  SELECT d.oid, b.base FROM pg_catalog.pg_type d JOIN base_types b ON d.typbasetype = b.oid WHERE d.typtype = 'd'
)
SELECT
  n.nspname::text,
  p.proname::text,
  coalesce((
    SELECT json_agg(json_build_object(
        'name', coalesce(a.name, ''),
        'type', CASE a.typ
                  WHEN 'bit'::regtype THEN 'bit varying'
                  WHEN 'bit[]'::regtype THEN 'bit varying[]'
                  WHEN 'character'::regtype THEN 'character varying'
                  WHEN 'character[]'::regtype THEN 'character varying[]'
                  ELSE a.typ::regtype::text
                END,
        'required', a.input_index <= p.pronargs - p.pronargdefaults,
        'variadic', coalesce(a.mode = 'v', false)
      ) ORDER BY a.input_index)
    FROM (
      SELECT u.typ, u.mode, u.name, row_number() OVER (ORDER BY u.idx) AS input_index
      FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]), p.proargmodes, p.proargnames)
           WITH ORDINALITY AS u(typ, mode, name, idx)
      WHERE u.typ IS NOT NULL AND coalesce(u.mode, 'i') IN ('i', 'b', 'v')
    ) a
  ), '[]')::text,
  p.proretset,
  (rt.typtype = 'c' OR coalesce(p.proargmodes::text[] && '{t,b,o}', false)),
  rtn.nspname::text,
  rt.typname::text,
  p.provolatile::text,
  p.provariadic <> 0
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN base_types bt ON bt.oid = p.prorettype
JOIN pg_catalog.pg_type rt ON rt.oid = bt.base
JOIN pg_catalog.pg_namespace rtn ON rtn.oid = rt.typnamespace
WHERE n.nspname = ANY($1)
  AND p.prokind = 'f'
  AND p.prorettype <> 'pg_catalog.trigger'::regtype
"#;

/// Tables, views, materialized views and foreign tables of the exposed
/// schemas, with their columns, primary key and which writes they accept.
const TABLES_SQL: &str = r#"
SELECT
  n.nspname::text,
  c.relname::text,
  coalesce((SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')::text,
  coalesce((SELECT json_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum))
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
            WHERE i.indrelid = c.oid AND i.indisprimary), '[]')::text,
  c.relkind IN ('r', 'p') OR (c.relkind IN ('v', 'f') AND (pg_catalog.pg_relation_is_updatable(c.oid::regclass, true) & 8) = 8),
  c.relkind IN ('r', 'p') OR (c.relkind IN ('v', 'f') AND (pg_catalog.pg_relation_is_updatable(c.oid::regclass, true) & 4) = 4),
  c.relkind IN ('r', 'p') OR (c.relkind IN ('v', 'f') AND (pg_catalog.pg_relation_is_updatable(c.oid::regclass, true) & 16) = 16)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND n.nspname = ANY($1)
"#;

/// Settings (`ALTER ROLE r SET k = v`) of the roles the current user is a
/// member of, that the role switch must apply (user-settable ones only).
const ROLE_SETTINGS_SQL: &str = r#"
WITH settings AS (
  SELECT r.rolname, unnest(r.rolconfig) AS setting
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
  WHERE m.member = current_user::regrole::oid
), kv AS (
  SELECT rolname,
         substr(setting, 1, strpos(setting, '=') - 1) AS key,
         substr(setting, strpos(setting, '=') + 1) AS value
  FROM settings
)
SELECT kv.rolname::text, json_agg(json_build_array(kv.key, kv.value))::text
FROM kv
JOIN pg_catalog.pg_settings ps ON ps.name = kv.key
WHERE ps.context = 'user' OR pg_catalog.has_parameter_privilege(current_user::regrole::oid, ps.name, 'set')
GROUP BY kv.rolname
"#;

/// Fuzzy "did you mean": the candidate most similar to `needle` (trigram
/// and bigram cosine similarity, at least 0.33, as Haskell's FuzzySet).
pub fn closest<'a>(needle: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    for size in [3usize, 2] {
        let target = grams(needle, size);
        let best = candidates
            .iter()
            .map(|c| (cosine(&target, &grams(c, size)), *c))
            .filter(|(score, _)| *score >= 0.33)
            .fold(None::<(f64, &str)>, |acc, (score, c)| match acc {
                Some((s, _)) if s >= score => acc,
                _ => Some((score, c)),
            });
        if let Some((_, c)) = best {
            return Some(c);
        }
    }
    None
}

fn grams(s: &str, size: usize) -> HashMap<String, f64> {
    let padded: Vec<char> = format!("-{}-", s.to_lowercase()).chars().collect();
    let mut out = HashMap::new();
    if padded.len() < size {
        return out;
    }
    for w in padded.windows(size) {
        *out.entry(w.iter().collect::<String>()).or_insert(0.0) += 1.0;
    }
    out
}

fn cosine(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> f64 {
    let dot: f64 = a.iter().map(|(k, v)| v * b.get(k).copied().unwrap_or(0.0)).sum();
    let na: f64 = a.values().map(|v| v * v).sum::<f64>().sqrt();
    let nb: f64 = b.values().map(|v| v * v).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name() {
        assert_eq!(closest("sayhell", ["sayhello", "add_them", "other"]), Some("sayhello"));
        assert_eq!(closest("testt", ["test", "another"]), Some("test"));
        assert_eq!(closest("noclosealternative", ["test", "another"]), None);
    }
}
