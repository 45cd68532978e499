//! Connect tokens: the JWT a login service receives from `Claim` and hands to
//! the agent's client, which presents it when it opens its WebSocket.
//!
//! The algorithm is pinned (HS256 here); `exp`, `iss`, `aud` and `sub` are
//! required claims and `nbf` is checked. jsonwebtoken's defaults require only
//! `exp`, so every requirement is spelled out in [`TokenKeys::new`].

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::session::{now_ms, Generation, Login, Session, SessionId, Tenant};

/// The `iss` of every token this broker mints and accepts.
pub const ISSUER: &str = "turnstile";
/// The `aud` of connect tokens.
pub const AUDIENCE: &str = "turnstile-ws";

/// The claims inside a connect token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectClaims {
    pub iss: String,
    pub aud: String,
    /// The login.
    pub sub: String,
    /// The tenant.
    pub tid: String,
    /// The session id.
    pub sid: String,
    /// The session's generation (fencing token).
    pub gen: u64,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// A verified connect token: the session it opens.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectToken {
    pub tenant: Tenant,
    pub login: Login,
    pub session_id: SessionId,
    pub generation: Generation,
}

/// Why a token was refused. The message is safe to send to the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send `Authorization: Bearer <token>` or `?token=`")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token signature or algorithm is not accepted")]
    BadSignature,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token claim {0} is missing or wrong")]
    BadClaim(&'static str),
}

/// The signing key and the rules tokens are checked against.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("alg", &"HS256")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys from an HS256 secret; tokens live for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// A random 256-bit secret: for development only (tokens die with the process).
    pub fn generate(ttl: Duration) -> Self {
        let secret: [u8; 32] = rand::random();
        Self::new(&secret, ttl)
    }

    /// How long minted tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mints the connect token for a granted session.
    pub fn mint(&self, session: &Session) -> String {
        let now = now_ms() / 1000;
        let claims = ConnectClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: session.login.to_string(),
            tid: session.tenant.to_string(),
            sid: session.id.to_string(),
            gen: session.generation.0,
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs() as i64,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims with this key (tests use it to forge variants).
    pub fn sign(&self, claims: &ConnectClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    /// Verifies signature, algorithm, time and audience, then the claims' shapes.
    pub fn verify(&self, token: &str) -> Result<ConnectToken, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<ConnectClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
            ErrorKind::InvalidIssuer => TokenError::BadClaim("iss"),
            ErrorKind::InvalidAudience => TokenError::BadClaim("aud"),
            ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                "exp" => TokenError::BadClaim("exp"),
                "nbf" => TokenError::BadClaim("nbf"),
                "iss" => TokenError::BadClaim("iss"),
                "aud" => TokenError::BadClaim("aud"),
                _ => TokenError::BadClaim("sub"),
            },
            other => TokenError::Malformed(format!("{other:?}")),
        })?;
        let c = data.claims;
        Ok(ConnectToken {
            tenant: Tenant::parse(&c.tid).map_err(|_| TokenError::BadClaim("tid"))?,
            login: Login::parse(&c.sub).map_err(|_| TokenError::BadClaim("sub"))?,
            session_id: SessionId::parse(&c.sid).map_err(|_| TokenError::BadClaim("sid"))?,
            generation: Generation(c.gen),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{NodeId, SessionState};

    fn session() -> Session {
        Session {
            id: SessionId::random(),
            tenant: Tenant::parse("acme").unwrap(),
            login: Login::parse("ana").unwrap(),
            station: None,
            client: "web".into(),
            role: "agent".into(),
            generation: Generation(7),
            state: SessionState::Pending,
            created_at_ms: 0,
            last_seen_ms: 0,
            node: NodeId::parse("n1").unwrap(),
            attributes: Default::default(),
            status: String::new(),
        }
    }

    fn claims(keys: &TokenKeys) -> ConnectClaims {
        let t = keys.mint(&session());
        jsonwebtoken::dangerous::insecure_decode::<ConnectClaims>(&t)
            .unwrap()
            .claims
    }

    #[test]
    fn a_minted_token_verifies_to_its_session() {
        let keys = TokenKeys::generate(Duration::from_secs(60));
        let s = session();
        let got = keys.verify(&keys.mint(&s)).unwrap();
        assert_eq!(got.session_id, s.id);
        assert_eq!(got.generation, Generation(7));
        assert_eq!(got.tenant.as_str(), "acme");
    }

    #[test]
    fn forged_tokens_are_refused_with_the_reason() {
        let keys = TokenKeys::generate(Duration::from_secs(60));
        let other = TokenKeys::generate(Duration::from_secs(60));
        let s = session();
        assert_eq!(
            keys.verify(&other.mint(&s)),
            Err(TokenError::BadSignature),
            "wrong key"
        );
        let mut c = claims(&keys);
        c.exp = now_ms() / 1000 - 3600;
        assert_eq!(keys.verify(&keys.sign(&c)), Err(TokenError::Expired));
        let mut c = claims(&keys);
        c.nbf = now_ms() / 1000 + 3600;
        assert_eq!(keys.verify(&keys.sign(&c)), Err(TokenError::NotYetValid));
        let mut c = claims(&keys);
        c.aud = "someone-else".into();
        assert_eq!(
            keys.verify(&keys.sign(&c)),
            Err(TokenError::BadClaim("aud"))
        );
        let mut c = claims(&keys);
        c.iss = "evil".into();
        assert_eq!(
            keys.verify(&keys.sign(&c)),
            Err(TokenError::BadClaim("iss"))
        );
        // alg none: header {"alg":"none"}, no signature.
        let good = keys.mint(&s);
        let payload = good.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(keys.verify(&none).is_err(), "alg none must be refused");
        // Tampered claims with the original signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(&keys);
        c.tid = "other".into();
        let forged = keys.sign(&c);
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(keys.verify(&parts.join(".")), Err(TokenError::BadSignature));
        assert!(matches!(
            keys.verify("not-a-jwt"),
            Err(TokenError::Malformed(_))
        ));
    }
}
