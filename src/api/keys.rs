//! API keys for the gRPC API and its HTTP/JSON form: who may call, and for
//! which tenant.
//!
//! Callers send `authorization: Bearer <key>` (gRPC metadata or the HTTP
//! header: the same check, [`ApiKeys::admit`]). A key is either for every
//! tenant or scoped to one; a call for another tenant is `PERMISSION_DENIED`.
//! With no keys configured every call is allowed — only permitted when both
//! listeners are on loopback (see `Config::validate`).

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::session::Tenant;

/// One configured key.
#[derive(Clone, Debug)]
pub struct ApiKey {
    /// A name for logs and audit (never the key itself).
    pub name: String,
    pub secret: String,
    /// `None`: every tenant.
    pub tenant: Option<Tenant>,
}

/// Who made a call, put into the request's extensions by [`ApiKeys`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub tenant: Option<Tenant>,
    /// The caller's address (`-` when the transport does not say), for the
    /// audit trail.
    pub from: String,
    /// The transport the call came in on ("grpc" or "http"), for the audit
    /// trail.
    pub channel: &'static str,
}

impl Caller {
    /// Whether this caller may act on `tenant`.
    pub fn check(&self, tenant: &Tenant) -> Result<(), Status> {
        match &self.tenant {
            Some(t) if t != tenant => {
                crate::audit::auth_failure(
                    self.channel,
                    &self.name,
                    &self.from,
                    &format!("key scoped to tenant {t} used for tenant {tenant}"),
                );
                Err(Status::permission_denied(format!(
                    "API key {:?} is scoped to tenant {t:?}, not {tenant:?}",
                    self.name
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The interceptor checking keys on every call.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<ApiKey>>,
}

impl ApiKeys {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self {
            keys: Arc::new(keys),
        }
    }

    fn find(&self, presented: &str) -> Option<&ApiKey> {
        // Compare every key in full so timing does not reveal a prefix.
        let mut found = None;
        for k in self.keys.iter() {
            if constant_time_eq(k.secret.as_bytes(), presented.as_bytes()) {
                found = Some(k);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for ApiKeys {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.admit(req, "grpc")
    }
}

impl ApiKeys {
    /// Checks the request's key and records the [`Caller`] in its
    /// extensions; `channel` names the transport in the audit trail.
    pub fn admit(
        &self,
        mut req: Request<()>,
        channel: &'static str,
    ) -> Result<Request<()>, Status> {
        let from = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        if self.keys.is_empty() {
            req.extensions_mut().insert(Caller {
                name: "anonymous".into(),
                tenant: None,
                from,
                channel,
            });
            return Ok(req);
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            crate::audit::auth_failure(channel, "-", &from, "no authorization metadata");
            return Err(Status::unauthenticated(
                "missing API key: send metadata `authorization: Bearer <key>`",
            ));
        };
        match self.find(presented.trim()) {
            Some(k) => {
                let caller = Caller {
                    name: k.name.clone(),
                    tenant: k.tenant.clone(),
                    from,
                    channel,
                };
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            None => {
                crate::audit::auth_failure(channel, "-", &from, "unknown API key");
                Err(Status::unauthenticated("unknown API key"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_and_unequal_keys() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
