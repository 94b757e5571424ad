//! Building SQL text with parameters. Every value from the request goes in
//! as a parameter of type `unknown` in text format, so PostgreSQL infers
//! its type from the context (`"id" = $1` is an integer comparison when `id`
//! is an integer), exactly like a literal, which is what PostgREST does.
//! Identifiers are always double-quoted.

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

use super::cache::Routine;
use super::params::{Field, Filter, JsonOp, JsonOperand, LogicTree, Operation, OrderTerm, Quantifier, SelectItem};

/// A statement parameter.
#[derive(Debug, Clone)]
pub enum Param {
    /// Sent as `unknown`, text format: typed by PostgreSQL from its context.
    Unknown(Option<String>),
    /// Raw bytes, sent as `bytea` (an `application/octet-stream` body).
    Bytes(Vec<u8>),
}

impl Param {
    pub fn pg_type(&self) -> Type {
        match self {
            Param::Unknown(_) => Type::UNKNOWN,
            Param::Bytes(_) => Type::BYTEA,
        }
    }
}

impl ToSql for Param {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Unknown(None) => Ok(IsNull::Yes),
            Param::Unknown(Some(s)) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            Param::Bytes(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Unknown(_) => Format::Text,
            Param::Bytes(_) => Format::Binary,
        }
    }

    to_sql_checked!();
}

/// SQL text under construction and its parameters.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub params: Vec<Param>,
}

impl Sql {
    /// Adds a text value; returns its placeholder (`$n`). PostgreSQL text
    /// cannot hold NUL, so it is cut there (as PostgREST's `trimNullChars`).
    pub fn value(&mut self, v: &str) -> String {
        let v = v.split('\0').next().unwrap_or_default();
        self.params.push(Param::Unknown(Some(v.to_string())));
        format!("${}", self.params.len())
    }

    pub fn bytes(&mut self, v: Vec<u8>) -> String {
        self.params.push(Param::Bytes(v));
        format!("${}", self.params.len())
    }
}

/// A double-quoted identifier (`"a""b"`), cut at NUL.
pub use crate::support::quote_ident as ident;

pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `qualifier."column"->$1->>$2`
pub fn field_sql(sql: &mut Sql, qualifier: &str, field: &Field) -> String {
    let mut out = if field.name == "*" { format!("{qualifier}.*") } else { format!("{qualifier}.{}", ident(&field.name)) };
    for op in &field.json_path {
        let (arrow, operand) = match op {
            JsonOp::Arrow(o) => ("->", o),
            JsonOp::DoubleArrow(o) => ("->>", o),
        };
        out.push_str(arrow);
        match operand {
            JsonOperand::Key(k) => out.push_str(&sql.value(k)),
            JsonOperand::Idx(i) => {
                let p = sql.value(i);
                out.push_str(&format!("{p}::int"));
            }
        }
    }
    out
}

/// The name PostgREST gives a selected JSON path: its last key.
fn json_path_alias(field: &Field) -> Option<String> {
    field.json_path.last().map(|op| match op {
        JsonOp::Arrow(JsonOperand::Key(k)) | JsonOp::DoubleArrow(JsonOperand::Key(k)) => k.clone(),
        JsonOp::Arrow(JsonOperand::Idx(i)) | JsonOp::DoubleArrow(JsonOperand::Idx(i)) => {
            i.trim_start_matches('+').to_string()
        }
    })
}

/// The select list (`*` when empty).
pub fn select_sql(sql: &mut Sql, qualifier: &str, items: &[SelectItem]) -> String {
    if items.is_empty() {
        return format!("{qualifier}.*");
    }
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item {
            SelectItem::Star => format!("{qualifier}.*"),
            SelectItem::Field { field, cast, alias } => {
                let mut expr = field_sql(sql, qualifier, field);
                if let Some(c) = cast {
                    expr = format!("CAST({expr} AS {c})");
                }
                match alias.clone().or_else(|| json_path_alias(field)) {
                    Some(a) => format!("{expr} AS {}", ident(&a)),
                    None => expr,
                }
            }
        })
        .collect();
    parts.join(", ")
}

/// `'{"a","b"}'`: an array literal for `= ANY($n)`.
fn array_literal(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            let v = v.split('\0').next().unwrap_or_default();
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        })
        .collect();
    format!("{{{}}}", escaped.join(","))
}

pub fn filter_sql(sql: &mut Sql, qualifier: &str, filter: &Filter) -> String {
    let column = field_sql(sql, qualifier, &filter.field);
    let not = if filter.expr.negated { "NOT " } else { "" };
    let rest = match &filter.expr.operation {
        Operation::Simple(op, v) => format!("{op} {}", sql.value(v)),
        Operation::Quant { op, quantifier, value } => {
            let v = if *op == "like" || *op == "ilike" { value.replace('*', "%") } else { value.clone() };
            let p = sql.value(&v);
            match quantifier {
                None => format!("{op} {p}"),
                Some(Quantifier::Any) => format!("{op} ANY({p})"),
                Some(Quantifier::All) => format!("{op} ALL({p})"),
            }
        }
        Operation::In(values) => {
            if values.len() == 1 && values[0].is_empty() {
                "= ANY('{}')".to_string()
            } else {
                format!("= ANY({})", sql.value(&array_literal(values)))
            }
        }
        Operation::Is(keyword) => format!("IS {keyword}"),
        Operation::IsDistinct(v) => format!("IS DISTINCT FROM {}", sql.value(v)),
        Operation::Fts { function, language, value } => match language {
            Some(l) => {
                let lp = sql.value(l);
                let vp = sql.value(value);
                format!("@@ {function}({lp}, {vp})")
            }
            None => format!("@@ {function}({})", sql.value(value)),
        },
    };
    format!("{not}{column} {rest}")
}

pub fn logic_sql(sql: &mut Sql, qualifier: &str, tree: &LogicTree) -> String {
    match tree {
        LogicTree::Stmnt(f) => filter_sql(sql, qualifier, f),
        LogicTree::Expr { negated, and, children } => {
            let joiner = if *and { " AND " } else { " OR " };
            let parts: Vec<String> = children.iter().map(|c| logic_sql(sql, qualifier, c)).collect();
            format!("{}({})", if *negated { "NOT " } else { "" }, parts.join(joiner))
        }
    }
}

/// `WHERE ...` for the filters and logic trees (empty when none).
pub fn where_sql(sql: &mut Sql, qualifier: &str, filters: &[Filter], logic: &[LogicTree]) -> String {
    let mut conds: Vec<String> = filters.iter().map(|f| filter_sql(sql, qualifier, f)).collect();
    conds.extend(logic.iter().map(|t| logic_sql(sql, qualifier, t)));
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

pub fn order_sql(sql: &mut Sql, qualifier: &str, terms: &[OrderTerm]) -> String {
    if terms.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = terms
        .iter()
        .map(|t| {
            let mut s = field_sql(sql, qualifier, &t.field);
            match t.descending {
                Some(true) => s.push_str(" DESC"),
                Some(false) => s.push_str(" ASC"),
                None => {}
            }
            match t.nulls_first {
                Some(true) => s.push_str(" NULLS FIRST"),
                Some(false) => s.push_str(" NULLS LAST"),
                None => {}
            }
            s
        })
        .collect();
    format!(" ORDER BY {}", parts.join(", "))
}

/// A top-level range: rows `offset ..= offset + limit - 1` (limit None: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: i64,
    pub limit: Option<i64>,
}

impl Range {
    pub const ALL: Range = Range { offset: 0, limit: None };

    pub fn sql(&self) -> String {
        if *self == Range::ALL {
            return String::new();
        }
        match self.limit {
            Some(l) => format!(" LIMIT {l} OFFSET {}", self.offset),
            None => format!(" LIMIT ALL OFFSET {}", self.offset),
        }
    }
}

/// How the result rows become the response body (PostgREST's media handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `application/json`: an array (or a bare value for single results).
    Json { strip_nulls: bool },
    /// `application/vnd.pgrst.object+json`: the first row as an object.
    Single { strip_nulls: bool },
    /// `text/csv`
    Csv,
    /// No body (HEAD, `return=minimal`).
    None,
}

fn strip(on: bool, expr: &str) -> String {
    if on {
        format!("json_strip_nulls({expr})")
    } else {
        expr.to_string()
    }
}

/// The body expression over the rows `_postgrest_t`.
pub fn handler_sql(handler: Handler, routine: Option<&Routine>) -> String {
    let scalar = routine.map(Routine::returns_scalar).unwrap_or(false);
    let setof_scalar = routine.map(Routine::returns_setof_scalar).unwrap_or(false);
    let single_composite = routine.map(Routine::returns_single_composite).unwrap_or(false);
    match handler {
        Handler::Json { strip_nulls } => {
            if single_composite {
                format!("coalesce(({})->0, 'null')::text", strip(strip_nulls, "json_agg(_postgrest_t)"))
            } else if scalar {
                format!("coalesce(({})->0, 'null')::text", strip(strip_nulls, "json_agg(_postgrest_t.pgrst_scalar)"))
            } else if setof_scalar {
                format!("coalesce({}, '[]')::text", strip(strip_nulls, "json_agg(_postgrest_t.pgrst_scalar)"))
            } else {
                format!("coalesce({}, '[]')::text", strip(strip_nulls, "json_agg(_postgrest_t)"))
            }
        }
        Handler::Single { strip_nulls } => {
            if scalar {
                format!("coalesce(({})->0, 'null')::text", strip(strip_nulls, "json_agg(_postgrest_t.pgrst_scalar)"))
            } else {
                format!("coalesce(({})->0, 'null')::text", strip(strip_nulls, "json_agg(_postgrest_t)"))
            }
        }
        Handler::Csv => "(SELECT coalesce(string_agg(a.k, ','), '') FROM (SELECT json_object_keys(r)::text AS k FROM (SELECT row_to_json(hh) AS r FROM pgrst_source AS hh LIMIT 1) s) a) || '\n' || coalesce(string_agg(substring(_postgrest_t::text, 2, length(_postgrest_t::text) - 2), '\n'), '')".to_string(),
        Handler::None => "''::text".to_string(),
    }
}

/// The statement every request runs: the source CTE (a read, a call or a
/// write), an optional count, and one row with the total, the page count,
/// the body, and the `response.headers` / `response.status` GUCs.
pub fn wrap(source: &str, count: Option<&str>, page_total_is_one: bool, body: &str, rows_from: &str) -> String {
    let (count_cte, total) = match count {
        Some(c) => (format!(", pgrst_source_count AS ({c})"), "(SELECT pg_catalog.count(*) FROM pgrst_source_count)"),
        None => (String::new(), "null::bigint"),
    };
    let page_total = if page_total_is_one { "1::bigint" } else { "pg_catalog.count(_postgrest_t)" };
    format!(
        "WITH pgrst_source AS ({source}){count_cte} SELECT {total} AS total_result_set, {page_total} AS page_total, {body} AS body, \
         nullif(current_setting('response.headers', true), '') AS response_headers, \
         nullif(current_setting('response.status', true), '') AS response_status \
         FROM ({rows_from}) _postgrest_t"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::params::{OpExpr, Operation};

    #[test]
    fn quotes_identifiers() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("x\0y"), "\"x\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
    }

    #[test]
    fn renders_filters_with_parameters() {
        let mut sql = Sql::default();
        let f = Filter {
            field: Field { name: "name".into(), json_path: vec![] },
            expr: OpExpr { negated: true, operation: Operation::Quant { op: "like", quantifier: None, value: "*a*".into() } },
        };
        assert_eq!(filter_sql(&mut sql, "t", &f), "NOT t.\"name\" like $1");
        assert!(matches!(&sql.params[0], Param::Unknown(Some(v)) if v == "%a%"));
        let i = Filter {
            field: Field { name: "id".into(), json_path: vec![] },
            expr: OpExpr { negated: false, operation: Operation::In(vec!["1".into(), "a\"b".into()]) },
        };
        assert_eq!(filter_sql(&mut sql, "t", &i), "t.\"id\" = ANY($2)");
        assert!(matches!(&sql.params[1], Param::Unknown(Some(v)) if v == r#"{"1","a\"b"}"#));
    }
}
