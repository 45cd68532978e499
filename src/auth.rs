//! Connect tokens: the JWT a login service receives from `Claim` and hands to
//! the agent's client, which presents it when it opens its WebSocket.
//!
//! The algorithm is pinned per key id (HS256 or EdDSA); `exp`, `nbf`, `iss`, `aud` and
//! `sub` are required claims. jsonwebtoken's defaults require only `exp`, so
//! every requirement is spelled out in [`TokenKeys::new`].
//!
//! Token times (`iat`, `nbf`, `exp`) are minted and checked on the registry
//! clock ([`Clock`]; in a cluster Redis's time), never on the host's wall
//! clock: a token is minted on one node and presented on another, and two
//! hosts' wall clocks are not to be compared. So jsonwebtoken's own
//! `exp`/`nbf` checks (which read the wall clock) are off and
//! [`TokenKeys::verify`] makes them, with [`LEEWAY_SECS`] of leeway.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::session::{Generation, Login, Session, SessionId, Tenant};

/// The `iss` of every token this broker mints and accepts.
pub const ISSUER: &str = "turnstile";
/// The `aud` of connect tokens.
pub const AUDIENCE: &str = "turnstile-ws";
/// How far (seconds) past `exp`, or before `nbf`, a token is still
/// accepted: the issuer's clock may be a little off the registry clock.
pub const LEEWAY_SECS: i64 = 5;

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
    #[error("token is signed with a key id this broker does not know (rotated out?)")]
    UnknownKey,
}

/// Key material of one signing key.
#[derive(Clone)]
pub enum KeyMaterial {
    /// A shared HS256 secret (every node signs and verifies with it).
    Hs256(Vec<u8>),
    /// An Ed25519 key pair in PEM. A node without the private part only
    /// verifies tokens of this key id.
    EdDsa {
        private_pem: Option<Vec<u8>>,
        public_pem: Vec<u8>,
    },
}

/// One key, named by the `kid` its tokens carry.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub material: KeyMaterial,
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {kid:?}: {problem}")]
    Bad { kid: String, problem: String },
    #[error("no signing key can sign: the first key needs a secret or a private key")]
    NoSigner,
}

#[derive(Clone)]
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
}

/// The signing keys and the rules tokens are checked against. The first
/// key signs; every key verifies the tokens carrying its `kid`, with its
/// own algorithm pinned — so a token cannot pick its algorithm (no
/// `alg: none`, no HS256 signed with an EdDSA public key). Times are read
/// from `clock`, the registry clock ([`with_clock`](Self::with_clock)).
#[derive(Clone)]
pub struct TokenKeys {
    keys: std::sync::Arc<Vec<Key>>,
    ttl: Duration,
    clock: Clock,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| (&k.kid, k.alg))
                    .collect::<Vec<_>>(),
            )
            .field("ttl", &self.ttl)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// The default key id of a single `signing_key`.
pub const DEFAULT_KID: &str = "default";

fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    // jsonwebtoken would judge these on the wall clock: `verify` judges
    // them on the registry clock. They stay required (above).
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation
}

impl TokenKeys {
    /// One HS256 secret (key id `default`); tokens live for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self::from_keys(
            vec![SigningKey {
                kid: DEFAULT_KID.into(),
                material: KeyMaterial::Hs256(secret.to_vec()),
            }],
            ttl,
        )
        .expect("an HS256 secret always makes a valid key")
    }

    /// Several keys for rotation: the first signs, all verify. Rotate by
    /// putting a new key first and keeping the old ones until `ttl` has
    /// passed, so nobody is logged out.
    pub fn from_keys(keys: Vec<SigningKey>, ttl: Duration) -> Result<Self, KeyError> {
        // Every signature is made and checked through keys loaded here.
        crate::jwt_crypto::install();
        let mut out = Vec::new();
        for k in keys {
            let bad = |problem: String| KeyError::Bad {
                kid: k.kid.clone(),
                problem,
            };
            let key = match &k.material {
                KeyMaterial::Hs256(secret) => Key {
                    kid: k.kid.clone(),
                    alg: Algorithm::HS256,
                    encoding: Some(EncodingKey::from_secret(secret)),
                    decoding: DecodingKey::from_secret(secret),
                    validation: validation(Algorithm::HS256),
                },
                KeyMaterial::EdDsa {
                    private_pem,
                    public_pem,
                } => Key {
                    kid: k.kid.clone(),
                    alg: Algorithm::EdDSA,
                    encoding: match private_pem {
                        Some(pem) => Some(
                            EncodingKey::from_ed_pem(pem)
                                .map_err(|e| bad(format!("private key: {e}")))?,
                        ),
                        None => None,
                    },
                    decoding: DecodingKey::from_ed_pem(public_pem)
                        .map_err(|e| bad(format!("public key: {e}")))?,
                    validation: validation(Algorithm::EdDSA),
                },
            };
            out.push(key);
        }
        if out.first().and_then(|k| k.encoding.as_ref()).is_none() {
            return Err(KeyError::NoSigner);
        }
        Ok(Self {
            keys: std::sync::Arc::new(out),
            ttl,
            clock: Clock::system(),
        })
    }

    /// Mints and checks token times on `clock`: the registry's
    /// ([`RegistryConfig::clock`](crate::registry::RegistryConfig)), so
    /// every node of a cluster agrees on them. Without it, keys use a
    /// [`Clock::system`] of their own.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
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
        let now = self.now_secs();
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
        let key = &self.keys[0];
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let encoding = key
            .encoding
            .as_ref()
            .expect("the first key signs (checked at load)");
        jsonwebtoken::encode(&header, claims, encoding)
            .expect("signing serialisable claims with a loaded key cannot fail")
    }

    /// Unix seconds on the registry clock.
    fn now_secs(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }

    /// Verifies signature, algorithm, time and audience, then the claims' shapes.
    pub fn verify(&self, token: &str) -> Result<ConnectToken, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        // Tokens without a kid predate rotation: they belong to the default key.
        let kid = header.kid.as_deref().unwrap_or(DEFAULT_KID);
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<ConnectClaims>(token, &key.decoding, &key.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
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
        let now = self.now_secs();
        if c.exp < now.saturating_sub(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if c.nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
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
            device: None,
        }
    }

    /// 2001-09-09: far from the wall clock, so a check that read it fails.
    const T0_MS: i64 = 1_000_000_000_000;

    /// Keys on a manual clock standing at `T0_MS`.
    fn keys_at_t0() -> (TokenKeys, Clock) {
        let clock = Clock::manual(T0_MS);
        let keys = TokenKeys::generate(Duration::from_secs(60)).with_clock(clock.clone());
        (keys, clock)
    }

    fn claims(keys: &TokenKeys) -> ConnectClaims {
        let t = keys.mint(&session());
        jsonwebtoken::dangerous::insecure_decode::<ConnectClaims>(&t)
            .unwrap()
            .claims
    }

    #[test]
    fn a_minted_token_verifies_to_its_session() {
        let (keys, _) = keys_at_t0();
        let s = session();
        let got = keys.verify(&keys.mint(&s)).unwrap();
        assert_eq!(got.session_id, s.id);
        assert_eq!(got.generation, Generation(7));
        assert_eq!(got.tenant.as_str(), "acme");
    }

    #[test]
    fn token_times_are_the_registry_clocks_with_5s_of_leeway() {
        let (keys, clock) = keys_at_t0();
        let c = claims(&keys);
        let t0 = T0_MS / 1000;
        assert_eq!(
            (c.iat, c.nbf, c.exp),
            (t0, t0, t0 + 60),
            "minted on the clock"
        );
        // Accepted though it is decades from this host's wall clock.
        assert!(keys.verify(&keys.mint(&session())).is_ok());
        // nbf up to 5 s ahead of the clock is accepted, 6 s is not.
        let mut c = claims(&keys);
        c.nbf = t0 + LEEWAY_SECS;
        assert!(keys.verify(&keys.sign(&c)).is_ok());
        c.nbf = t0 + LEEWAY_SECS + 1;
        assert_eq!(keys.verify(&keys.sign(&c)), Err(TokenError::NotYetValid));
        // exp up to 5 s behind the clock is accepted, 6 s is not.
        let fresh = keys.mint(&session());
        clock.advance(Duration::from_secs(60 + LEEWAY_SECS as u64));
        assert!(keys.verify(&fresh).is_ok(), "within the leeway");
        clock.advance(Duration::from_secs(1));
        assert_eq!(keys.verify(&fresh), Err(TokenError::Expired));
    }

    #[test]
    fn exp_and_nbf_stay_required() {
        const SECRET: &[u8] = b"a test secret of thirty-two bytes";
        let keys = TokenKeys::new(SECRET, Duration::from_secs(60)).with_clock(Clock::manual(T0_MS));
        let full = serde_json::to_value(claims(&keys)).unwrap();
        for claim in ["exp", "nbf"] {
            let mut c = full.clone();
            c.as_object_mut().unwrap().remove(claim);
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(DEFAULT_KID.into());
            let token =
                jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(SECRET)).unwrap();
            // The claims do not parse without it; the message names it.
            match keys.verify(&token) {
                Err(TokenError::Malformed(m)) => assert!(m.contains(claim), "{m}"),
                other => panic!("a token without {claim}: {other:?}"),
            }
        }
    }

    #[test]
    fn forged_tokens_are_refused_with_the_reason() {
        let (keys, clock) = keys_at_t0();
        let other = TokenKeys::generate(Duration::from_secs(60)).with_clock(clock.clone());
        let now = clock.now_ms() / 1000;
        let s = session();
        assert_eq!(
            keys.verify(&other.mint(&s)),
            Err(TokenError::BadSignature),
            "wrong key"
        );
        let mut c = claims(&keys);
        c.exp = now - 3600;
        assert_eq!(keys.verify(&keys.sign(&c)), Err(TokenError::Expired));
        let mut c = claims(&keys);
        c.nbf = now + 3600;
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
