//! The client protocol's client → server half: JSON text frames
//! `{"type": ...}` parsed into [`ClientMessage`]; a bad client frame becomes
//! a [`ProtocolError`] whose `code` names what was wrong. Server frames are
//! built in [`crate::frames`], below the hub.

use serde_json::Value;

pub use crate::limits::{MAX_NOTICE_ID_LEN, MAX_STATUS_LEN};

/// A message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// App-level ping (browsers cannot send WebSocket pings); `id` is echoed.
    Ping {
        id: Value,
    },
    Status {
        status: String,
    },
    Ack {
        notice_id: String,
    },
    Logout,
    WatchPresence,
}

/// A client frame that could not be understood. The socket stays up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn field(field: &str, problem: &str) -> Self {
        Self::new("invalid_field", format!("{field}: {problem}"))
    }
}

/// Parses one client text frame.
pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new("malformed_json", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            "malformed_json",
            "a frame must be a JSON object with a \"type\"",
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ProtocolError::field("type", "must be a string")),
        None => return Err(ProtocolError::field("type", "is missing")),
    };
    let string = |field: &str, max: usize| -> Result<String, ProtocolError> {
        match obj.get(field) {
            Some(Value::String(s)) if s.is_empty() => {
                Err(ProtocolError::field(field, "must not be empty"))
            }
            Some(Value::String(s)) if s.len() > max => Err(ProtocolError::field(
                field,
                &format!("is {} bytes, the limit is {max}", s.len()),
            )),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ProtocolError::field(field, "must be a string")),
            None => Err(ProtocolError::field(field, "is missing")),
        }
    };
    match kind {
        "ping" => Ok(ClientMessage::Ping {
            id: obj.get("id").cloned().unwrap_or(Value::Null),
        }),
        "status" => Ok(ClientMessage::Status {
            status: string("status", MAX_STATUS_LEN)?,
        }),
        "ack" => Ok(ClientMessage::Ack {
            notice_id: string("notice_id", MAX_NOTICE_ID_LEN)?,
        }),
        "logout" => Ok(ClientMessage::Logout),
        "watch_presence" => Ok(ClientMessage::WatchPresence),
        other => Err(ProtocolError::new(
            "unknown_type",
            format!(
                "unknown type {:?}; expected ping, status, ack, logout or watch_presence",
                truncate(other, 32)
            ),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::pong;
    use serde_json::json;

    #[test]
    fn every_client_message_parses() {
        assert_eq!(
            parse(r#"{"type":"ping","id":7}"#),
            Ok(ClientMessage::Ping { id: json!(7) })
        );
        assert_eq!(
            parse(r#"{"type":"status","status":"away"}"#),
            Ok(ClientMessage::Status {
                status: "away".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"ack","notice_id":"n1"}"#),
            Ok(ClientMessage::Ack {
                notice_id: "n1".into()
            })
        );
        assert_eq!(parse(r#"{"type":"logout"}"#), Ok(ClientMessage::Logout));
        assert_eq!(
            parse(r#"{"type":"watch_presence"}"#),
            Ok(ClientMessage::WatchPresence)
        );
    }

    #[test]
    fn a_ping_id_is_echoed_as_the_number_the_client_sent() {
        // Found by fuzzing (fuzz/corpus/client_message/crash-4dd1ff6c...):
        // serde_json's default float parser may be one ULP off for long
        // decimals, so this id came back in the pong as
        // 1.0000000000000001e253 and a client matching pongs to pings by id
        // never saw its own. Cargo.toml enables `float_roundtrip`.
        let digits = format!("{}.{}", "9".repeat(253), "9".repeat(44));
        let Ok(ClientMessage::Ping { id }) = parse(&format!(r#"{{"type":"ping","id":{digits}}}"#))
        else {
            panic!("not a ping");
        };
        // std's parser rounds correctly.
        assert_eq!(id.as_f64(), Some(digits.parse::<f64>().unwrap()));
        let echoed: Value = serde_json::from_str(pong(&id).as_str()).unwrap();
        assert_eq!(echoed["id"], id);
    }

    #[test]
    fn bad_frames_get_a_code_naming_what_was_wrong() {
        assert_eq!(parse("{nope").unwrap_err().code, "malformed_json");
        assert_eq!(parse("[1]").unwrap_err().code, "malformed_json");
        assert_eq!(
            parse(r#"{"type":"dance"}"#).unwrap_err().code,
            "unknown_type"
        );
        let e = parse(r#"{"type":"status","status":5}"#).unwrap_err();
        assert_eq!(e.code, "invalid_field");
        assert!(e.message.starts_with("status:"), "{}", e.message);
        let e = parse(r#"{"type":"ack"}"#).unwrap_err();
        assert_eq!(e.message, "notice_id: is missing");
        let long = "x".repeat(MAX_STATUS_LEN + 1);
        let e = parse(&format!(r#"{{"type":"status","status":"{long}"}}"#)).unwrap_err();
        assert!(e.message.contains("limit is 64"), "{}", e.message);
        assert_eq!(
            parse(r#"{"type":3}"#).unwrap_err().message,
            "type: must be a string"
        );
    }
}
