//! The HTTP/JSON API (`POST /v1/api/<Method>`) over real HTTP against a real
//! node: every method, every error class with the same message gRPC gives,
//! a forbidden tenant, the request-size limits, and WatchPresence as
//! newline-delimited JSON until the node stops. Every answer is checked
//! against the OpenAPI document generated from the proto.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use support::*;
use turnstile::config::ApiKeyConfig;
use turnstile::pb;

const ADMIN_KEY: &str = "admin-key-0123456789";
const ACME_KEY: &str = "acme-key-0123456789";

/// A node with an all-tenants key and one scoped to `acme`.
async fn start_keyed() -> Node {
    start_with(|c| {
        c.api_keys = vec![
            ApiKeyConfig {
                name: "admin".into(),
                key: ADMIN_KEY.into(),
                tenant: None,
            },
            ApiKeyConfig {
                name: "acme-portal".into(),
                key: ACME_KEY.into(),
                tenant: Some(turnstile::session::Tenant::parse("acme").expect("tenant")),
            },
        ];
    })
    .await
}

/// Sends one request on a fresh connection; returns the response with its
/// body still streaming.
async fn send(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> http::Response<Incoming> {
    within("HTTP request", async {
        let tcp = TcpStream::connect(addr).await.expect("HTTP connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("HTTP response")
    })
    .await
}

/// `POST /v1/api/<method>` with a JSON body and an optional key; returns
/// the status and the JSON body.
async fn call(addr: SocketAddr, method: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let (status, bytes) = call_raw(addr, method, key, "application/json", body.to_string()).await;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method}: body is not JSON ({e}): {bytes:?}"));
    if status == 200 {
        assert_response_conforms(method, &json);
    }
    (status, json)
}

async fn call_raw(
    addr: SocketAddr,
    method: &str,
    key: Option<&str>,
    content_type: &str,
    body: String,
) -> (u16, Bytes) {
    let mut req = http::Request::post(format!("http://{addr}/v1/api/{method}"))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, content_type);
    if let Some(k) = key {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let resp = send(
        addr,
        req.body(Full::new(Bytes::from(body))).expect("request"),
    )
    .await;
    let status = resp.status().as_u16();
    let bytes = within("HTTP body", resp.into_body().collect())
        .await
        .expect("HTTP body")
        .to_bytes();
    (status, bytes)
}

/// A gRPC request carrying `key`.
fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("metadata"),
    );
    r
}

/// Checks `body` against `schema` of the OpenAPI document, closed: a
/// field the document does not list fails too (every object schema gets
/// `additionalProperties: false`; responses use only the JSON names).
fn assert_conforms(what: &str, schema: &Value, body: &Value) {
    let errors = schema_errors(schema, body);
    assert!(
        errors.is_empty(),
        "{what}: {body} breaks openapi.json: {errors:#?}"
    );
}

/// How `body` breaks `schema` (closed, see [`assert_conforms`]).
fn schema_errors(schema: &Value, body: &Value) -> Vec<String> {
    fn close(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                    o.insert("additionalProperties".into(), Value::Bool(false));
                }
                o.values_mut().for_each(close);
            }
            Value::Array(a) => a.iter_mut().for_each(close),
            _ => {}
        }
    }
    let doc: Value = serde_json::from_str(turnstile::api::http::OPENAPI_JSON).expect("json");
    let mut root = json!({ "components": doc["components"], "allOf": [schema] });
    close(&mut root);
    let v = jsonschema::draft202012::new(&root).expect("the OpenAPI schemas compile");
    v.iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

/// Checks a 200 response (or one NDJSON line) of `method` against the
/// OpenAPI document.
fn assert_response_conforms(method: &str, body: &Value) {
    let doc: Value = serde_json::from_str(turnstile::api::http::OPENAPI_JSON).expect("json");
    let content = &doc["paths"][format!("/v1/api/{method}")]["post"]["responses"]["200"]["content"];
    let schema = content
        .get("application/json")
        .or_else(|| content.get("application/x-ndjson"))
        .map(|c| c["schema"].clone())
        .unwrap_or_else(|| panic!("{method}: no 200 schema in openapi.json"));
    assert_conforms(method, &schema, body);
}

/// Asserts an HTTP error has `status`, `code` and exactly gRPC's message.
fn assert_error(got: &(u16, Value), status: u16, code: &str, grpc: &tonic::Status) {
    assert_conforms(
        "error",
        &json!({"$ref": "#/components/schemas/Status"}),
        &got.1,
    );
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["status"], code, "{}", got.1);
    assert_eq!(got.1["code"], grpc.code() as i32, "{}", got.1);
    assert_eq!(got.1["message"], grpc.message(), "{}", got.1);
}

/// Newline-delimited JSON lines of a streaming response.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next whole line, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Value> {
        within("an NDJSON line", async {
            loop {
                if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=i).collect();
                    let line = serde_json::from_slice(&line).expect("a JSON line");
                    assert_response_conforms("WatchPresence", &line);
                    return Some(line);
                }
                match self.body.frame().await {
                    None => {
                        assert!(self.buf.is_empty(), "a partial last line");
                        return None;
                    }
                    Some(frame) => {
                        if let Ok(data) = frame.expect("body frame").into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                }
            }
        })
        .await
    }

    /// The next event's (change, login).
    async fn event(&mut self) -> (String, String) {
        let line = self.next().await.expect("a presence event");
        let e = &line["result"]["event"];
        assert!(e.is_object(), "not an event: {line}");
        (
            e["change"].as_str().unwrap_or_default().to_string(),
            e["session"]["login"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

async fn watch(addr: SocketAddr, key: &str, tenant: &str) -> Lines {
    let req = http::Request::post(format!("http://{addr}/v1/api/WatchPresence"))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Full::new(Bytes::from(
            json!({ "tenant": tenant }).to_string(),
        )))
        .expect("request");
    let resp = send(addr, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()[http::header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    Lines {
        body: resp.into_body(),
        buf: Vec::new(),
    }
}

#[tokio::test]
async fn every_method_answers_over_http_as_grpc_does() {
    let node = start_keyed().await;
    let addr = node.http;
    let key = Some(ACME_KEY);
    let mut called = BTreeSet::new();

    let mut presence = watch(addr, ACME_KEY, "acme").await;
    called.insert("WatchPresence");

    let (status, granted) = call(
        addr,
        "Claim",
        key,
        &json!({"tenant": "acme", "login": "ana", "station": "desk-4", "client": "desktop"}),
    )
    .await;
    called.insert("Claim");
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["outcome"], "CLAIM_OUTCOME_GRANTED");
    assert!(granted["token"].as_str().is_some_and(|t| !t.is_empty()));
    let id = granted["session"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_string();
    assert_eq!(granted["session"]["state"], "SESSION_STATE_PENDING");
    // 64-bit integers are strings in proto3 JSON (generations start at a
    // time-derived floor, unix ms x 10).
    let generation: u64 = granted["session"]["generation"]
        .as_str()
        .expect("generation is a JSON string")
        .parse()
        .expect("generation is decimal");
    assert!(generation > 1, "{generation}");
    assert_eq!(
        presence.event().await,
        ("PRESENCE_CHANGE_CLAIMED".into(), "ana".into())
    );

    // The same session, through gRPC: one implementation behind both.
    let mut grpc = node.new_client().await;
    let by_grpc = grpc
        .get_session(keyed(
            pb::GetSessionRequest {
                tenant: "acme".into(),
                key: Some(pb::get_session_request::Key::SessionId(id.clone())),
            },
            ACME_KEY,
        ))
        .await
        .expect("GetSession over gRPC")
        .into_inner();
    let (_, by_http) = call(
        addr,
        "GetSession",
        key,
        &json!({"tenant": "acme", "sessionId": id}),
    )
    .await;
    called.insert("GetSession");
    assert_eq!(
        by_http["session"],
        serde_json::to_value(&by_grpc.session).expect("json")
    );

    // Conflicts are outcomes (200), in either field spelling.
    let (status, refused) = call(
        addr,
        "Claim",
        key,
        &json!({"tenant": "acme", "login": "ana"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(refused["outcome"], "CLAIM_OUTCOME_LOGIN_IN_USE");
    assert_eq!(refused["holder"]["sessionId"], id.as_str());
    let (_, refused) = call(
        addr,
        "Claim",
        key,
        &json!({"tenant": "acme", "login": "bob", "station": "desk-4", "on_conflict": "CONFLICT_POLICY_TAKEOVER"}),
    )
    .await;
    assert_eq!(refused["outcome"], "CLAIM_OUTCOME_STATION_IN_USE");

    let (status, stations) = call(
        addr,
        "StationStatus",
        key,
        &json!({"tenant": "acme", "stations": ["desk-1", "desk-4"]}),
    )
    .await;
    called.insert("StationStatus");
    assert_eq!(status, 200, "{stations}");
    assert_eq!(
        stations["stations"][0],
        json!({"station": "desk-1", "free": true})
    );
    assert_eq!(stations["stations"][1]["login"], "ana");

    let (_, list) = call(
        addr,
        "ListSessions",
        key,
        &json!({"tenant": "acme", "pageSize": 10}),
    )
    .await;
    called.insert("ListSessions");
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");

    let (status, notified) = call(
        addr,
        "Notify",
        key,
        &json!({"tenant": "acme", "login": "ana", "notice": {
            "id": "pw1", "kind": "password_expiry", "severity": "warning",
            "text": "Your password expires in 3 days", "expiresAtMs": "0"}}),
    )
    .await;
    called.insert("Notify");
    assert_eq!(status, 200, "{notified}");
    assert_eq!(notified, json!({"queued": 1}), "defaults are omitted");

    let (status, released) = call(
        addr,
        "Release",
        key,
        &json!({"tenant": "acme", "sessionId": id}),
    )
    .await;
    called.insert("Release");
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["session"]["state"], "SESSION_STATE_ENDED");
    assert_eq!(released["session"]["endReason"], "END_REASON_LOGGED_OUT");
    assert_eq!(
        presence.event().await,
        ("PRESENCE_CHANGE_ENDED".into(), "ana".into())
    );

    let (_, granted) = call(
        addr,
        "Claim",
        key,
        &json!({"tenant": "acme", "login": "carl"}),
    )
    .await;
    assert_eq!(granted["outcome"], "CLAIM_OUTCOME_GRANTED");
    assert_eq!(
        presence.event().await,
        ("PRESENCE_CHANGE_CLAIMED".into(), "carl".into())
    );
    let (status, evicted) = call(
        addr,
        "Evict",
        key,
        &json!({"tenant": "acme", "login": "carl", "message": "Password changed"}),
    )
    .await;
    called.insert("Evict");
    assert_eq!(status, 200, "{evicted}");
    assert_eq!(evicted["evicted"][0]["login"], "carl");
    assert_eq!(evicted["evicted"][0]["endReason"], "END_REASON_EVICTED");
    assert_eq!(
        presence.event().await,
        ("PRESENCE_CHANGE_ENDED".into(), "carl".into())
    );

    // Seat licences: a tenant's own key may read its use but not raise its
    // limit; the operator's key may.
    let (status, refused) = call(
        addr,
        "SetSeatLimit",
        key,
        &json!({"tenant": "acme", "seatLimit": 5}),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    let (status, set) = call(
        addr,
        "SetSeatLimit",
        Some(ADMIN_KEY),
        &json!({"tenant": "acme", "seatLimit": 5}),
    )
    .await;
    called.insert("SetSeatLimit");
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["usage"]["seatLimit"], 5, "{set}");
    let (status, usage) = call(addr, "GetTenantUsage", key, &json!({"tenant": "acme"})).await;
    called.insert("GetTenantUsage");
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["usage"]["seatLimit"], 5, "{usage}");
    // Canonical proto3 JSON leaves out zero values: no seats used here.
    let used = usage["usage"]
        .get("seatsUsed")
        .map_or(Some(0), |v| v.as_u64());
    assert!(used.is_some(), "{usage}");

    // The station directory: a tenant's key manages its own.
    let (status, reg) = call(
        addr,
        "RegisterStations",
        key,
        &json!({"tenant": "acme", "stations": ["desk-2", "desk-1", "desk-3"]}),
    )
    .await;
    called.insert("RegisterStations");
    assert_eq!(status, 200, "{reg}");
    assert_eq!(
        (reg["added"].as_u64(), reg["registered"].as_str()),
        (Some(3), Some("3")),
        "{reg}"
    );
    let (status, removed) = call(
        addr,
        "RemoveStations",
        key,
        &json!({"tenant": "acme", "stations": ["desk-3"]}),
    )
    .await;
    called.insert("RemoveStations");
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["removed"], 1, "{removed}");
    let (status, page) = call(
        addr,
        "ListStations",
        key,
        &json!({"tenant": "acme", "prefix": "desk-", "freeOnly": true, "pageSize": 1}),
    )
    .await;
    called.insert("ListStations");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["stations"][0]["station"], "desk-1", "{page}");
    assert_eq!(page["nextPageToken"], "desk-1", "{page}");
    assert_eq!(page["registered"], "2", "uint64 is a JSON string: {page}");
    let (status, bad) = call(
        addr,
        "ListStations",
        key,
        &json!({"tenant": "acme", "pageSize": 5000}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");

    let all: BTreeSet<&str> = turnstile::api::http::METHODS
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        called, all,
        "every method of the proto was called over HTTP"
    );

    // The node stops: the stream ends with the status gRPC would end it with.
    node.shutdown().await;
    let last = presence.next().await.expect("a last line");
    assert_eq!(last["error"]["status"], "UNAVAILABLE", "{last}");
    assert_eq!(
        last["error"]["message"],
        "node is shutting down; watch another node"
    );
    assert!(presence.next().await.is_none());
}

#[tokio::test]
async fn every_error_class_has_grpc_s_code_and_message() {
    let node = start_keyed().await;
    let addr = node.http;
    let mut grpc = node.new_client().await;
    let claim = pb::ClaimRequest {
        tenant: "acme".into(),
        login: "ana".into(),
        ..Default::default()
    };
    let claim_json = json!({"tenant": "acme", "login": "ana"});

    // No key, an unknown key.
    let want = grpc.claim(claim.clone()).await.expect_err("no key");
    let got = call(addr, "Claim", None, &claim_json).await;
    assert_error(&got, 401, "UNAUTHENTICATED", &want);
    let want = grpc
        .claim(keyed(claim.clone(), "not-a-key-0123456789"))
        .await
        .expect_err("unknown key");
    let got = call(addr, "Claim", Some("not-a-key-0123456789"), &claim_json).await;
    assert_error(&got, 401, "UNAUTHENTICATED", &want);

    // A key scoped to acme used for another tenant.
    let other = pb::ClaimRequest {
        tenant: "globex".into(),
        ..claim.clone()
    };
    let want = grpc
        .claim(keyed(other, ACME_KEY))
        .await
        .expect_err("forbidden tenant");
    assert_eq!(want.code(), tonic::Code::PermissionDenied);
    for method in ["Claim", "GetSession", "ListSessions", "WatchPresence"] {
        let got = call(addr, method, Some(ACME_KEY), &json!({"tenant": "globex"})).await;
        assert_error(&got, 403, "PERMISSION_DENIED", &want);
    }
    // The all-tenants key may.
    let (status, _) = call(
        addr,
        "ListSessions",
        Some(ADMIN_KEY),
        &json!({"tenant": "globex"}),
    )
    .await;
    assert_eq!(status, 200);

    // A field the service refuses, named.
    let bad = pb::ClaimRequest {
        login: String::new(),
        ..claim.clone()
    };
    let want = grpc
        .claim(keyed(bad, ACME_KEY))
        .await
        .expect_err("empty login");
    let got = call(
        addr,
        "Claim",
        Some(ACME_KEY),
        &json!({"tenant": "acme", "login": ""}),
    )
    .await;
    assert_error(&got, 400, "INVALID_ARGUMENT", &want);

    // JSON that is not the message: the field is named.
    let (status, body) = call(
        addr,
        "Claim",
        Some(ACME_KEY),
        &json!({"tenant": "acme", "login": 7}),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("login: ")),
        "{body}"
    );
    let (status, body) = call(
        addr,
        "Claim",
        Some(ACME_KEY),
        &json!({"tenant": "acme", "logn": "ana"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `logn`")),
        "{body}"
    );
    let (status, body) = call(
        addr,
        "Claim",
        Some(ACME_KEY),
        &json!({"tenant": "acme", "login": "ana", "onConflict": "CONFLICT_POLICY_SOMETIMES"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("onConflict: ")),
        "{body}"
    );

    // Not found.
    let want = grpc
        .get_session(keyed(
            pb::GetSessionRequest {
                tenant: "acme".into(),
                key: Some(pb::get_session_request::Key::Login("nobody".into())),
            },
            ACME_KEY,
        ))
        .await
        .expect_err("no session");
    let got = call(
        addr,
        "GetSession",
        Some(ACME_KEY),
        &json!({"tenant": "acme", "login": "nobody"}),
    )
    .await;
    assert_error(&got, 404, "NOT_FOUND", &want);

    // Too large: over gRPC's 64 KiB as a message (tonic's words), and over
    // the JSON body bound (refused unread).
    let attributes: serde_json::Map<String, Value> = (0..70)
        .map(|i| (format!("k{i}"), Value::String("x".repeat(1000))))
        .collect();
    let mut big = claim.clone();
    big.attributes = attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let want = grpc
        .claim(keyed(big, ACME_KEY))
        .await
        .expect_err("too large");
    assert_eq!(want.code(), tonic::Code::OutOfRange, "{want}");
    let got = call(
        addr,
        "Claim",
        Some(ACME_KEY),
        &json!({"tenant": "acme", "login": "ana", "attributes": attributes}),
    )
    .await;
    assert_error(&got, 400, "OUT_OF_RANGE", &want);
    let huge = json!({"tenant": "acme", "login": "x".repeat(300 * 1024)}).to_string();
    let (status, body) = call_raw(addr, "Claim", Some(ACME_KEY), "application/json", huge).await;
    assert_eq!(status, 413, "{body:?}");

    // Not a method, not POST, not JSON.
    let (status, body) = call(addr, "Frobnicate", Some(ACME_KEY), &json!({})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (404, Some("UNIMPLEMENTED")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Claim, Release")),
        "{body}"
    );
    let (status, body) = call_raw(
        addr,
        "Claim",
        Some(ACME_KEY),
        "text/plain",
        claim_json.to_string(),
    )
    .await;
    assert_eq!(status, 415, "{body:?}");
    let (status, _) = http_get(addr, "/v1/api/Claim").await;
    assert_eq!(status, 405);

    // Nothing was claimed by any of that.
    let (_, list) = call(
        addr,
        "ListSessions",
        Some(ACME_KEY),
        &json!({"tenant": "acme"}),
    )
    .await;
    assert_eq!(list, json!({}), "{list}");
    node.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_and_docs_hold_the_same_copy() {
    let node = start().await;
    let (status, body) = http_get(node.http, "/v1/api/openapi.json").await;
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body, turnstile::api::http::OPENAPI_JSON);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var_os("TS_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &body).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == body,
        "docs/openapi.json differs from the document generated from the proto: \
         run `TS_WRITE_OPENAPI=1 cargo test -p turnstile --test http_api openapi`"
    );
    // The response check bites: an unlisted field, a wrong type, an
    // unknown enum name.
    let claim = json!({"$ref": "#/components/schemas/ClaimResponse"});
    assert!(schema_errors(&claim, &json!({"outcome": "CLAIM_OUTCOME_GRANTED"})).is_empty());
    for bad in [
        json!({"outcome": "CLAIM_OUTCOME_GRANTED", "bogus": 1}),
        json!({"session": {"login": 5}}),
        json!({"outcome": "CLAIM_OUTCOME_MAYBE"}),
    ] {
        assert!(!schema_errors(&claim, &bad).is_empty(), "{bad} passed");
    }
    // Every method, with its request and response schemas.
    for m in turnstile::api::http::METHODS {
        let op = &served["paths"][format!("/v1/api/{}", m.name)]["post"];
        let req = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no request schema", m.name));
        let name = req.rsplit('/').next().unwrap_or_default();
        assert!(
            served["components"]["schemas"][name]["properties"].is_object(),
            "{name}"
        );
    }
    node.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_when_the_node_stops() {
    // Login services keep connections open between calls (PHP's curl, Node's
    // keep-alive agents); a stopping node must not wait for them. Bounds
    // past the test's own, so only closing the connection passes.
    let node = start_with(|c| {
        c.handshake_timeout = std::time::Duration::from_secs(60);
        c.shutdown_grace = std::time::Duration::from_secs(60);
    })
    .await;
    let addr = node.http;
    let tcp = TcpStream::connect(addr).await.expect("HTTP connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!("http://{addr}/v1/api/ListSessions"))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(r#"{"tenant":"acme"}"#)))
        .expect("request");
    let resp = within("ListSessions", sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    within("the body", resp.into_body().collect())
        .await
        .expect("body");

    node.shutdown().await;
    within("the node to close the idle connection", conn)
        .await
        .expect("connection task")
        .expect("a clean close");
    drop(sender);
}

#[tokio::test]
async fn an_ended_session_an_unknown_tenant_and_a_lost_redis_answer_as_on_grpc() {
    let mut redis = support::procs::RedisServer::start().await;
    let node = start_with(|c| {
        c.redis = Some(redis.url().parse().expect("a redis URL"));
        c.tenants = Some(vec![
            turnstile::session::Tenant::parse("acme").expect("tenant")
        ]);
    })
    .await;
    let addr = node.http;
    let mut grpc = node.new_client().await;

    // FAILED_PRECONDITION: notifying a session that has ended.
    let (_, granted) = call(
        addr,
        "Claim",
        None,
        &json!({"tenant": "acme", "login": "ana"}),
    )
    .await;
    let id = granted["session"]["sessionId"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _) = call(
        addr,
        "Release",
        None,
        &json!({"tenant": "acme", "sessionId": id}),
    )
    .await;
    assert_eq!(status, 200);
    let notice = pb::Notice {
        id: "n1".into(),
        kind: "info".into(),
        severity: "info".into(),
        text: "hello".into(),
        ..Default::default()
    };
    let want = grpc
        .notify(pb::NotifyRequest {
            tenant: "acme".into(),
            target: Some(pb::notify_request::Target::SessionId(id.clone())),
            notice: Some(notice),
        })
        .await
        .expect_err("ended");
    let got = call(
        addr,
        "Notify",
        None,
        &json!({"tenant": "acme", "sessionId": id,
                "notice": {"id": "n1", "kind": "info", "severity": "info", "text": "hello"}}),
    )
    .await;
    assert_error(&got, 400, "FAILED_PRECONDITION", &want);

    // NOT_FOUND: a tenant this node does not serve.
    let want = grpc
        .list_sessions(pb::ListSessionsRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown tenant");
    let got = call(addr, "ListSessions", None, &json!({"tenant": "globex"})).await;
    assert_error(&got, 404, "NOT_FOUND", &want);

    // UNAVAILABLE: Redis is gone. The message names the failure, which
    // may change between two calls (lease, then connection), so only the
    // code is compared with gRPC's.
    redis.kill().await;
    let want = grpc
        .get_session(pb::GetSessionRequest {
            tenant: "acme".into(),
            key: Some(pb::get_session_request::Key::Login("ana".into())),
        })
        .await
        .expect_err("redis is down");
    assert_eq!(want.code(), tonic::Code::Unavailable, "{want}");
    let (status, body) = call(
        addr,
        "GetSession",
        None,
        &json!({"tenant": "acme", "login": "ana"}),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    node.shutdown().await;
}
