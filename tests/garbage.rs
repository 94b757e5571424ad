//! No panic on any input: every parser and decoder of the public API gets
//! thousands of generated JSON values and bodies (valid requests with one
//! field replaced, random values, truncated and mutated text), and must
//! answer with a value or a typed error. In wasm a panic would kill the
//! module instance for every later request.
#![cfg(not(target_arch = "wasm32"))]

use creditgate::answers::{self, Answer};
use creditgate::{
    ChargeRequest, ChargeWithLimitRequest, CompleteRequest, CreditError, ErrorCode, GrantRequest,
    LimitRequest, Metadata, RateLimitResult, RefundRequest, RunOutput,
};
use serde_json::{json, Map, Value};

/// A small deterministic generator (xorshift64*): the same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const FIELDS: [&str; 26] = [
    "userId",
    "operation",
    "cost",
    "idempotencyKey",
    "metadata",
    "holdSeconds",
    "jobId",
    "resultUrl",
    "actualCost",
    "reason",
    "amount",
    "key",
    "limit",
    "windowSeconds",
    "weight",
    "limitKey",
    "success",
    "expiresAt",
    "category",
    "priority",
    "lotId",
    "plan",
    "period",
    "rolloverMax",
    "anchor",
    "after",
];

fn text(rng: &mut Rng) -> String {
    let pieces = [
        "",
        " ",
        "a",
        "é",
        "\u{0}",
        "\n",
        "\u{202e}",
        "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e",
        "{",
        "\"",
        "\\",
        "p_cost",
        "insufficient_credits",
        "🦀",
        "PT402",
    ];
    let mut out = String::new();
    for _ in 0..rng.below(6) {
        let piece: &&str = rng.pick(&pieces[..]);
        out.push_str(piece);
    }
    if rng.below(20) == 0 {
        out.push_str(&"x".repeat(rng.below(5000) as usize));
    }
    out
}

fn number(rng: &mut Rng) -> Value {
    let special = [
        json!(0),
        json!(-1),
        json!(1),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1.5),
        json!(-0.0),
        json!(1e300),
        json!(-1e300),
        json!(2147483648_i64),
        json!(1_000_000_000),
        json!(1_000_000_001),
        json!(86400),
        json!(86401),
        json!(9007199254740993_u64),
    ];
    if rng.below(2) == 0 {
        rng.pick(&special).clone()
    } else {
        json!(rng.next() as i64 >> rng.below(64))
    }
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 | 3 => number(rng),
        4 => Value::String(text(rng)),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(5) {
                let key = if rng.below(2) == 0 {
                    rng.pick(&FIELDS).to_string()
                } else {
                    text(rng)
                };
                map.insert(key, value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

fn valid_requests() -> Vec<Value> {
    let user = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    vec![
        json!({"userId": user, "operation": "image", "cost": 5, "idempotencyKey": "k", "metadata": {}, "holdSeconds": 60}),
        json!({"jobId": user, "resultUrl": "https://x", "actualCost": 1}),
        json!({"userId": user, "jobId": user, "reason": "r"}),
        json!({"userId": user, "amount": 5, "reason": "r", "idempotencyKey": "k"}),
        json!({"key": "k", "limit": 5, "windowSeconds": 60, "weight": 1}),
        json!({"userId": user, "operation": "image", "cost": 5, "limitKey": "k", "limit": 5, "windowSeconds": 60, "weight": 2}),
        json!({"success": true, "limit": 5, "remaining": 4, "reset": 9, "retryAfter": 0, "windowSeconds": 60}),
    ]
}

/// Every parser, on one value: each answers, and every error is typed.
fn parse_all(input: &Value) {
    fn check<T>(result: Result<T, CreditError>) {
        if let Err(error) = result {
            assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
            assert!(
                error.details().get("field").is_some_and(Value::is_string),
                "{error}"
            );
            assert!(!error.message().is_empty());
        }
    }
    check(ChargeRequest::from_json(input));
    check(CompleteRequest::from_json(input));
    check(RefundRequest::from_json(input));
    check(GrantRequest::from_json(input));
    check(LimitRequest::from_json(input));
    check(ChargeWithLimitRequest::from_json(input));
    check(RunOutput::from_json(input));
    check(creditgate::RevokeLotRequest::from_json(input));
    check(creditgate::EventsRequest::from_json(input));
    check(creditgate::PlanRequest::from_json(input));
    check(creditgate::SubscribeRequest::from_json(input));
    check(RateLimitResult::from_json(input));
    check(creditgate::user_id_from_json(input));
    check(Metadata::new(input.clone()));
    if let Ok(result) = RateLimitResult::from_json(input) {
        for policy in ["default", "", "naïve", "a\"b"] {
            let _ = creditgate::rate_limit_headers(&result, policy);
        }
    }
}

/// Every decoder, on one answer: each gives a result or a CreditError
/// whose status is one of the table's.
fn decode_all(status: u16, body: &str) {
    let answer = Answer::new(status, body);
    let limit = LimitRequest::from_json(&json!({"key": "k", "limit": 5, "windowSeconds": 60}))
        .expect("valid");
    let statuses = [400, 401, 402, 403, 404, 409, 422, 429, 502, 503];
    let check = |error: Option<CreditError>| {
        if let Some(error) = error {
            assert!(statuses.contains(&error.status()), "{error}");
        }
    };
    check(answers::charge(&answer).err());
    check(answers::complete(&answer).err());
    check(answers::balance("get_credit_balance", &answer).err());
    check(answers::balance_result("refund_credits", &answer).err());
    check(answers::limit(&limit, &answer).err());
    check(answers::charge_with_limit(&limit, &answer).err());
    check(answers::charge_with_limits(std::slice::from_ref(&limit), &answer).err());
    check(answers::rows::<creditgate::LedgerView>("credit_ledger", &answer).err());
    check(answers::rows::<creditgate::LotView>("get_credit_lots", &answer).err());
    check(answers::rows::<creditgate::EventView>("get_credit_events", &answer).err());
    check(answers::one_row::<creditgate::SubscriptionView>("subscribe_credit_plan", &answer).err());
    check(Some(CreditError::from_postgrest(status, body)));
}

#[test]
fn random_values_never_panic_any_parser() {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    for _ in 0..20_000 {
        parse_all(&value(&mut rng, 0));
    }
}

#[test]
fn valid_requests_with_one_field_replaced_never_panic() {
    let mut rng = Rng(0x0dd_ba11);
    let valid = valid_requests();
    for request in &valid {
        parse_all(request);
    }
    for _ in 0..20_000 {
        let mut request = rng.pick(&valid).clone();
        if let Value::Object(map) = &mut request {
            let field = rng.pick(&FIELDS).to_string();
            if rng.below(4) == 0 {
                map.remove(&field);
            } else {
                map.insert(field, value(&mut rng, 1));
            }
        }
        parse_all(&request);
    }
}

#[test]
fn random_answers_never_panic_any_decoder() {
    let mut rng = Rng(0xbad_5eed);
    let samples = [
        r#"[{"job_id":"9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e","new_balance":5,"replayed":false}]"#,
        r#"[{"allowed":false,"limit":5,"remaining":0,"reset_seconds":3,"retry_after_seconds":3,"job_id":null}]"#,
        r#"{"code":"PT402","message":"Insufficient","details":"{\"balance\":1}","hint":"insufficient_credits"}"#,
        r#"42"#,
    ];
    for _ in 0..20_000 {
        let status = *rng.pick(&[
            0u16, 200, 201, 204, 300, 400, 401, 402, 403, 404, 409, 422, 429, 500, 503, 999,
        ]);
        let body = match rng.below(3) {
            0 => value(&mut rng, 0).to_string(),
            1 => {
                // A real answer, cut short or with one byte changed.
                let sample = rng.pick(&samples).as_bytes().to_vec();
                let mut bytes = sample[..rng.below(sample.len() as u64 + 1) as usize].to_vec();
                if !bytes.is_empty() && rng.below(2) == 0 {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = rng.below(128) as u8;
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            _ => text(&mut rng),
        };
        decode_all(status, &body);
    }
}
