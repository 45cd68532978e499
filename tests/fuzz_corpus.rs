//! Replays the fuzz corpora (`fuzz/corpus/*`) through the same property
//! checks the fuzz targets run, on the stable toolchain: every input the
//! fuzzer ever kept (and every crash it found, once fixed) stays covered.

use std::path::Path;

use turnstile::fuzzing;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("corpus file"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "the {target} corpus is not empty");
    out
}

#[test]
fn client_message_corpus_holds_its_properties() {
    for (name, data) in inputs("client_message") {
        let r = std::panic::catch_unwind(|| fuzzing::check_client_message(&data));
        assert!(
            r.is_ok(),
            "client_message corpus input {name} broke a property"
        );
    }
}

#[test]
fn connect_token_corpus_holds_its_properties() {
    let keys = fuzzing::fuzz_keys();
    let mut accepted = 0;
    for (name, data) in inputs("connect_token") {
        let r = std::panic::catch_unwind(|| fuzzing::check_connect_token(&keys, &data));
        assert!(
            r.is_ok(),
            "connect_token corpus input {name} broke a property"
        );
        if keys
            .verify(std::str::from_utf8(&data).unwrap_or(""))
            .is_ok()
        {
            accepted += 1;
        }
    }
    // The seeds include valid tokens, so the accept path is exercised too.
    assert!(accepted >= 1, "at least one seed token verifies");
}
