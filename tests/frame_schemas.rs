//! The WebSocket frame schemas shipped with the SDK
//! (`clients/js/schema/frames.schema.json`) against the frames a real node
//! sends: one of every server frame kind is provoked over real sockets and
//! validated, and so are the examples in docs/protocol.md. The frames are
//! taken off the wire, not from the functions that build them, so the test
//! holds wherever those functions live.

mod support;

use std::collections::BTreeSet;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use support::*;
use turnstile::connectivity::{Cause, Connectivity};
use turnstile::pb;

const T: &str = "acme";
const SCHEMA: &str = include_str!("../clients/js/schema/frames.schema.json");
const PROTOCOL_MD: &str = include_str!("../docs/protocol.md");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("frames.schema.json is JSON")
}

/// A validator for `$defs/<which>` (`server_frame`, `client_frame` or one
/// frame): the whole schema with its root narrowed to that definition.
fn validator(which: &str) -> jsonschema::Validator {
    let mut s = schema();
    s["oneOf"] = json!([{ "$ref": format!("#/$defs/{which}") }]);
    jsonschema::draft202012::new(&s).expect("the schema compiles")
}

/// The frame `type`s one direction lists.
fn kinds(which: &str) -> BTreeSet<String> {
    schema()["$defs"][which]["oneOf"]
        .as_array()
        .expect("a oneOf list")
        .iter()
        .map(|r| {
            let r = r["$ref"].as_str().expect("a $ref");
            r.rsplit('/').next().expect("a name").to_string()
        })
        .collect()
}

/// Panics naming every way `frame` breaks the schema: the errors against
/// the definition of its own `type`, which say more than "none of oneOf".
fn assert_valid(v: &jsonschema::Validator, frame: &Value) {
    if v.is_valid(frame) {
        return;
    }
    let kind = frame["type"].as_str().unwrap_or("");
    let errors: Vec<String> = match schema()["$defs"].get(kind) {
        Some(_) => validator(kind)
            .iter_errors(frame)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect(),
        None => vec![format!("no frame of type {kind:?} in this direction")],
    };
    panic!("{frame} breaks the schema: {errors:#?}");
}

#[test]
fn the_schema_is_draft_2020_12_and_lists_every_frame_once() {
    jsonschema::meta::validate(&schema()).expect("a valid draft 2020-12 schema");
    let server = kinds("server_frame");
    let client = kinds("client_frame");
    assert!(server.is_disjoint(&client), "a type in both directions");
    for k in server.iter().chain(&client) {
        let def = &schema()["$defs"][k];
        assert_eq!(def["properties"]["type"]["const"], k.as_str(), "{k}");
        assert_eq!(def["additionalProperties"], false, "{k} is closed");
    }
    // Not vacuous: a frame missing a field, with a wrong type, an unknown
    // field or an unknown type is refused.
    let v = validator("server_frame");
    for bad in [
        json!({"type": "reconnect"}),
        json!({"type": "reconnect", "after_ms": "soon"}),
        json!({"type": "reconnect", "after_ms": 1, "extra": true}),
        json!({"type": "logged_out", "reason": "x"}),
        json!({"type": "error", "code": "no_such_code", "message": ""}),
        json!({"type": "ping"}),
    ] {
        assert!(!v.is_valid(&bad), "server_frame accepted {bad}");
    }
    let c = validator("client_frame");
    for bad in [
        json!({"type": "status", "status": ""}),
        json!({"type": "ack"}),
        json!({"type": "pong", "id": 1}),
    ] {
        assert!(!c.is_valid(&bad), "client_frame accepted {bad}");
    }
}

/// The JSON objects of the ```json block after `heading` in protocol.md.
fn doc_examples(heading: &str) -> Vec<Value> {
    let after = PROTOCOL_MD
        .split_once(heading)
        .unwrap_or_else(|| panic!("protocol.md has {heading:?}"))
        .1;
    let block = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a json block")
        .0;
    serde_json::Deserializer::from_str(block)
        .into_iter::<Value>()
        .map(|v| v.expect("the example is JSON"))
        .collect()
}

#[test]
fn the_protocol_docs_examples_match_the_schema() {
    let server = doc_examples("### Server → client");
    let v = validator("server_frame");
    for f in &server {
        assert_valid(&v, f);
    }
    let c = validator("client_frame");
    let client = doc_examples("### Client → server");
    for f in &client {
        assert_valid(&c, f);
    }
    let types = |fs: &[Value]| -> BTreeSet<String> {
        fs.iter()
            .map(|f| f["type"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        types(&server),
        kinds("server_frame"),
        "every server frame shown"
    );
    assert_eq!(
        types(&client),
        kinds("client_frame"),
        "every client frame shown"
    );
}

/// Every frame taken off the sockets, for validation at the end.
#[derive(Default)]
struct Seen(Vec<Value>);

impl Seen {
    fn keep(&mut self, v: Value) -> Value {
        self.0.push(v.clone());
        v
    }
}

#[tokio::test]
async fn every_server_frame_a_real_node_sends_matches_the_schema() {
    let node = start().await;
    let mut seen = Seen::default();

    // A supervisor watching presence: welcome, then presence frames. The
    // pong after watch_presence proves the watch is registered (frames of
    // one socket are handled in order).
    let sup = node.grant_role(T, "sup", "supervisor").await;
    let (mut sup_ws, welcome) = node.connect_welcome(&sup.token).await;
    seen.keep(welcome);
    sup_ws.send_json(json!({"type": "watch_presence"})).await;
    sup_ws
        .send_json(json!({"type": "ping", "id": {"n": 7}}))
        .await;
    seen.keep(sup_ws.wait_type("pong").await);

    // An agent at a station: welcome, a notice, every kind of bad frame.
    let ana = node.grant(T, "ana", "desk-1").await;
    let (mut ana_ws, welcome) = node.connect_welcome(&ana.token).await;
    seen.keep(welcome);
    let mut c = node.client.clone();
    within(
        "Notify",
        c.notify(pb::NotifyRequest {
            tenant: T.into(),
            target: Some(pb::notify_request::Target::Login("ana".into())),
            notice: Some(pb::Notice {
                id: "pw-1".into(),
                kind: "password_expiry".into(),
                severity: "warning".into(),
                text: "Your password expires in 3 days".into(),
                data_json: r#"{"days":3}"#.into(),
                expires_at_ms: 0,
            }),
        }),
    )
    .await
    .expect("Notify succeeds");
    seen.keep(ana_ws.expect_type("notice").await);
    let bad_frames = [
        (r#"{"type":"dance"}"#, "unknown_type"),
        ("{nope", "malformed_json"),
        (r#"{"type":"status","status":5}"#, "invalid_field"),
        (r#"{"type":"watch_presence"}"#, "forbidden"),
    ];
    for (text, code) in bad_frames {
        ana_ws.send_text(text).await;
        let e = seen.keep(ana_ws.expect_type("error").await);
        assert_eq!(e["code"], code, "{e}");
    }
    within(
        "binary send",
        ana_ws.raw().send(Message::Binary(vec![1, 2, 3].into())),
    )
    .await
    .expect("binary frame sent");
    let e = seen.keep(ana_ws.expect_type("error").await);
    assert_eq!(e["code"], "binary_not_supported", "{e}");
    ana_ws
        .send_json(json!({"type": "status", "status": "away"}))
        .await;

    // A takeover from another station: forced_logout for ana, and the
    // supervisor sees the session end with its reason.
    let again = node
        .claim(T, "ana", "desk-2", ConflictPolicy::Takeover)
        .await;
    assert_eq!(again.outcome(), ClaimOutcome::Granted, "{again:?}");
    seen.keep(ana_ws.expect_type("forced_logout").await);
    ana_ws.expect_close(4002).await;
    loop {
        let p = seen.keep(sup_ws.wait_type("presence").await);
        if p["change"] == "ended" {
            break;
        }
    }
    // Events lost on the way to this node: watchers are told to re-read.
    node.server().connectivity_switch().announce_gap();
    let gap = seen.keep(sup_ws.wait_type("gap").await);
    assert_eq!(gap["reason"], "subscription_lost", "{gap}");

    // A normal logout.
    let (mut ws, welcome) = node.connect_welcome(&again.token).await;
    seen.keep(welcome);
    ws.send_json(json!({"type": "logout"})).await;
    seen.keep(ws.expect_type("logged_out").await);
    ws.expect_close(4000).await;

    // A refused token.
    let mut bad = node.connect("not-a-token").await;
    seen.keep(bad.expect_error_then_close("invalid_token", 4401).await);

    // Draining: every open socket is told to reconnect.
    let bo = node.grant(T, "bo", "").await;
    let (mut bo_ws, welcome) = node.connect_welcome(&bo.token).await;
    seen.keep(welcome);
    // Before that, the node cannot vouch for its sessions, then can again.
    let switch = node.server().connectivity_switch();
    switch.set(Connectivity::degraded(Cause::RedisUnreachable));
    let degraded = seen.keep(bo_ws.wait_type("connectivity").await);
    assert_eq!(degraded["state"], "degraded", "{degraded}");
    switch.set(Connectivity::Ok);
    let ok = seen.keep(bo_ws.wait_type("connectivity").await);
    assert_eq!(ok["state"], "ok", "{ok}");
    let reader = tokio::spawn(async move {
        let f = bo_ws.wait_type("reconnect").await;
        bo_ws.expect_close(1012).await;
        f
    });
    node.shutdown().await;
    seen.keep(within("the reconnect frame", reader).await.expect("reader"));

    let v = validator("server_frame");
    for f in &seen.0 {
        assert_valid(&v, f);
    }
    let got: BTreeSet<String> = seen
        .0
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, kinds("server_frame"), "one of every server frame");
    assert!(
        seen.0
            .iter()
            .any(|f| f["type"] == "presence" && f["session"]["end_reason"].is_string()),
        "a presence frame of an ended session was checked"
    );
}
