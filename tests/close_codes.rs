//! The close-code table is written once, in `turnstile::close`: this checks
//! that docs/protocol.md documents exactly it and that the JS SDK stops on
//! exactly the codes whose class is `stop` (and reconnects on the others).

use std::collections::BTreeSet;
use std::path::Path;

use turnstile::close::{CloseClass, CloseCode};
use turnstile::session::EndReason;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The table as it must appear in docs/protocol.md.
fn table_from_code() -> String {
    let mut out = String::from("| code | reason | class | when |\n|---|---|---|---|\n");
    for c in CloseCode::ALL {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            c.as_u16(),
            c.reason(),
            c.class().as_str(),
            c.meaning()
        ));
    }
    out
}

/// The markdown table under `### Close codes` in docs/protocol.md.
fn table_in_docs() -> String {
    let doc = read("docs/protocol.md");
    let start = doc
        .find("\n### Close codes\n")
        .expect("docs/protocol.md has a \"### Close codes\" section");
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_protocol_doc_lists_exactly_the_close_codes_the_broker_sends() {
    let expected = table_from_code();
    assert!(
        table_in_docs() == expected,
        "docs/protocol.md's close-code table differs from turnstile::close::CloseCode; \
         replace it with:\n\n{expected}"
    );
}

/// The numbers in `export const FINAL_CLOSE_CODES = Object.freeze([...])`.
fn sdk_final_codes(sdk: &str) -> BTreeSet<u16> {
    let line = sdk
        .lines()
        .find(|l| l.starts_with("export const FINAL_CLOSE_CODES"))
        .expect("turnstile.js exports FINAL_CLOSE_CODES");
    let list = line
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("FINAL_CLOSE_CODES is a [...] literal");
    list.split(',')
        .map(|n| n.trim().parse().expect("a close code number"))
        .collect()
}

#[test]
fn the_js_sdk_stops_on_exactly_the_stop_codes() {
    let sdk = read("clients/js/turnstile.js");
    let stop: BTreeSet<u16> = CloseCode::ALL
        .into_iter()
        .filter(|c| c.class() == CloseClass::Stop)
        .map(CloseCode::as_u16)
        .collect();
    // Every other code (reconnect_now, back_off) takes the SDK's reconnect
    // path: full-jitter backoff whose first delay, after a welcomed socket,
    // is below `initialDelayMs` — "now" for reconnect_now.
    assert_eq!(sdk_final_codes(&sdk), stop);
}

#[test]
fn the_js_sdk_explains_a_bare_close_as_the_broker_would() {
    // CLOSE_REASONS: `4001: ["superseded", "Another user ..."],` — used when
    // a close arrives without its forced_logout frame.
    let sdk = read("clients/js/turnstile.js");
    let start = sdk
        .find("const CLOSE_REASONS = {")
        .expect("turnstile.js has CLOSE_REASONS");
    let mut seen = 0;
    for line in sdk[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('}'))
    {
        let (number, rest) = line.trim().split_once(':').expect("`code: [...]`");
        let number: u16 = number.parse().expect("a close code number");
        let strings: Vec<&str> = rest.split('"').skip(1).step_by(2).collect();
        let [reason, message] = strings[..] else {
            panic!("expected [reason, message] in {line:?}");
        };
        let code: CloseCode = reason.parse().expect("a close reason the broker sends");
        assert_eq!(code.as_u16(), number, "{line}");
        let end: EndReason = reason.parse().expect("an end reason");
        assert_eq!(end.default_message(), message, "{line}");
        seen += 1;
    }
    assert!(seen > 0, "CLOSE_REASONS has entries");
}
