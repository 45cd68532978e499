//! Fuzzes the WebSocket client-message parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    turnstile::fuzzing::check_client_message(data);
});
