//! The signature code under jsonwebtoken: HS256 and EdDSA only.
//!
//! jsonwebtoken's own `rust_crypto` backend compiles every algorithm it
//! knows, `rsa` included, and `rsa` carries an advisory with no fixed release
//! (RUSTSEC-2023-0071, the Marvin timing attack). Turnstile signs with HS256
//! and EdDSA and nothing else, so it installs this provider instead: the same
//! RustCrypto crates (`hmac`, `sha2`, `ed25519-dalek`) that backend uses for
//! these two algorithms, and a refusal for every other one. Which algorithm a
//! token may use is still decided per key in [`crate::auth`]; this module
//! only computes and checks signatures.

use ed25519_dalek::pkcs8::DecodePrivateKey;
use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HS256 and EdDSA; no JWK support (turnstile loads keys from config files).
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes this provider jsonwebtoken's process-wide default. Call before the
/// first signature is made or checked; later calls do nothing. Every key
/// goes through [`crate::auth::TokenKeys`], which calls it when it loads keys.
pub(crate) fn install() {
    // Err only means a provider is installed already: ours, by an earlier
    // call (nothing else in the process installs one).
    let _ = PROVIDER.install_default();
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match alg {
        Algorithm::HS256 => {
            require_family(key.family(), AlgorithmFamily::Hmac)?;
            Ok(Box::new(Hs256(hmac_key(key.as_bytes())?)))
        }
        Algorithm::EdDSA => {
            require_family(key.family(), AlgorithmFamily::Ed)?;
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(key.as_bytes())
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaSigner(key)))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match alg {
        Algorithm::HS256 => {
            require_family(key.family(), AlgorithmFamily::Hmac)?;
            Ok(Box::new(Hs256(hmac_key(key.try_get_as_bytes()?)?)))
        }
        Algorithm::EdDSA => {
            require_family(key.family(), AlgorithmFamily::Ed)?;
            // The raw 32-byte public key, as `DecodingKey::from_ed_pem` stores it.
            let raw: &[u8; 32] = key
                .try_get_as_bytes()?
                .try_into()
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaVerifier(key)))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn require_family(got: AlgorithmFamily, want: AlgorithmFamily) -> Result<(), Error> {
    if got == want {
        Ok(())
    } else {
        Err(ErrorKind::InvalidKeyFormat.into())
    }
}

fn hmac_key(secret: &[u8]) -> Result<HmacSha256, Error> {
    HmacSha256::new_from_slice(secret).map_err(|_| ErrorKind::InvalidKeyFormat.into())
}

/// HS256 signs and verifies with the same keyed state.
struct Hs256(HmacSha256);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // Constant-time comparison.
        mac.verify_slice(sig).map_err(signature::Error::from_source)
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

struct EdDsaSigner(ed25519_dalek::SigningKey);

impl Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdDsaVerifier(ed25519_dalek::VerifyingKey);

impl Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let sig = ed25519_dalek::Signature::from_slice(sig)?;
        self.0.verify(msg, &sig)
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{decode, encode, Header, Validation};

    use super::*;

    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDhN0v0Df/eCxx0yWxzsI5TWdfka2XB6HKPSt2YGApPr
-----END PRIVATE KEY-----
";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAjqTq8M4rEgdwG3FWwyhmABhzlujICnm9M6Dut7jTXOA=
-----END PUBLIC KEY-----
";
    const SECRET: &[u8] = b"turnstile-test-secret";
    // Made with jsonwebtoken's rust_crypto backend before the switch, and
    // checked against Python's `hmac` and `cryptography` (OpenSSL).
    const HS256_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDAsInN1YiI6ImFuYSJ9.QID_axZEmME1ErCMHjrO-esuo1zAQkrIfeox9_FzAss";
    const EDDSA_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSJ9.eyJleHAiOjIwMDAwMDAwMDAsInN1YiI6ImFuYSJ9.awFLBHWPno2odTsEK8dUMNgzG1-PQZjG4m72ZSkviGkm91cvpLR87fxem4D2rb3d9gdjN4mxYpdOeZpa6OTYCg";

    fn claims() -> serde_json::Value {
        serde_json::json!({"sub": "ana", "exp": 2_000_000_000})
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_required_spec_claims(&["exp", "sub"]);
        v
    }

    #[test]
    fn signatures_match_the_previous_backend_byte_for_byte() {
        install();
        let hs = EncodingKey::from_secret(SECRET);
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        assert_eq!(
            encode(&Header::new(Algorithm::HS256), &claims(), &hs).unwrap(),
            HS256_TOKEN
        );
        assert_eq!(
            encode(&Header::new(Algorithm::EdDSA), &claims(), &ed).unwrap(),
            EDDSA_TOKEN
        );
        let hs = DecodingKey::from_secret(SECRET);
        let ed = DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).unwrap();
        decode::<serde_json::Value>(HS256_TOKEN, &hs, &validation(Algorithm::HS256)).unwrap();
        decode::<serde_json::Value>(EDDSA_TOKEN, &ed, &validation(Algorithm::EdDSA)).unwrap();
    }

    #[test]
    fn a_changed_signature_or_the_wrong_key_family_is_refused() {
        install();
        let hs = DecodingKey::from_secret(SECRET);
        let ed = DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).unwrap();
        let kind = |token: &str, key: &DecodingKey, alg| {
            decode::<serde_json::Value>(token, key, &validation(alg))
                .unwrap_err()
                .into_kind()
        };
        let flip = |token: &str| {
            let mut t = token.to_string();
            let last = if t.ends_with('A') { "B" } else { "A" };
            t.replace_range(t.len() - 1.., last);
            t
        };
        assert!(matches!(
            kind(&flip(HS256_TOKEN), &hs, Algorithm::HS256),
            ErrorKind::InvalidSignature
        ));
        assert!(matches!(
            kind(&flip(EDDSA_TOKEN), &ed, Algorithm::EdDSA),
            ErrorKind::InvalidSignature
        ));
        // An HS256 token checked with an EdDSA public key, and the reverse.
        assert!(matches!(
            kind(HS256_TOKEN, &ed, Algorithm::HS256),
            ErrorKind::InvalidKeyFormat
        ));
        assert!(matches!(
            kind(EDDSA_TOKEN, &hs, Algorithm::EdDSA),
            ErrorKind::InvalidKeyFormat
        ));
        // A public key of the wrong length is an error, not a panic.
        let short = DecodingKey::from_ed_der(&[7; 31]);
        assert!(matches!(
            kind(EDDSA_TOKEN, &short, Algorithm::EdDSA),
            ErrorKind::InvalidEddsaKey
        ));
    }

    #[test]
    fn no_other_algorithm_signs_or_verifies() {
        let secret = EncodingKey::from_secret(SECRET);
        let rsa_private = EncodingKey::from_rsa_der(&[0; 64]);
        let hs = DecodingKey::from_secret(SECRET);
        let rsa_public = DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]);
        for alg in [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            for key in [&secret, &rsa_private] {
                let e = new_signer(&alg, key).err().map(Error::into_kind);
                assert!(matches!(e, Some(ErrorKind::InvalidAlgorithm)), "{alg:?}");
            }
            for key in [&hs, &rsa_public] {
                let e = new_verifier(&alg, key).err().map(Error::into_kind);
                assert!(matches!(e, Some(ErrorKind::InvalidAlgorithm)), "{alg:?}");
            }
        }
    }
}
