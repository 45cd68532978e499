//! Fuzzes the connect-token decoder.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use turnstile::auth::TokenKeys;

static KEYS: OnceLock<TokenKeys> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(turnstile::fuzzing::fuzz_keys);
    turnstile::fuzzing::check_connect_token(keys, data);
});
