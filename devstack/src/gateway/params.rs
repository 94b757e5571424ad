//! The query string: `select`, filters (`col=op.value`), `and`/`or` trees,
//! `order`, `limit`/`offset`, `columns`, `on_conflict`, and the plain
//! `name=value` arguments of `GET /rpc/fn`. Grammar as PostgREST v12's
//! `ApiRequest/QueryParams.hs`; embedding and aggregates are refused.

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub enum JsonOperand {
    Key(String),
    /// An array index, with its sign (`+1`, `-2`).
    Idx(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum JsonOp {
    /// `->`
    Arrow(JsonOperand),
    /// `->>`
    DoubleArrow(JsonOperand),
}

/// A column, possibly followed by a JSON path (`data->a->>b`).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub json_path: Vec<JsonOp>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantifier {
    Any,
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `neq`, `cs`, `cd`, `ov`, `sl`, `sr`, `nxr`, `nxl`, `adj`: the SQL operator.
    Simple(&'static str, String),
    /// `eq`, `gt`, `gte`, `lt`, `lte`, `like`, `ilike`, `match`, `imatch`,
    /// optionally quantified (`eq(any)`): the SQL operator.
    Quant { op: &'static str, quantifier: Option<Quantifier>, value: String },
    In(Vec<String>),
    /// `is.null|true|false|unknown`: the SQL keyword.
    Is(&'static str),
    IsDistinct(String),
    /// `fts`, `plfts`, `phfts`, `wfts`: the tsquery function.
    Fts { function: &'static str, language: Option<String>, value: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpExpr {
    pub negated: bool,
    pub operation: Operation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: Field,
    pub expr: OpExpr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogicTree {
    Stmnt(Filter),
    Expr { negated: bool, and: bool, children: Vec<LogicTree> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    Star,
    Field { field: Field, cast: Option<String>, alias: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderTerm {
    pub field: Field,
    pub descending: Option<bool>,
    pub nulls_first: Option<bool>,
}

/// The parsed query string of one request.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    /// Sorted and re-encoded, for `Content-Location`.
    pub canonical: String,
    /// `GET /rpc/fn?name=value` arguments (values that are not filters).
    pub rpc_params: Vec<(String, String)>,
    pub filters: Vec<Filter>,
    pub logic: Vec<LogicTree>,
    pub order: Vec<OrderTerm>,
    pub select: Vec<SelectItem>,
    pub columns: Option<Vec<String>>,
    pub on_conflict: Option<Vec<String>>,
    /// `limit` as given (None when absent or not an integer).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl QueryParams {
    /// True when `select` is absent or `*`.
    pub fn default_select(&self) -> bool {
        self.select.is_empty() || self.select == [SelectItem::Star]
    }
}

/// Decodes `%xx` escapes; with `plus_as_space`, `+` is a space (query strings).
pub fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes for `Content-Location` (as `urlEncodeVars`).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Splits a raw query string into decoded `(key, value)` pairs; `&` and `;`
/// both separate pairs, as in http-types' `parseQuery`.
pub fn split_query(raw: &str) -> Vec<(String, Option<String>)> {
    raw.split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), Some(percent_decode(v, true))),
            None => (percent_decode(pair, true), None),
        })
        .collect()
}

/// Parses the query string. `is_rpc_read`: values that are not filters are
/// function arguments (GET/HEAD on /rpc), instead of errors.
pub fn parse(raw_query: &str, is_rpc_read: bool, relation: &str, schema: &str) -> Result<QueryParams, ApiError> {
    let pairs = split_query(raw_query);
    let mut sorted: Vec<(String, String)> =
        pairs.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical = sorted
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&");

    let mut qp = QueryParams { canonical, ..Default::default() };
    let lookup = |name: &str| pairs.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone());

    let select_raw = lookup("select").unwrap_or_else(|| "*".to_string());
    qp.select = parse_select(&select_raw, relation, schema)?;
    if let Some(cols) = lookup("columns") {
        qp.columns = Some(parse_columns(&cols, "columns")?);
    }
    if let Some(cols) = lookup("on_conflict") {
        qp.on_conflict = Some(parse_columns(&cols, "on_conflict")?);
    }

    for (key, value) in &pairs {
        let Some(value) = value else { continue };
        if matches!(key.as_str(), "select" | "columns" | "on_conflict") {
            continue;
        }
        let last = key.rsplit('.').next().unwrap_or(key);
        match last {
            "order" => {
                let path = embed_path(key)?;
                if let Some(first) = path.first() {
                    return Err(ApiError::not_embedded(first));
                }
                qp.order.extend(parse_order(value)?);
            }
            "limit" | "offset" => {
                let path = embed_path(key)?;
                if let Some(first) = path.first() {
                    return Err(ApiError::not_embedded(first));
                }
                let n = value.trim().parse::<i64>().ok();
                if last == "limit" {
                    qp.limit = n;
                } else {
                    qp.offset = n;
                }
            }
            "and" | "or" => {
                let (path, op) = logic_path(key)?;
                if let Some(first) = path.first() {
                    return Err(ApiError::not_embedded(first));
                }
                qp.logic.push(parse_logic(&op, value)?);
            }
            _ => {
                let (path, field) = tree_path(key)?;
                match parse_op_expr_full(value) {
                    Ok(expr) => {
                        if let Some(first) = path.first() {
                            return Err(ApiError::not_embedded(first));
                        }
                        qp.filters.push(Filter { field, expr });
                    }
                    Err(e) if !is_rpc_read => return Err(e),
                    Err(_) => {
                        if path.is_empty() && field.json_path.is_empty() {
                            qp.rpc_params.push((field.name, value.clone()));
                        } else {
                            qp.rpc_params.push((key.clone(), value.clone()));
                        }
                    }
                }
            }
        }
    }
    Ok(qp)
}

// --- A small recursive-descent parser over chars ------------------------

struct P<'a> {
    src: &'a str,
    chars: Vec<char>,
    pos: usize,
    what: String,
}

type PResult<T> = Result<T, ApiError>;

impl<'a> P<'a> {
    fn new(src: &'a str, what: String) -> P<'a> {
        P { src, chars: src.chars().collect(), pos: 0, what }
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }
    fn eof(&self) -> bool {
        self.pos >= self.chars.len()
    }
    fn starts_with(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(n, c)| self.chars.get(self.pos + n) == Some(&c))
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.starts_with(s) {
            self.pos += s.chars().count();
            true
        } else {
            false
        }
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ') | Some('\t')) {
            self.pos += 1;
        }
    }
    fn rest(&self) -> String {
        self.chars[self.pos.min(self.chars.len())..].iter().collect()
    }
    /// PostgREST's parse error: message names the input and the position,
    /// details what was found.
    fn error(&self, expecting: &str) -> ApiError {
        let unexpected = match self.peek() {
            Some(c) => format!("unexpected {c:?}"),
            None => "unexpected end of input".to_string(),
        };
        ApiError::query_param(
            format!("\"failed to parse {} ({})\" (line 1, column {})", self.what, self.src, self.pos + 1),
            format!("{unexpected} expecting {expecting}"),
        )
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == ' ' || c == '$'
}

/// `pQuotedValue`: `"..."` with backslash escapes.
fn quoted(p: &mut P) -> PResult<Option<String>> {
    if p.peek() != Some('"') {
        return Ok(None);
    }
    p.pos += 1;
    let mut out = String::new();
    loop {
        match p.peek() {
            None => return Err(p.error("\"\\\"\"")),
            Some('"') => {
                p.pos += 1;
                return Ok(Some(out));
            }
            Some('\\') => {
                p.pos += 1;
                match p.peek() {
                    Some(c) => {
                        out.push(c);
                        p.pos += 1;
                    }
                    None => return Err(p.error("any character")),
                }
            }
            Some(c) => {
                out.push(c);
                p.pos += 1;
            }
        }
    }
}

/// `sepByDash ident`: identifier parts joined by `-` (not `->`).
fn dashed(p: &mut P, part_char: fn(char) -> bool, strip: bool) -> Option<String> {
    let start = p.pos;
    let mut parts = Vec::new();
    loop {
        let s = p.pos;
        while p.peek().map(part_char).unwrap_or(false) {
            p.pos += 1;
        }
        if p.pos == s {
            if parts.is_empty() {
                p.pos = start;
                return None;
            }
            // A dash not followed by an identifier: give it back.
            p.pos -= 1;
            break;
        }
        let text: String = p.chars[s..p.pos].iter().collect();
        parts.push(if strip { text.trim().to_string() } else { text });
        if p.peek() == Some('-') && p.peek_at(1) != Some('>') {
            p.pos += 1;
            continue;
        }
        break;
    }
    Some(parts.join("-"))
}

fn field_name(p: &mut P) -> PResult<String> {
    if let Some(q) = quoted(p)? {
        return Ok(q);
    }
    dashed(p, is_ident_char, true).ok_or_else(|| p.error("field name (* or [a..z0..9_$])"))
}

fn json_path(p: &mut P) -> PResult<Vec<JsonOp>> {
    let mut path = Vec::new();
    loop {
        let double = if p.eat("->>") {
            true
        } else if p.eat("->") {
            false
        } else {
            return Ok(path);
        };
        let operand = json_operand(p)?;
        path.push(if double { JsonOp::DoubleArrow(operand) } else { JsonOp::Arrow(operand) });
    }
}

fn json_operand(p: &mut P) -> PResult<JsonOperand> {
    let save = p.pos;
    // An index: optional '-', digits, then the end of the operand.
    let sign = if p.eat("-") { '-' } else { '+' };
    let digits_start = p.pos;
    while p.peek().map(|c| c.is_ascii_digit()).unwrap_or(false) {
        p.pos += 1;
    }
    if p.pos > digits_start {
        let at_end = p.eof() || p.starts_with("->") || p.starts_with("::") || p.starts_with(".") || p.starts_with(",");
        if at_end {
            let digits: String = p.chars[digits_start..p.pos].iter().collect();
            return Ok(JsonOperand::Idx(format!("{sign}{digits}")));
        }
    }
    p.pos = save;
    if let Some(q) = quoted(p)? {
        return Ok(JsonOperand::Key(q));
    }
    dashed(p, |c| !"(-:.,>)".contains(c), true)
        .map(JsonOperand::Key)
        .ok_or_else(|| p.error("any non reserved character different from: .,>()"))
}

fn field(p: &mut P) -> PResult<Field> {
    p.ws();
    let name = field_name(p)?;
    let json_path = json_path(p)?;
    p.ws();
    Ok(Field { name, json_path })
}

/// A key like `a.b->c`: the embed path and the field.
fn tree_path(key: &str) -> PResult<(Vec<String>, Field)> {
    let mut p = P::new(key, "tree path".into());
    let mut names = vec![field_name(&mut p)?];
    while p.eat(".") {
        names.push(field_name(&mut p)?);
    }
    let jp = json_path(&mut p)?;
    if !p.eof() {
        return Err(p.error("\"->\", \".\" or end of input"));
    }
    let name = names.pop().unwrap_or_default();
    Ok((names, Field { name, json_path: jp }))
}

fn embed_path(key: &str) -> PResult<Vec<String>> {
    let mut parts: Vec<String> = key.split('.').map(String::from).collect();
    parts.pop();
    Ok(parts)
}

fn logic_path(key: &str) -> PResult<(Vec<String>, String)> {
    let parts: Vec<&str> = key.split('.').collect();
    let op = parts.last().copied().unwrap_or_default();
    let negated = parts.contains(&"not");
    let path: Vec<String> =
        parts[..parts.len().saturating_sub(1)].iter().filter(|s| **s != "not").map(|s| s.to_string()).collect();
    Ok((path, if negated { format!("not.{op}") } else { op.to_string() }))
}

fn end_of_value(p: &P, logic: bool) -> bool {
    !logic || p.eof() || matches!(p.peek(), Some(',') | Some(')'))
}

/// A single value: all the rest (a filter), or up to `,`/`)` (inside a logic tree).
fn single_value(p: &mut P, logic: bool) -> PResult<String> {
    if !logic {
        let v = p.rest();
        p.pos = p.chars.len();
        return Ok(v);
    }
    let save = p.pos;
    if let Ok(Some(q)) = quoted(p) {
        if end_of_value(p, true) {
            return Ok(q);
        }
    }
    p.pos = save;
    if p.peek() == Some('{') {
        let start = p.pos;
        while let Some(c) = p.peek() {
            p.pos += 1;
            if c == '}' {
                return Ok(p.chars[start..p.pos].iter().collect());
            }
            if c == '{' && p.pos - 1 != start {
                break;
            }
        }
        p.pos = save;
    }
    let start = p.pos;
    while let Some(c) = p.peek() {
        if c == ',' || c == ')' {
            break;
        }
        p.pos += 1;
    }
    Ok(p.chars[start..p.pos].iter().collect())
}

fn list_value(p: &mut P) -> PResult<Vec<String>> {
    p.ws();
    if !p.eat("(") {
        return Err(p.error("\"(\""));
    }
    p.ws();
    let mut items = Vec::new();
    loop {
        let save = p.pos;
        let mut item = None;
        if let Ok(Some(q)) = quoted(p) {
            if matches!(p.peek(), Some(',') | Some(')')) {
                item = Some(q);
            }
        }
        if item.is_none() {
            p.pos = save;
            let start = p.pos;
            while let Some(c) = p.peek() {
                if c == ',' || c == ')' {
                    break;
                }
                p.pos += 1;
            }
            item = Some(p.chars[start..p.pos].iter().collect());
        }
        items.extend(item);
        if p.eat(",") {
            continue;
        }
        break;
    }
    p.ws();
    if !p.eat(")") {
        return Err(p.error("\",\" or \")\""));
    }
    p.ws();
    Ok(items)
}

const SIMPLE_OPS: [(&str, &str); 9] = [
    ("neq", "<>"),
    ("cs", "@>"),
    ("cd", "<@"),
    ("ov", "&&"),
    ("sl", "<<"),
    ("sr", ">>"),
    ("nxr", "&<"),
    ("nxl", "&>"),
    ("adj", "-|-"),
];

const QUANT_OPS: [(&str, &str); 9] = [
    ("eq", "="),
    ("gte", ">="),
    ("gt", ">"),
    ("lte", "<="),
    ("lt", "<"),
    ("like", "like"),
    ("ilike", "ilike"),
    ("match", "~"),
    ("imatch", "~*"),
];

const FTS_OPS: [(&str, &str); 4] = [
    ("fts", "to_tsquery"),
    ("plfts", "plainto_tsquery"),
    ("phfts", "phraseto_tsquery"),
    ("wfts", "websearch_to_tsquery"),
];

/// `pOpExpr`: `[not.]operator[(modifier)].value`.
fn op_expr(p: &mut P, logic: bool) -> PResult<OpExpr> {
    let negated = {
        let save = p.pos;
        if p.eat("not.") {
            true
        } else {
            p.pos = save;
            false
        }
    };
    let start = p.pos;
    while p.peek().map(|c| c.is_ascii_alphabetic()).unwrap_or(false) {
        p.pos += 1;
    }
    let op: String = p.chars[start..p.pos].iter().collect();
    let expecting = "\"not\" or operator (eq, gt, ...)";
    let modifier = if p.peek() == Some('(') {
        let mstart = p.pos + 1;
        let mut i = mstart;
        while i < p.chars.len() && p.chars[i] != ')' {
            i += 1;
        }
        if i >= p.chars.len() {
            p.pos = start;
            return Err(p.error(expecting));
        }
        let m: String = p.chars[mstart..i].iter().collect();
        p.pos = i + 1;
        Some(m)
    } else {
        None
    };
    let operation = match op.as_str() {
        "in" if modifier.is_none() => {
            if !p.eat(".") {
                return Err(p.error("delimiter (.)"));
            }
            Operation::In(list_value(p)?)
        }
        "is" if modifier.is_none() => {
            if !p.eat(".") {
                return Err(p.error("delimiter (.)"));
            }
            let v = single_value(p, logic)?;
            let keyword = match v.to_ascii_lowercase().as_str() {
                "null" => "NULL",
                "unknown" => "UNKNOWN",
                "true" => "TRUE",
                "false" => "FALSE",
                _ => return Err(p.error("null or trilean value (unknown, true, false)")),
            };
            Operation::Is(keyword)
        }
        "isdistinct" if modifier.is_none() => {
            if !p.eat(".") {
                return Err(p.error("delimiter (.)"));
            }
            Operation::IsDistinct(single_value(p, logic)?)
        }
        other => {
            if let Some((_, f)) = FTS_OPS.iter().find(|(n, _)| *n == other) {
                if !p.eat(".") {
                    return Err(p.error("delimiter (.)"));
                }
                let language = match modifier {
                    Some(m) if !m.trim().is_empty() && m.chars().all(is_ident_char) => Some(m.trim().to_string()),
                    Some(_) => {
                        p.pos = start;
                        return Err(p.error(expecting));
                    }
                    None => None,
                };
                Operation::Fts { function: f, language, value: single_value(p, logic)? }
            } else if let Some((_, sql)) = SIMPLE_OPS.iter().find(|(n, _)| *n == other).filter(|_| modifier.is_none()) {
                if !p.eat(".") {
                    return Err(p.error("delimiter (.)"));
                }
                Operation::Simple(sql, single_value(p, logic)?)
            } else if let Some((_, sql)) = QUANT_OPS.iter().find(|(n, _)| *n == other) {
                let quantifier = match modifier.as_deref() {
                    None => None,
                    Some("any") => Some(Quantifier::Any),
                    Some("all") => Some(Quantifier::All),
                    Some(_) => {
                        p.pos = start;
                        return Err(p.error(expecting));
                    }
                };
                if !p.eat(".") {
                    return Err(p.error("delimiter (.)"));
                }
                Operation::Quant { op: sql, quantifier, value: single_value(p, logic)? }
            } else {
                p.pos = start;
                return Err(p.error(expecting));
            }
        }
    };
    Ok(OpExpr { negated, operation })
}

fn parse_op_expr_full(value: &str) -> PResult<OpExpr> {
    let mut p = P::new(value, "filter".into());
    let expr = op_expr(&mut p, false)?;
    if !p.eof() {
        return Err(p.error("end of input"));
    }
    Ok(expr)
}

/// Nesting deeper than this is refused: the parser recurses, and a query
/// string of `or(or(or(...` must not exhaust the stack.
pub const LOGIC_DEPTH_MAX: usize = 64;

fn logic_tree(p: &mut P, depth: usize) -> PResult<LogicTree> {
    if depth > LOGIC_DEPTH_MAX {
        return Err(p.error(&format!("at most {LOGIC_DEPTH_MAX} nested logic operators")));
    }
    let save = p.pos;
    // A statement: field.op.value
    if let Ok(f) = field(p) {
        if p.eat(".") {
            if let Ok(expr) = op_expr(p, true) {
                return Ok(LogicTree::Stmnt(Filter { field: f, expr }));
            }
        }
    }
    p.pos = save;
    let negated = p.eat("not.");
    let and = if p.eat("and") {
        true
    } else if p.eat("or") {
        false
    } else {
        return Err(p.error("field name (* or [a..z0..9_$]), negation operator (not) or logic operator (and, or)"));
    };
    p.ws();
    if !p.eat("(") {
        return Err(p.error("\"(\""));
    }
    p.ws();
    let mut children = vec![logic_tree(p, depth + 1)?];
    loop {
        p.ws();
        if p.eat(",") {
            p.ws();
            children.push(logic_tree(p, depth + 1)?);
        } else {
            break;
        }
    }
    p.ws();
    if !p.eat(")") {
        return Err(p.error("\",\" or \")\""));
    }
    p.ws();
    Ok(LogicTree::Expr { negated, and, children })
}

fn parse_logic(op: &str, value: &str) -> PResult<LogicTree> {
    let src = format!("{op}{value}");
    let mut p = P::new(&src, "logic tree".into());
    let tree = logic_tree(&mut p, 0)?;
    if !p.eof() {
        return Err(p.error("end of input"));
    }
    // `?or=...` is always a logic expression, never a bare statement.
    match tree {
        LogicTree::Stmnt(_) => Err(p.error("logic operator (and, or)")),
        t => Ok(t),
    }
}

fn parse_columns(raw: &str, what: &str) -> PResult<Vec<String>> {
    let mut p = P::new(raw, format!("{what} parameter"));
    let mut cols = Vec::new();
    loop {
        p.ws();
        cols.push(field_name(&mut p)?);
        p.ws();
        if !p.eat(",") {
            break;
        }
    }
    if !p.eof() {
        return Err(p.error("\",\" or end of input"));
    }
    Ok(cols)
}

fn cast_ident(p: &mut P) -> Option<String> {
    let start = p.pos;
    while p.peek().map(is_ident_char).unwrap_or(false) {
        p.pos += 1;
    }
    let s: String = p.chars[start..p.pos].iter().collect::<String>().trim().to_string();
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

fn at_item_end(p: &P) -> bool {
    p.eof() || matches!(p.peek(), Some(',') | Some(')'))
}

/// Skips a balanced `( ... )` (for an embedded resource we refuse anyway).
fn skip_parens(p: &mut P) -> PResult<()> {
    let mut depth = 0usize;
    while let Some(c) = p.peek() {
        p.pos += 1;
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(());
                }
            }
            '"' => {
                while let Some(d) = p.peek() {
                    p.pos += 1;
                    if d == '\\' {
                        p.pos += 1;
                    } else if d == '"' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Err(p.error("\")\""))
}

fn parse_select(raw: &str, relation: &str, schema: &str) -> PResult<Vec<SelectItem>> {
    let mut p = P::new(raw, "select parameter".into());
    let mut items = Vec::new();
    p.ws();
    if p.eof() {
        return Ok(items);
    }
    loop {
        p.ws();
        items.push(select_item(&mut p, relation, schema)?);
        p.ws();
        if p.eat(",") {
            continue;
        }
        if !p.eof() {
            return Err(p.error("\",\" or end of input"));
        }
        break;
    }
    Ok(items)
}

fn select_item(p: &mut P, relation: &str, schema: &str) -> PResult<SelectItem> {
    // `*`
    if p.peek() == Some('*') {
        p.pos += 1;
        p.ws();
        if at_item_end(p) {
            return Ok(SelectItem::Star);
        }
        return Err(p.error("\")\", \",\" or end of input"));
    }
    // A spread `...rel(...)` or an embedded `alias:rel!hint(...)`.
    let save = p.pos;
    let spread = p.eat("...");
    let alias_or_name = field_name(p);
    if let Ok(first) = alias_or_name {
        let mut name = first.clone();
        let mut alias = None;
        if !spread && p.peek() == Some(':') && p.peek_at(1) != Some(':') {
            p.pos += 1;
            if let Ok(n) = field_name(p) {
                alias = Some(first);
                name = n;
            }
        }
        while p.peek() == Some('!') {
            p.pos += 1;
            let _ = field_name(p);
        }
        if p.peek() == Some('(') {
            if name == "count" && p.peek_at(1) == Some(')') {
                return Err(ApiError::aggregates_not_allowed());
            }
            skip_parens(p)?;
            let _ = alias;
            return Err(ApiError::no_relationship(relation, &name, schema));
        }
    }
    p.pos = save;
    if spread {
        return Err(p.error("field name (* or [a..z0..9_$])"));
    }
    // A field: `[alias:]name[->path][::cast][.agg()][::cast]`
    let mut alias = None;
    let before = p.pos;
    if let Ok(a) = field_name(p) {
        if p.peek() == Some(':') && p.peek_at(1) != Some(':') {
            p.pos += 1;
            alias = Some(a);
        } else {
            p.pos = before;
        }
    } else {
        p.pos = before;
    }
    let f = field(p)?;
    let mut cast = None;
    if p.eat("::") {
        cast = Some(cast_ident(p).ok_or_else(|| p.error("letter or digit"))?);
    }
    for agg in [".sum()", ".avg()", ".count()", ".max()", ".min()"] {
        if p.starts_with(agg) {
            return Err(ApiError::aggregates_not_allowed());
        }
    }
    p.ws();
    if !at_item_end(p) {
        return Err(p.error("letter, digit, \"-\", \"->>\", \"->\", \"::\", \".\", \")\", \",\" or end of input"));
    }
    Ok(SelectItem::Field { field: f, cast, alias })
}

fn parse_order(raw: &str) -> PResult<Vec<OrderTerm>> {
    let mut p = P::new(raw, "order".into());
    let mut terms = Vec::new();
    loop {
        p.ws();
        let f = field(&mut p)?;
        if p.peek() == Some('(') {
            return Err(ApiError::not_embedded(&f.name));
        }
        let mut descending = None;
        let mut nulls_first = None;
        if p.eat(".asc") {
            descending = Some(false);
        } else if p.eat(".desc") {
            descending = Some(true);
        }
        if p.eat(".nullsfirst") {
            nulls_first = Some(true);
        } else if p.eat(".nullslast") {
            nulls_first = Some(false);
        }
        p.ws();
        terms.push(OrderTerm { field: f, descending, nulls_first });
        if p.eat(",") {
            continue;
        }
        if !p.eof() {
            return Err(p.error("\"asc\", \"desc\", \"nullsfirst\" or \"nullslast\""));
        }
        break;
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Field {
        Field { name: name.into(), json_path: vec![] }
    }

    #[test]
    fn parses_filters_and_rpc_args() {
        let q = parse("id=eq.1&name=like.*a*&select=id,name&order=id.desc.nullslast&limit=2&offset=1", false, "t", "s")
            .unwrap();
        assert_eq!(q.filters.len(), 2);
        assert_eq!(q.filters[0].expr.operation, Operation::Quant { op: "=", quantifier: None, value: "1".into() });
        assert_eq!(q.order, vec![OrderTerm { field: f("id"), descending: Some(true), nulls_first: Some(false) }]);
        assert_eq!((q.limit, q.offset), (Some(2), Some(1)));
        let r = parse("a=1&b=gt.2", true, "f", "s").unwrap();
        assert_eq!(r.rpc_params, vec![("a".to_string(), "1".to_string())]);
        assert_eq!(r.filters.len(), 1);
        assert!(parse("a=1", false, "t", "s").is_err());
    }

    #[test]
    fn parses_in_is_not_and_quantifiers() {
        let q = parse("a=in.(1,\"x,y\",3)&b=not.is.null&c=eq(any).{1,2}&d=fts(english).cat", false, "t", "s").unwrap();
        assert_eq!(q.filters[0].expr.operation, Operation::In(vec!["1".into(), "x,y".into(), "3".into()]));
        assert!(q.filters[1].expr.negated);
        assert_eq!(q.filters[1].expr.operation, Operation::Is("NULL"));
        assert_eq!(
            q.filters[2].expr.operation,
            Operation::Quant { op: "=", quantifier: Some(Quantifier::Any), value: "{1,2}".into() }
        );
        assert!(matches!(q.filters[3].expr.operation, Operation::Fts { language: Some(_), .. }));
        assert!(parse("a=is.maybe", false, "t", "s").is_err());
        assert!(parse("a=noop.1", false, "t", "s").is_err());
    }

    #[test]
    fn parses_logic_trees() {
        let q = parse("or=(a.eq.1,and(b.gt.2,c.in.(1,2)))", false, "t", "s").unwrap();
        match &q.logic[0] {
            LogicTree::Expr { and: false, children, .. } => assert_eq!(children.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(parse("or=(a.eq.1", false, "t", "s").is_err());
    }

    #[test]
    fn parses_select_with_json_paths_casts_and_aliases() {
        let q = parse("select=id,n:name,data->>k,price::text", false, "t", "s").unwrap();
        assert_eq!(q.select.len(), 4);
        assert_eq!(q.select[1], SelectItem::Field { field: f("name"), cast: None, alias: Some("n".into()) });
        match &q.select[2] {
            SelectItem::Field { field, .. } => {
                assert_eq!(field.json_path, vec![JsonOp::DoubleArrow(JsonOperand::Key("k".into()))])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse("select=*,rel(*)", false, "t", "s").unwrap_err().code(), Some("PGRST200"));
        assert_eq!(parse("select=count()", false, "t", "s").unwrap_err().code(), Some("PGRST123"));
        assert_eq!(parse("select=id.sum()", false, "t", "s").unwrap_err().code(), Some("PGRST123"));
    }

    #[test]
    fn decodes_percent_and_plus() {
        assert_eq!(percent_decode("a%20b+c", true), "a b c");
        assert_eq!(percent_decode("100%", true), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
    }
}
