//! Who may do what: verifying and minting the JWTs viewers, publishers and operators present.
//!
//! Owns keys (an HS256 secret, or RS256/ES256/EdDSA public keys from a PEM or a JWKS file), the
//! claims of DESIGN.md "Auth" (`exp` required, `nbf`, `iss`/`aud` when configured, `sub`,
//! `sessions`, `scope`), and the answer to "may this token do X on session S". It does not read
//! HTTP headers or choose status codes; `AuthError` says whose fault a refusal is and the HTTP
//! layer maps it.
//!
//! Each key is pinned to one algorithm, and a token is only checked against keys of the
//! algorithm its header names: `alg: none` and algorithm confusion (an HS256 token "signed" with
//! an RSA public key as its secret) are refused by construction.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Shortest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// A permission a token can carry (its `scope` claim, space-separated, as in OAuth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// WHEP playback of the listed sessions.
    View,
    /// WHIP ingest into the listed sessions.
    Publish,
    /// Data channel: play, pause, seek, step.
    Playback,
    /// Data channel: select audio input and channels.
    Audio,
    /// Data channel: send chat messages.
    Chat,
    /// The session API.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::View,
        Scope::Publish,
        Scope::Playback,
        Scope::Audio,
        Scope::Chat,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::View => "view",
            Scope::Publish => "publish",
            Scope::Playback => "playback",
            Scope::Audio => "audio",
            Scope::Chat => "chat",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|x| x.as_str()).collect();
                format!("unknown scope '{s}' (known: {})", known.join(", "))
            })
    }
}

/// The claims Wisp reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Session names this token is for; `["*"]` means every session.
    #[serde(default)]
    pub sessions: Vec<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    /// Claims for `sessions` and `scope` (space-separated) until `exp`, issued now; no
    /// `sub`, `nbf`, `iss` or `aud` (set them with struct update syntax).
    pub fn new(sessions: Vec<String>, scope: impl Into<String>, exp: u64) -> Self {
        Self {
            exp,
            nbf: None,
            iat: Some(now_secs()),
            iss: None,
            aud: None,
            sub: None,
            sessions,
            scope: scope.into(),
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub sub: Option<String>,
    pub sessions: Vec<String>,
    pub scopes: BTreeSet<Scope>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

impl Grant {
    /// Whether the token names `session` (or every session).
    pub fn covers(&self, session: &str) -> bool {
        self.sessions.iter().any(|s| s == "*" || s == session)
    }

    /// Allows `scope` on `session`, or says why not.
    pub fn check(&self, session: &str, scope: Scope) -> Result<(), AuthError> {
        if !self.covers(session) {
            return Err(AuthError::WrongSession {
                session: session.to_string(),
            });
        }
        if !self.scopes.contains(&scope) {
            return Err(AuthError::MissingScope { scope });
        }
        Ok(())
    }
}

/// Why a request's token was refused. All are the client's fault: `Missing` and `Invalid` are
/// 401 (RFC 6750 §3.1 `invalid_token` for the latter), the others 403 (`insufficient_scope`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send 'Authorization: Bearer <JWT>' (mint one with 'wisp token')")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token is not for session '{session}'")]
    WrongSession { session: String },
    #[error("the token lacks scope '{scope}'")]
    MissingScope { scope: Scope },
}

/// Why a key could not be loaded. The operator's fault, reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the HS256 secret is {0} bytes; use at least {MIN_SECRET_BYTES} random bytes \
         (e.g. `head -c 48 /dev/urandom | base64 > secret`)"
    )]
    SecretTooShort(usize),
    #[error("not an RSA, P-256 EC or Ed25519 key in PEM form: {0}")]
    BadPem(String),
    #[error("JWKS: {0}")]
    BadJwks(String),
}

/// Verifies tokens against configured keys.
pub struct Verifier {
    /// Each key with the one algorithm it verifies, and its `kid` if it has one.
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, alg, _)| (kid.clone(), *alg))
            .collect();
        f.debug_struct("Verifier")
            .field("keys", &algs)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Algorithm and key for a public key in PEM form, trying RSA, P-256 and Ed25519 in turn.
fn public_pem(pem: &[u8]) -> Result<(Algorithm, DecodingKey), KeyError> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((Algorithm::ES256, k));
    }
    DecodingKey::from_ed_pem(pem)
        .map(|k| (Algorithm::EdDSA, k))
        .map_err(|e| KeyError::BadPem(e.to_string()))
}

impl Verifier {
    /// HS256 with `secret` (at least [`MIN_SECRET_BYTES`]).
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::SecretTooShort(secret.len()));
        }
        Ok(Self::with_keys(vec![(
            None,
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
        )]))
    }

    /// One public key in PEM form: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (alg, key) = public_pem(pem)?;
        Ok(Self::with_keys(vec![(None, alg, key)]))
    }

    /// The keys of a JWKS document (RSA, EC P-256 and OKP Ed25519 keys; others are skipped).
    pub fn jwks(json: &str) -> Result<Self, KeyError> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(json).map_err(|e| KeyError::BadJwks(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            use jsonwebtoken::jwk::AlgorithmParameters as P;
            let alg = match &jwk.algorithm {
                P::RSA(_) => Algorithm::RS256,
                P::EllipticCurve(_) => Algorithm::ES256,
                P::OctetKeyPair(_) => Algorithm::EdDSA,
                // Shared secrets do not belong in a public key set; newer kinds are skipped.
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::BadJwks(e.to_string()))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            return Err(KeyError::BadJwks(
                "no RSA, EC or Ed25519 key in the set".into(),
            ));
        }
        Ok(Self::with_keys(keys))
    }

    fn with_keys(keys: Vec<(Option<String>, Algorithm, DecodingKey)>) -> Self {
        Self {
            keys,
            issuer: None,
            audience: None,
        }
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Requires `aud` to contain `audience`.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// Checks signature, algorithm and time claims, and returns what the token allows.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("unreadable token ({e})")))?;
        let candidates: Vec<_> = self
            .keys
            .iter()
            .filter(|(kid, alg, _)| {
                *alg == header.alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted here{}",
                header.alg,
                header
                    .kid
                    .as_ref()
                    .map_or(String::new(), |k| format!(" (kid '{k}')"))
            )));
        }
        let mut last = None;
        for (_, alg, key) in candidates {
            let mut validation = Validation::new(*alg);
            // Clock skew between an issuer and us is tolerated for a few seconds, not a minute.
            validation.leeway = 5;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp"]);
            match &self.audience {
                Some(aud) => {
                    validation.set_audience(&[aud]);
                    validation.required_spec_claims.insert("aud".into());
                }
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".into());
            }
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(grant(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        let e = last.expect("at least one candidate was tried");
        Err(AuthError::Invalid(match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired".into(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
            ErrorKind::InvalidSignature => "bad signature".into(),
            ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
            ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
            ErrorKind::MissingRequiredClaim(c) => format!("missing claim '{c}'"),
            _ => e.to_string(),
        }))
    }
}

fn grant(claims: Claims) -> Grant {
    // Unknown scope names are ignored: a newer issuer may know more than this gateway.
    let scopes = claims
        .scope
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    Grant {
        sub: claims.sub,
        sessions: claims.sessions,
        scopes,
        exp: claims.exp,
    }
}

/// Signs tokens (for `wisp token` and the demo URL).
pub struct Minter {
    alg: Algorithm,
    key: EncodingKey,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Minter({:?})", self.alg)
    }
}

impl Minter {
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::SecretTooShort(secret.len()));
        }
        Ok(Self {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// A private key in PEM form: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    pub fn private_key_pem(pem: &[u8]) -> Result<Self, KeyError> {
        if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                alg: Algorithm::RS256,
                key,
            });
        }
        if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            return Ok(Self {
                alg: Algorithm::ES256,
                key,
            });
        }
        EncodingKey::from_ed_pem(pem)
            .map(|key| Self {
                alg: Algorithm::EdDSA,
                key,
            })
            .map_err(|e| KeyError::BadPem(e.to_string()))
    }

    pub fn mint(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key)
            .expect("signing serializable claims with a loaded key does not fail")
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Checks a session name as tokens and URLs use it: 1–64 of `A-Z a-z 0-9 . _ -`, or `*`.
pub fn valid_session_name(name: &str) -> bool {
    name == "*"
        || (!name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn claims(sessions: &[&str], scope: &str, ttl: i64) -> Claims {
        Claims {
            sub: Some("alice".into()),
            ..Claims::new(
                sessions.iter().map(|s| s.to_string()).collect(),
                scope,
                (now_secs() as i64 + ttl) as u64,
            )
        }
    }

    fn hs() -> (Minter, Verifier) {
        (
            Minter::hs256(SECRET).expect("key"),
            Verifier::hs256(SECRET).expect("key"),
        )
    }

    #[test]
    fn a_minted_token_grants_its_sessions_and_scopes() {
        let (m, v) = hs();
        let g = v
            .verify(&m.mint(&claims(&["demo", "film"], "view playback", 60)))
            .expect("valid");
        assert_eq!(g.sub.as_deref(), Some("alice"));
        assert!(g.check("demo", Scope::View).is_ok());
        assert!(g.check("film", Scope::Playback).is_ok());
        assert_eq!(
            g.check("demo", Scope::Chat),
            Err(AuthError::MissingScope { scope: Scope::Chat })
        );
        assert_eq!(
            g.check("other", Scope::View),
            Err(AuthError::WrongSession {
                session: "other".into()
            })
        );
        let all = v
            .verify(&m.mint(&claims(&["*"], "view", 60)))
            .expect("valid");
        assert!(all.check("anything", Scope::View).is_ok());
    }

    #[test]
    fn expired_immature_and_foreign_tokens_are_invalid_with_a_reason() {
        let (m, v) = hs();
        let err = v
            .verify(&m.mint(&claims(&["demo"], "view", -60)))
            .expect_err("expired");
        assert_eq!(err, AuthError::Invalid("the token has expired".into()));
        let mut c = claims(&["demo"], "view", 600);
        c.nbf = Some(now_secs() + 300);
        assert!(matches!(v.verify(&m.mint(&c)), Err(AuthError::Invalid(r)) if r.contains("nbf")));
        let other = Minter::hs256(b"another secret of at least thirty-two bytes").expect("key");
        let err = v
            .verify(&other.mint(&claims(&["demo"], "view", 60)))
            .expect_err("foreign");
        assert_eq!(err, AuthError::Invalid("bad signature".into()));
        assert!(matches!(v.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify(""), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn alg_none_is_refused() {
        let (m, v) = hs();
        // A valid token's claims under a header saying "none", with no signature.
        let token = m.mint(&claims(&["*"], "admin view", 60));
        let payload = token.split('.').nth(1).expect("payload");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let (m, v) = hs();
        let v = v
            .with_issuer(Some("wisp-test".into()))
            .with_audience(Some("gw".into()));
        let mut c = claims(&["demo"], "view", 60);
        assert!(matches!(v.verify(&m.mint(&c)), Err(AuthError::Invalid(r)) if r.contains("iss")));
        c.iss = Some("wisp-test".into());
        c.aud = Some("elsewhere".into());
        assert!(matches!(v.verify(&m.mint(&c)), Err(AuthError::Invalid(r)) if r.contains("aud")));
        c.aud = Some("gw".into());
        assert!(v.verify(&m.mint(&c)).is_ok());
    }

    #[test]
    fn short_secrets_and_unknown_scopes_are_refused_up_front() {
        assert!(matches!(
            Verifier::hs256(b"short"),
            Err(KeyError::SecretTooShort(5))
        ));
        assert!(Minter::hs256(b"short").is_err());
        assert_eq!("view".parse::<Scope>(), Ok(Scope::View));
        assert!(
            "root"
                .parse::<Scope>()
                .expect_err("unknown")
                .contains("known: view")
        );
        assert!(valid_session_name("demo-1.take_2") && valid_session_name("*"));
        assert!(
            !valid_session_name("")
                && !valid_session_name("a/b")
                && !valid_session_name(&"x".repeat(65))
        );
    }
}
