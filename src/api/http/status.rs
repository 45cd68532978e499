//! gRPC status → HTTP response for the HTTP/JSON API: the status mapped to
//! an HTTP status code the way Google's APIs map `google.rpc.Code`, and the
//! gRPC message unchanged in a `google.rpc.Status`-shaped JSON body.

use http::StatusCode;
use serde_json::json;
use tonic::{Code, Status};

/// The HTTP status for a gRPC code (google/rpc/code.proto's mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `SCREAMING_SNAKE` name of a code, as in google/rpc/code.proto.
pub fn name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `{"code": 7, "status": "PERMISSION_DENIED", "message": "..."}`.
pub fn body(status: &Status) -> Vec<u8> {
    let v = json!({
        "code": status.code() as i32,
        "status": name(status.code()),
        "message": status.message(),
    });
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_an_error_status_and_its_own_name() {
        for n in 1..=16 {
            let code = Code::from_i32(n);
            assert!(http_status(code).as_u16() >= 400, "{code:?}");
            let name = name(code);
            assert_eq!(
                name.replace('_', "").to_lowercase(),
                format!("{code:?}").to_lowercase(),
                "{code:?}"
            );
        }
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn the_body_carries_the_grpc_message_unchanged() {
        let b = body(&Status::invalid_argument("login: empty"));
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["code"], 3);
        assert_eq!(v["status"], "INVALID_ARGUMENT");
        assert_eq!(v["message"], "login: empty");
    }
}
