//! The HTTP/JSON form of the gRPC API: `POST /v1/api/<Method>` on the HTTP
//! listener for every RPC of `turnstile.v1.SessionBrokerService`, and
//! `GET /v1/api/openapi.json`.
//!
//! There is one implementation: a call's JSON body is decoded (canonical
//! proto3 JSON, pbjson) into the method's request type and handed, with the
//! request's headers as metadata and the caller from the same API-key check
//! ([`ApiKeys::admit`]), to the same [`Api`] trait method gRPC calls. The
//! method table and the dispatch are generated from the proto (build.rs,
//! `build/http_api.rs`), so a new RPC appears here unmapped by hand. A gRPC
//! error becomes an HTTP status ([`status`]) with the same message; the
//! request-size limit is gRPC's, checked on the decoded message.
//! Server-streaming methods answer newline-delimited JSON (see
//! docs/protocol.md, "HTTP/JSON API", for why).

pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderValue, Method as HttpMethod, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Extensions, Status};

use super::keys::ApiKeys;
use super::Api;
use crate::limits::MAX_GRPC_REQUEST_BYTES;

/// The response body of the HTTP listener: whole, or streamed.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest JSON body read. The limit that counts is gRPC's
/// ([`MAX_GRPC_REQUEST_BYTES`], on the decoded message, as tonic checks
/// it); JSON spells the same message in more bytes (names, quotes, escapes),
/// so the body may be this much larger before it is refused unread.
pub const MAX_JSON_BODY_BYTES: usize = 4 * MAX_GRPC_REQUEST_BYTES;

/// The OpenAPI document, generated from the proto at build time.
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/turnstile.v1.openapi.json"));

/// The path prefix of every method.
pub const PREFIX: &str = "/v1/api/";

/// One method of the service, as the generated table lists it.
#[derive(Clone, Copy, Debug)]
pub struct Method {
    pub name: &'static str,
    pub server_streaming: bool,
}

mod generated {
    use super::{Call, Method, Reply};
    use crate::api::http::unknown_method;
    include!(concat!(env!("OUT_DIR"), "/turnstile.v1.http.rs"));
}

pub use generated::METHODS;

/// What a method is called with: the request's metadata and extensions
/// (the caller, the peer) and its JSON body.
pub struct Call {
    metadata: MetadataMap,
    extensions: Extensions,
    body: Bytes,
}

impl Call {
    /// The body decoded as `M`, in a tonic request carrying the metadata.
    fn request<M>(self) -> Result<tonic::Request<M>, Status>
    where
        M: DeserializeOwned + prost::Message,
    {
        let message: M = decode_json(&self.body)?;
        let len = message.encoded_len();
        if len > MAX_GRPC_REQUEST_BYTES {
            // tonic's words for the same refusal on the gRPC listener.
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {MAX_GRPC_REQUEST_BYTES} bytes"
            )));
        }
        Ok(tonic::Request::from_parts(
            self.metadata,
            self.extensions,
            message,
        ))
    }
}

/// Canonical proto3 JSON into `M`; an error names the field it is in. An
/// empty body is the empty message (`{}`).
fn decode_json<M: DeserializeOwned>(body: &[u8]) -> Result<M, Status> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let message = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            Status::invalid_argument(format!("request body: {inner}"))
        } else {
            Status::invalid_argument(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Status::invalid_argument(format!("request body: {e}")))?;
    Ok(message)
}

type Lines = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// A method's answer, encoded.
pub enum Reply {
    /// One JSON object.
    Unary(Bytes),
    /// Newline-delimited JSON: `{"result": ...}` per message, and a last
    /// `{"error": Status}` when the stream ends with an error.
    Stream(Lines),
}

impl Reply {
    fn unary<T: Serialize>(message: T) -> Result<Self, Status> {
        serde_json::to_vec(&message)
            .map(|v| Reply::Unary(v.into()))
            .map_err(|e| Status::internal(format!("encoding the response as JSON: {e}")))
    }

    fn stream<S, T>(messages: S) -> Result<Self, Status>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Serialize,
    {
        let messages = Box::pin(messages);
        let lines = futures_util::stream::unfold(Some(messages), |messages| async move {
            let mut messages = messages?;
            let line = match messages.next().await? {
                Ok(m) => match serde_json::to_vec(&m) {
                    Ok(json) => line("result", &json),
                    Err(e) => {
                        let s = Status::internal(format!("encoding a message as JSON: {e}"));
                        return Some((line("error", &status::body(&s)), None));
                    }
                },
                Err(s) => return Some((line("error", &status::body(&s)), None)),
            };
            Some((line, Some(messages)))
        });
        Ok(Reply::Stream(Box::pin(lines)))
    }
}

/// `{"<key>": <json>}\n`.
fn line(key: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + key.len() + 6);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(json);
    out.extend_from_slice(b"}\n");
    out.into()
}

fn unknown_method(method: &str) -> Status {
    let names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
    Status::unimplemented(format!(
        "unknown method {method:?} of turnstile.v1.SessionBrokerService; the methods are {}",
        names.join(", ")
    ))
}

/// The HTTP/JSON API: the gRPC service and its keys. Cheap to clone.
#[derive(Clone)]
pub struct HttpApi {
    api: Arc<Api>,
    keys: ApiKeys,
}

impl HttpApi {
    pub fn new(api: Arc<Api>, keys: ApiKeys) -> Self {
        HttpApi { api, keys }
    }

    /// Answers one request under [`PREFIX`]. `read_timeout` bounds reading
    /// the body (the listener's handshake timeout bounds the headers).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        read_timeout: Duration,
    ) -> Response<Body> {
        let path = req.uri().path();
        let name = path.strip_prefix(PREFIX).unwrap_or_default().to_string();
        if name == "openapi.json" && req.method() == HttpMethod::GET {
            return json_response(StatusCode::OK, OPENAPI_JSON);
        }
        let Some(method) = METHODS.iter().find(|m| m.name == name) else {
            return error(StatusCode::NOT_FOUND, &unknown_method(&name));
        };
        if req.method() != HttpMethod::POST {
            let s = Status::unimplemented(format!(
                "{} {}: methods are called with POST",
                req.method(),
                path
            ));
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &s);
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        // Only JSON: a browser page cannot send it cross-site without a
        // CORS preflight, which this listener never grants.
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            let s = Status::invalid_argument(
                "content-type: send `Content-Type: application/json` (canonical proto3 JSON)",
            );
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &s);
        }
        let (parts, body) = req.into_parts();
        let mut extensions = Extensions::new();
        extensions.insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer),
        });
        let admitted =
            tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), extensions, ());
        let admitted = match self.keys.admit(admitted, "http") {
            Ok(r) => r,
            Err(s) => return error(status::http_status(s.code()), &s),
        };
        let body = match read_body(body, read_timeout).await {
            Ok(b) => b,
            Err((code, s)) => return error(code, &s),
        };
        let (metadata, extensions, ()) = admitted.into_parts();
        let call = Call {
            metadata,
            extensions,
            body,
        };
        match generated::dispatch(&*self.api, method.name, call).await {
            Ok(Reply::Unary(json)) => json_response(StatusCode::OK, json),
            Ok(Reply::Stream(lines)) => {
                let frames = lines.map(|b| Ok::<_, Infallible>(Frame::data(b)));
                let mut r = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                r
            }
            Err(s) => error(status::http_status(s.code()), &s),
        }
    }
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole body, at most [`MAX_JSON_BODY_BYTES`], within `timeout`.
async fn read_body(body: Incoming, timeout: Duration) -> Result<Bytes, (StatusCode, Status)> {
    let collect = Limited::new(body, MAX_JSON_BODY_BYTES).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            Status::out_of_range(format!(
                "request body: larger than {MAX_JSON_BODY_BYTES} bytes of JSON \
                 (the decoded message may be at most {MAX_GRPC_REQUEST_BYTES} bytes)"
            )),
        )),
        Ok(Err(e)) => Err((
            StatusCode::BAD_REQUEST,
            Status::invalid_argument(format!("request body: {e}")),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            Status::deadline_exceeded(format!("request body: not received within {timeout:?}")),
        )),
    }
}

fn json_response(code: StatusCode, json: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(UnsyncBoxBody::new(Full::new(json.into())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, s: &Status) -> Response<Body> {
    json_response(code, status::body(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn the_table_lists_every_method_of_the_proto() {
        let names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
        for expected in ["Claim", "Release", "Evict", "GetSession", "ListSessions"] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        let watch = METHODS.iter().find(|m| m.name == "WatchPresence");
        assert!(watch.is_some_and(|m| m.server_streaming));
    }

    #[test]
    fn a_bad_field_is_named_in_the_error() {
        let e = decode_json::<pb::ClaimRequest>(br#"{"tenant": 5}"#).expect_err("a number");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("tenant: "), "{}", e.message());
        let e = decode_json::<pb::NotifyRequest>(br#"{"notice": {"expiresAtMs": "soon"}}"#)
            .expect_err("not a number");
        assert!(
            e.message().starts_with("notice.expiresAtMs: "),
            "{}",
            e.message()
        );
        let e = decode_json::<pb::ClaimRequest>(br#"{"tenant": "a"} x"#).expect_err("trailing");
        assert!(e.message().starts_with("request body: "), "{}", e.message());
    }

    #[test]
    fn canonical_json_both_ways() {
        let r: pb::ClaimRequest = decode_json(
            br#"{"tenant":"acme","login":"ana","on_conflict":"CONFLICT_POLICY_TAKEOVER","attributes":{"k":"v"}}"#,
        )
        .expect("decodes");
        assert_eq!(r.on_conflict, pb::ConflictPolicy::Takeover as i32);
        assert_eq!(r.attributes.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            decode_json::<pb::ClaimRequest>(b"").expect("empty"),
            pb::ClaimRequest::default()
        );
        let s = pb::Session {
            generation: 1 << 60,
            created_at_ms: 5,
            state: pb::SessionState::Connected as i32,
            ..Default::default()
        };
        let v = serde_json::to_value(&s).expect("encodes");
        assert_eq!(v["generation"], "1152921504606846976");
        assert_eq!(v["createdAtMs"], "5");
        assert_eq!(v["state"], "SESSION_STATE_CONNECTED");
    }

    #[test]
    fn the_openapi_document_is_json_with_a_path_per_method() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("json");
        for m in METHODS {
            let path = format!("{PREFIX}{}", m.name);
            assert!(doc["paths"][&path]["post"].is_object(), "{path}");
        }
    }
}
