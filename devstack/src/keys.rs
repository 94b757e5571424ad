//! The local stack's JWT keys and the one JWT implementation of devstack
//! (signing and verifying), as a current Supabase project has them:
//!
//! - an asymmetric **signing key** (ES256, P-256) that signs user access
//!   tokens, with a `kid`, its public half served as a JWKS at
//!   `/auth/v1/.well-known/jwks.json`. `cargo dev up` makes one the first
//!   time and keeps it in its data directory ([`SigningKey::load_or_create`],
//!   the file is a JSON array of private JWKs, the format of the Supabase
//!   CLI's `supabase gen signing-key`);
//! - the **legacy HS256 secret**, still verifying (and signing) the legacy
//!   anon and service-role keys, as `supabase start` does;
//! - the new **API keys** `sb_publishable_...` / `sb_secret_...` (the
//!   Supabase CLI's fixed local values), which are not JWTs.
//!
//! Verification ([`verify_signature`], [`verify`]) takes a [`KeySet`]: the
//! legacy secret and/or JWKs. It is used by the gateway (as PostgREST does
//! with a JWKS as `jwt-secret`) and by the front proxy's `verify_jwt`.
//!
//! The signatures themselves (HMAC-SHA256/384/512 and ECDSA P-256) are
//! `jsonwebtoken`'s ([`jsonwebtoken::crypto::sign`] and
//! [`jsonwebtoken::crypto::verify`]). What stays hand-written, and why:
//! - the compact form around them (header and payload in base64url): the
//!   well-known anon and service-role keys must stay byte-identical, and
//!   their header is `{"alg":"HS256","typ":"JWT"}` in that order, while
//!   `jsonwebtoken::encode` writes `{"typ":"JWT","alg":"HS256"}`;
//! - parsing a token and choosing its key: the gateway answers as PostgREST
//!   (jose) does, with jose's error for each case (wrong number of parts,
//!   `alg: none`, no usable key, bad signature, claims not an object) and
//!   its time checks with a clock skew, which `jsonwebtoken::decode`'s
//!   errors and `Validation` do not tell apart or express;
//! - P-256 key generation and JWK export (p256): jsonwebtoken makes no keys.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Supabase's local JWT secret (the legacy HS256 secret).
pub const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The Supabase CLI's local publishable key (stands for the anon role).
pub const PUBLISHABLE_KEY: &str = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH";
/// The Supabase CLI's local secret key (stands for the service role).
pub const SECRET_KEY: &str = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
/// The expiry of the well-known local keys (2032-11-11).
const LOCAL_KEY_EXP: i64 = 1_983_812_996;
/// The file, in a stack's data directory, holding its signing key.
pub const SIGNING_KEY_FILE: &str = "signing_keys.json";

// -----------------------------------------------------------------------------
// Legacy HS256 keys
// -----------------------------------------------------------------------------

/// Signs `claims` with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    sign_hs256(secret.as_bytes(), claims)
}

/// Signs `claims` with HS256 and a secret given as bytes.
pub fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    compact(br#"{"alg":"HS256","typ":"JWT"}"#, claims, &EncodingKey::from_secret(secret), Algorithm::HS256)
}

/// `header.payload.signature`, with the header exactly as given (see the
/// module's notes on why not `jsonwebtoken::encode`).
fn compact(header: &[u8], claims: &Value, key: &EncodingKey, algorithm: Algorithm) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims.to_string()));
    // HMAC takes any key, and an ES256 key is checked when it is made.
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, algorithm).expect("a key that signs");
    format!("{input}.{signature}")
}

/// The anon key `supabase start` prints.
pub fn anon_key() -> String {
    sign(&json!({"iss": "supabase-demo", "role": "anon", "exp": LOCAL_KEY_EXP}), JWT_SECRET)
}

/// The service-role key `supabase start` prints.
pub fn service_role_key() -> String {
    sign(&json!({"iss": "supabase-demo", "role": "service_role", "exp": LOCAL_KEY_EXP}), JWT_SECRET)
}

// -----------------------------------------------------------------------------
// The asymmetric signing key (ES256)
// -----------------------------------------------------------------------------

/// An ES256 (P-256) signing key with its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: p256::ecdsa::SigningKey,
    /// The same key for jsonwebtoken (PKCS#8 DER).
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key with a random (UUID) `kid`, as Supabase's are.
    pub fn generate() -> SigningKey {
        SigningKey::new(uuid::Uuid::new_v4().to_string(), p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    fn new(kid: String, key: p256::ecdsa::SigningKey) -> SigningKey {
        let der = key.to_pkcs8_der().expect("a P-256 key encodes as PKCS#8");
        SigningKey { kid, encoding: EncodingKey::from_ec_der(der.as_bytes()), key }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key in `dir`'s [`SIGNING_KEY_FILE`]; a new one (written there)
    /// when the file is missing or `fresh` is set.
    pub fn load_or_create(dir: &Path, fresh: bool) -> Result<SigningKey> {
        let path = Self::path_in(dir);
        if !fresh {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
                    let jwk = match &value {
                        Value::Array(keys) => keys.first().context("no key in the file")?,
                        other => other,
                    };
                    return SigningKey::from_private_jwk(jwk).with_context(|| format!("{}", path.display()));
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
            }
        }
        let key = SigningKey::generate();
        key.write(&path)?;
        Ok(key)
    }

    /// Where [`SigningKey::load_or_create`] keeps the key for data directory `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(SIGNING_KEY_FILE)
    }

    /// Writes the key as the CLI's signing-keys file (a JSON array of
    /// private JWKs), readable by its owner only.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&json!([self.private_jwk()]))?;
        let temporary = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("write {}", temporary.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Reads a private EC P-256 JWK (`kty`, `crv`, `x`, `y`, `d`, `kid`).
    pub fn from_private_jwk(jwk: &Value) -> Result<SigningKey> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str).with_context(|| format!("the JWK has no {name}"));
        if field("kty")? != "EC" || field("crv")? != "P-256" {
            bail!("not an EC P-256 JWK");
        }
        let d = URL_SAFE_NO_PAD.decode(field("d")?).context("d is not base64url")?;
        let key = p256::ecdsa::SigningKey::from_slice(&d).context("d is not a P-256 private key")?;
        let signing = SigningKey::new(field("kid")?.to_string(), key);
        let public = signing.public_jwk();
        if public["x"] != jwk["x"] || public["y"] != jwk["y"] {
            bail!("x and y are not the public half of d");
        }
        Ok(signing)
    }

    /// The public JWK, as Supabase's JWKS endpoint serves it.
    pub fn public_jwk(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| URL_SAFE_NO_PAD.encode(c.expect("an uncompressed point"));
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": coordinate(point.x()),
            "y": coordinate(point.y()),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
            "key_ops": ["verify"],
        })
    }

    /// The private JWK (the CLI's `supabase gen signing-key` format).
    pub fn private_jwk(&self) -> Value {
        let mut jwk = self.public_jwk();
        jwk["d"] = Value::String(URL_SAFE_NO_PAD.encode(self.key.to_bytes()));
        jwk["key_ops"] = json!(["sign", "verify"]);
        jwk["ext"] = Value::Bool(true);
        jwk
    }

    /// `{"keys": [public JWK]}`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.public_jwk()]})
    }

    /// `claims` as an ES256 JWT with header `{alg, typ, kid}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        compact(header.to_string().as_bytes(), claims, &self.encoding, Algorithm::ES256)
    }
}

/// A user's access token claims, as GoTrue issues them.
pub fn user_claims(issuer: &str, user_id: &str, email: &str, lifetime_seconds: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": issuer,
        "sub": user_id,
        "aud": "authenticated",
        "exp": now + lifetime_seconds,
        "iat": now,
        "email": email,
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": uuid::Uuid::new_v4().to_string(),
        "is_anonymous": false
    })
}

/// The signing key and issuer of the stack this process started last (the
/// one its user tokens are for).
struct Current {
    key: Arc<SigningKey>,
    issuer: String,
}

static CURRENT: RwLock<Option<Current>> = RwLock::new(None);

/// Makes `key` the one [`user_token`] signs with, for the stack at `api_url`.
pub fn install(key: Arc<SigningKey>, api_url: &str) {
    let issuer = format!("{api_url}/auth/v1");
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(Current { key, issuer });
}

/// The key [`install`]ed last; a new one (installed for the default local
/// URL) if none was.
pub fn current_key() -> Arc<SigningKey> {
    if let Some(current) = CURRENT.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return current.key.clone();
    }
    let mut slot = CURRENT.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| Current {
        key: Arc::new(SigningKey::generate()),
        issuer: "http://127.0.0.1:54321/auth/v1".to_string(),
    })
    .key
    .clone()
}

/// A signed-in user's access token, as GoTrue issues it: ES256 with the
/// current stack's signing key ([`install`]).
pub fn user_token(user_id: &str, email: &str, lifetime_seconds: i64) -> String {
    let key = current_key();
    let issuer = CURRENT
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|current| current.issuer.clone())
        .unwrap_or_default();
    key.sign(&user_claims(&issuer, user_id, email, lifetime_seconds))
}

// -----------------------------------------------------------------------------
// Verification
// -----------------------------------------------------------------------------

/// One verification key.
#[derive(Clone, Debug)]
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    pub alg: Option<String>,
    pub material: Material,
}

#[derive(Clone)]
pub enum Material {
    /// An HMAC secret (`kty: oct`, or a plain secret).
    Oct(Vec<u8>),
    /// A P-256 public key (`kty: EC`, `crv: P-256`).
    P256(EcPublicKey),
}

/// A P-256 public key: its JWK coordinates (base64url) and jsonwebtoken's
/// key for them.
#[derive(Clone)]
pub struct EcPublicKey {
    pub x: String,
    pub y: String,
    decoding: DecodingKey,
}

impl EcPublicKey {
    /// The key at (`x`, `y`), both base64url; an error unless it is a point
    /// of P-256 (jsonwebtoken would only find out when verifying).
    pub fn from_coordinates(x: &str, y: &str) -> Result<EcPublicKey> {
        let mut point = vec![4u8];
        for (name, coordinate) in [("x", x), ("y", y)] {
            point.extend(
                URL_SAFE_NO_PAD
                    .decode(coordinate.trim_end_matches('='))
                    .with_context(|| format!("the JWK's {name} is not base64url"))?,
            );
        }
        let public = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).context("not a P-256 point")?;
        Ok(EcPublicKey::from_verifying_key(&public))
    }

    fn from_verifying_key(public: &p256::ecdsa::VerifyingKey) -> EcPublicKey {
        let point = public.to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x().expect("an uncompressed point"));
        let y = URL_SAFE_NO_PAD.encode(point.y().expect("an uncompressed point"));
        // A normalised JWK for jsonwebtoken: the KeySet reads the configured
        // JWK itself, to keep PostgREST's leniency (extra members, `=`
        // padding) and to refuse a point off the curve when it is read.
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})).expect("an EC JWK");
        let decoding = DecodingKey::from_jwk(&jwk).expect("coordinates just encoded");
        EcPublicKey { x, y, decoding }
    }
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Material::Oct(_) => f.write_str("Oct(..)"),
            Material::P256(key) => f.debug_struct("P256").field("x", &key.x).field("y", &key.y).finish(),
        }
    }
}

/// The keys a verifier accepts.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Only an HMAC secret (PostgREST's plain `jwt-secret`).
    pub fn secret(secret: &[u8]) -> KeySet {
        KeySet { keys: vec![Key { kid: None, alg: None, material: Material::Oct(secret.to_vec()) }] }
    }

    /// The local stack's: the legacy secret and `signing`'s public key.
    pub fn local(signing: &SigningKey) -> KeySet {
        let mut set = KeySet::secret(JWT_SECRET.as_bytes());
        set.keys.push(Key {
            kid: Some(signing.kid.clone()),
            alg: Some("ES256".into()),
            material: Material::P256(EcPublicKey::from_verifying_key(signing.key.verifying_key())),
        });
        set
    }

    /// A JWKS (`{"keys": [...]}`) or a single JWK. Keys of other types
    /// (RSA, other curves) are skipped, as unusable here.
    pub fn from_jwks(value: &Value) -> Result<KeySet> {
        let jwks: Vec<&Value> = match value.get("keys") {
            Some(Value::Array(keys)) => keys.iter().collect(),
            Some(_) => bail!("keys is not an array"),
            None if value.get("kty").is_some() => vec![value],
            None => bail!("neither a JWK nor a JWK set"),
        };
        let mut keys = Vec::new();
        for jwk in jwks {
            let text = |name: &str| jwk.get(name).and_then(Value::as_str);
            let decode = |name: &str| -> Result<Vec<u8>> {
                URL_SAFE_NO_PAD
                    .decode(text(name).with_context(|| format!("a JWK without {name}"))?.trim_end_matches('='))
                    .with_context(|| format!("the JWK's {name} is not base64url"))
            };
            let material = match (text("kty"), text("crv")) {
                (Some("oct"), _) => Material::Oct(decode("k")?),
                (Some("EC"), Some("P-256")) => {
                    let coordinate = |name: &str| text(name).with_context(|| format!("a JWK without {name}"));
                    Material::P256(EcPublicKey::from_coordinates(coordinate("x")?, coordinate("y")?)?)
                }
                _ => continue,
            };
            keys.push(Key { kid: text("kid").map(str::to_string), alg: text("alg").map(str::to_string), material });
        }
        Ok(KeySet { keys })
    }

    /// PostgREST's `jwt-secret`: a JWKS or a JWK (JSON), else the bytes
    /// are an HMAC secret.
    pub fn from_postgrest_secret(secret: &[u8]) -> KeySet {
        serde_json::from_slice::<Value>(secret)
            .ok()
            .filter(Value::is_object)
            .and_then(|value| KeySet::from_jwks(&value).ok())
            .unwrap_or_else(|| KeySet::secret(secret))
    }

    /// The set as a JWKS, secrets included (for PostgREST's `jwt-secret`,
    /// as Supabase configures it: never publish this).
    pub fn to_private_jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|key| {
                let mut jwk = match &key.material {
                    Material::Oct(secret) => json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}),
                    Material::P256(public) => json!({"kty": "EC", "crv": "P-256", "x": public.x, "y": public.y}),
                };
                if let Some(kid) = &key.kid {
                    jwk["kid"] = Value::String(kid.clone());
                }
                if let Some(alg) = &key.alg {
                    jwk["alg"] = Value::String(alg.clone());
                }
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// Why a token was refused; `Display` gives PostgREST's (jose's) wording.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtError {
    /// Not three dot-separated parts.
    Parts(usize),
    /// The header is not base64url JSON.
    Header,
    /// The payload is not base64url.
    Payload,
    /// `alg: none` (or no signature to check).
    NoSignatures,
    /// No key of the set fits the token's `alg` and `kid`.
    NoUsableKeys,
    /// A key fits, but no fitting key's signature matches.
    InvalidSignature,
    ClaimsNotObject,
    NotNumericDate(String),
    Expired,
    NotYetValid,
    IssuedInFuture,
    NotInAudience,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Parts(n) => {
                write!(f, "JWSError (CompactDecodeError Invalid number of parts: Expected 3 parts; got {n})")
            }
            JwtError::Header => write!(f, "JWSError (CompactDecodeError Invalid JSON in the protected header)"),
            JwtError::Payload => write!(f, "JWSError (CompactDecodeError Invalid base64url payload)"),
            JwtError::NoSignatures => write!(f, "JWSError JWSNoSignatures"),
            JwtError::NoUsableKeys => write!(f, "No suitable key or wrong key type"),
            JwtError::InvalidSignature => write!(f, "JWSError JWSInvalidSignature"),
            JwtError::ClaimsNotObject => write!(f, "JWTClaimsSetDecodeError \"the claims set is not a JSON object\""),
            JwtError::NotNumericDate(name) => write!(f, "JWTClaimsSetDecodeError \"{name} is not a NumericDate\""),
            JwtError::Expired => write!(f, "JWT expired"),
            JwtError::NotYetValid => write!(f, "JWTNotYetValid"),
            JwtError::IssuedInFuture => write!(f, "JWTIssuedAtFuture"),
            JwtError::NotInAudience => write!(f, "JWTNotInAudience"),
        }
    }
}

fn b64(part: &[u8]) -> Option<Vec<u8>> {
    let mut end = part.len();
    while end > 0 && part[end - 1] == b'=' {
        end -= 1;
    }
    URL_SAFE_NO_PAD.decode(&part[..end]).ok()
}

/// jsonwebtoken's check of `signature` (base64url) over `input`; HMACs
/// are compared in constant time.
fn signature_ok(key: &DecodingKey, algorithm: Algorithm, input: &[u8], signature: &str) -> bool {
    jsonwebtoken::crypto::verify(signature, input, key, algorithm).unwrap_or(false)
}

/// Checks `token`'s signature against `keys` and returns its claims (no
/// time checks: see [`check_claims`]). Keys are chosen as jose does: those
/// with the token's `kid` (or none), of a type that fits its `alg`; an HMAC
/// `alg` never uses a public key as its secret, `none` is never accepted.
pub fn verify_signature(keys: &KeySet, token: &[u8]) -> Result<Map<String, Value>, JwtError> {
    let parts: Vec<&[u8]> = token.split(|b| *b == b'.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Parts(parts.len()));
    }
    let header: Value = b64(parts[0]).and_then(|h| serde_json::from_slice(&h).ok()).ok_or(JwtError::Header)?;
    if !header.is_object() {
        return Err(JwtError::Header);
    }
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::NoSignatures);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    // Checked here (padding allowed, as jose does) so that a malformed
    // signature is refused before any key is tried.
    b64(parts[2]).ok_or(JwtError::InvalidSignature)?;
    let signature = std::str::from_utf8(parts[2]).map_err(|_| JwtError::InvalidSignature)?.trim_end_matches('=');
    let mut usable = 0;
    let mut valid = false;
    for key in &keys.keys {
        if kid.is_some() && key.kid.is_some() && key.kid.as_deref() != kid {
            continue;
        }
        if key.alg.as_deref().is_some_and(|key_alg| key_alg != alg) {
            continue;
        }
        let verdict = match (&key.material, alg) {
            (Material::Oct(secret), "HS256" | "HS384" | "HS512") => {
                let algorithm = alg.parse().expect("an HMAC algorithm's name");
                Some(signature_ok(&DecodingKey::from_secret(secret), algorithm, signing_input, signature))
            }
            (Material::P256(public), "ES256") => {
                Some(signature_ok(&public.decoding, Algorithm::ES256, signing_input, signature))
            }
            _ => None,
        };
        if let Some(ok) = verdict {
            usable += 1;
            if ok {
                valid = true;
                break;
            }
        }
    }
    if !valid {
        // With only an HMAC secret configured, PostgREST reports any
        // mismatch (an RS256 token too) as an invalid signature.
        let only_secrets = keys.keys.iter().all(|key| matches!(key.material, Material::Oct(_)));
        return Err(if usable == 0 && !only_secrets { JwtError::NoUsableKeys } else { JwtError::InvalidSignature });
    }
    let payload = b64(parts[1]).ok_or(JwtError::Payload)?;
    match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::ClaimsNotObject),
    }
}

/// Checks `exp`, `nbf` and `iat` at `now` with `skew` seconds either way,
/// and, with `audience`, that `aud` (when present) contains it.
pub fn check_claims(claims: &Map<String, Value>, now: i64, skew: i64, audience: Option<&str>) -> Result<(), JwtError> {
    let numeric = |name: &str| -> Result<Option<i64>, JwtError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f.floor() as i64)),
            Some(_) => Err(JwtError::NotNumericDate(name.to_string())),
        }
    };
    if let Some(exp) = numeric("exp")? {
        if now > exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = numeric("nbf")? {
        if now.saturating_add(skew) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = numeric("iat")? {
        if iat > now.saturating_add(skew) {
            return Err(JwtError::IssuedInFuture);
        }
    }
    if let Some(expected) = audience {
        let ok = match claims.get("aud") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s == expected,
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(expected)),
            Some(_) => false,
        };
        if !ok {
            return Err(JwtError::NotInAudience);
        }
    }
    Ok(())
}

/// The claims of `token` if its signature checks against `keys` and it has
/// not expired at `now` (no clock skew: the edge runtime's check).
pub fn verify(token: &str, keys: &KeySet, now: i64) -> Result<Map<String, Value>, JwtError> {
    let claims = verify_signature(keys, token.as_bytes())?;
    check_claims(&claims, now, 0, None)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn the_local_keys_are_supabases_well_known_ones() {
        assert_eq!(
            anon_key(),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
        );
        assert_eq!(
            service_role_key(),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
        );
    }

    #[test]
    fn user_tokens_are_es256_with_the_kid_and_gotrues_claims() {
        let key = SigningKey::generate();
        let token = key.sign(&user_claims("http://x/auth/v1", "u1", "a@b.c", 60));
        let header: Value = serde_json::from_slice(&b64(token.split('.').next().unwrap().as_bytes()).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()}));
        let claims = verify(&token, &KeySet::local(&key), now()).unwrap();
        assert_eq!(claims["role"], "authenticated");
        assert_eq!(claims["aud"], "authenticated");
        assert_eq!(claims["iss"], "http://x/auth/v1");
        assert_eq!(claims["sub"], "u1");
        assert_eq!(claims["is_anonymous"], false);
        assert!(claims["session_id"].is_string());
    }

    #[test]
    fn es256_refuses_another_key_an_unknown_kid_tampering_and_expiry() {
        let key = SigningKey::generate();
        let keys = KeySet::local(&key);
        let token = key.sign(&user_claims("i", "u", "e", 60));
        // Another key under the same kid: a bad signature.
        let impostor = SigningKey::new(key.kid().to_string(), SigningKey::generate().key);
        assert_eq!(verify(&impostor.sign(&user_claims("i", "u", "e", 60)), &keys, now()), Err(JwtError::InvalidSignature));
        // Another kid: no key to check it with.
        assert_eq!(verify(&SigningKey::generate().sign(&user_claims("i", "u", "e", 60)), &keys, now()), Err(JwtError::NoUsableKeys));
        let parts: Vec<&str> = token.split('.').collect();
        let edited = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(r#"{"role":"service_role","exp":9999999999}"#), parts[2]);
        assert_eq!(verify(&edited, &keys, now()), Err(JwtError::InvalidSignature));
        assert_eq!(verify(&token, &keys, now() + 3600), Err(JwtError::Expired));
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(verify(&none, &keys, now()), Err(JwtError::NoSignatures));
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let key = SigningKey::generate();
        let keys = KeySet::local(&key);
        let claims = json!({"role": "service_role", "exp": now() + 60});
        let public_jwk = key.public_jwk().to_string();
        let point = key.key.verifying_key().to_encoded_point(false);
        for secret in [public_jwk.as_bytes(), point.as_bytes()] {
            assert_eq!(verify(&sign_hs256(secret, &claims), &keys, now()), Err(JwtError::InvalidSignature));
            // With a kid naming the EC key, HS256 has no usable key at all.
            let header = json!({"alg": "HS256", "kid": key.kid()}).to_string();
            let forged = compact(header.as_bytes(), &claims, &EncodingKey::from_secret(secret), Algorithm::HS256);
            assert!(verify(&forged, &keys, now()).is_err());
        }
    }

    #[test]
    fn hs256_legacy_keys_still_verify_and_other_secrets_do_not() {
        let keys = KeySet::local(&SigningKey::generate());
        assert_eq!(verify(&service_role_key(), &keys, now()).unwrap()["role"], "service_role");
        let other = sign(&json!({"role": "anon", "exp": now() + 60}), "another-secret-another-secret-another");
        assert_eq!(verify(&other, &keys, now()), Err(JwtError::InvalidSignature));
    }

    #[test]
    fn the_key_file_round_trips_and_fresh_replaces_it() {
        let dir = std::env::temp_dir().join(format!("devstack-keys-{}", uuid::Uuid::new_v4()));
        let first = SigningKey::load_or_create(&dir, false).unwrap();
        let again = SigningKey::load_or_create(&dir, false).unwrap();
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.public_jwk(), again.public_jwk());
        let fresh = SigningKey::load_or_create(&dir, true).unwrap();
        assert_ne!(fresh.kid(), first.kid());
        let file: Value = serde_json::from_str(&std::fs::read_to_string(SigningKey::path_in(&dir)).unwrap()).unwrap();
        assert_eq!(file[0]["kid"], fresh.kid());
        assert!(file[0]["d"].is_string());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_jwks_round_trips_through_postgrests_secret() {
        let key = SigningKey::generate();
        let local = KeySet::local(&key);
        let text = local.to_private_jwks().to_string();
        let parsed = KeySet::from_postgrest_secret(text.as_bytes());
        assert_eq!(parsed.keys.len(), 2);
        let token = key.sign(&user_claims("i", "u", "e", 60));
        assert!(verify(&token, &parsed, now()).is_ok());
        assert!(verify(&service_role_key(), &parsed, now()).is_ok());
        // The public JWKS verifies user tokens but not the legacy keys.
        let public = KeySet::from_jwks(&key.jwks()).unwrap();
        assert!(verify(&token, &public, now()).is_ok());
        assert_eq!(verify(&service_role_key(), &public, now()), Err(JwtError::NoUsableKeys));
        // A plain secret stays a secret.
        assert_eq!(KeySet::from_postgrest_secret(b"plain").keys.len(), 1);
    }
}
