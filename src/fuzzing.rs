//! Property checks shared by the fuzz targets (`fuzz/`) and the corpus
//! regression test (`tests/fuzz_corpus.rs`): the two parsers that read
//! untrusted bytes must never panic and must answer sensibly.
#![doc(hidden)]

use std::time::Duration;

use crate::auth::{TokenError, TokenKeys};
use crate::gateway::protocol::{self, ClientMessage, MAX_NOTICE_ID_LEN, MAX_STATUS_LEN};

/// The HS256 secret the token target verifies against (seed tokens in the
/// corpus are signed with it).
pub const FUZZ_SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123456789";

/// The keys of the token target.
pub fn fuzz_keys() -> TokenKeys {
    TokenKeys::new(FUZZ_SECRET, Duration::from_secs(3600))
}

const ERROR_CODES: &[&str] = &["malformed_json", "invalid_field", "unknown_type"];

/// The client-message parser: never panics; an accepted message respects
/// its limits and a refused one names a known code and says why.
pub fn check_client_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // the WebSocket layer refuses invalid UTF-8 text frames
    };
    match protocol::parse(text) {
        Ok(ClientMessage::Status { status }) => {
            assert!(!status.is_empty() && status.len() <= MAX_STATUS_LEN);
        }
        Ok(ClientMessage::Ack { notice_id }) => {
            assert!(!notice_id.is_empty() && notice_id.len() <= MAX_NOTICE_ID_LEN);
        }
        Ok(ClientMessage::Ping { id }) => {
            // The pong must be valid JSON and echo the id exactly: a client
            // matches pongs to pings by id (serde_json's `float_roundtrip`
            // keeps long decimals from drifting by one ULP).
            let pong = crate::frames::pong(&id);
            let v: serde_json::Value =
                serde_json::from_str(pong.as_str()).expect("pong is valid JSON");
            assert_eq!(v["type"], "pong");
            assert_eq!(v["id"], id, "the pong echoes the id the client sent");
        }
        Ok(ClientMessage::Logout | ClientMessage::WatchPresence) => {}
        Err(e) => {
            assert!(
                ERROR_CODES.contains(&e.code),
                "unknown error code {}",
                e.code
            );
            assert!(!e.message.is_empty());
            assert!(e.message.len() < 512, "error messages stay short");
        }
    }
}

/// The connect-token decoder: never panics; anything it accepts carries
/// an HS256 signature by the fuzz key over well-formed claims.
pub fn check_connect_token(keys: &TokenKeys, data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    match keys.verify(token) {
        Ok(t) => {
            let header =
                jsonwebtoken::decode_header(token).expect("an accepted token has a header");
            assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
            assert!(!t.tenant.as_str().is_empty() && !t.session_id.as_str().is_empty());
        }
        Err(TokenError::Missing) => panic!("verify never reports a missing token"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
