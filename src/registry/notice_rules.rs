//! The bounds every notice is held to, the same on both registries: when it
//! may expire, how many bytes it may carry, and how a queue (a session's,
//! or a login's mailbox) stays within its count and byte caps.

use super::{RegistryConfig, RegistryError};
use crate::session::Notice;

/// The bytes a notice counts against its caps: its text and its data.
pub fn size(n: &Notice) -> usize {
    n.text.len() + n.data_json.len()
}

/// Checks a notice against the bounds and fills in the default expiry.
/// `None`: it has already expired, and is neither stored nor delivered.
pub fn admit(
    mut notice: Notice,
    cfg: &RegistryConfig,
    now: i64,
) -> Result<Option<Notice>, RegistryError> {
    let bytes = size(&notice);
    if bytes > cfg.max_notice_bytes {
        let field = if notice.text.len() > cfg.max_notice_bytes {
            "notice.text"
        } else {
            "notice.data_json"
        };
        return Err(RegistryError::InvalidNotice {
            field,
            problem: format!(
                "text and data_json together are {bytes} bytes, the limit is {} (max_notice_bytes)",
                cfg.max_notice_bytes
            ),
        });
    }
    let latest = now.saturating_add(cfg.max_notice_ttl.as_millis() as i64);
    if notice.expires_at_ms > latest {
        return Err(RegistryError::InvalidNotice {
            field: "notice.expires_at_ms",
            problem: format!(
                "{} is more than {} days ahead, the most allowed (max_notice_ttl); 0 means the default lifetime",
                notice.expires_at_ms,
                cfg.max_notice_ttl.as_secs() / 86_400
            ),
        });
    }
    if notice.expires_at_ms == 0 {
        notice.expires_at_ms = now.saturating_add(cfg.default_notice_ttl.as_millis() as i64);
    }
    Ok((notice.expires_at_ms > now).then_some(notice))
}

/// Adds or replaces (same id) a notice; drops expired ones and then the
/// oldest while the queue holds more than `max_notices_per_session`
/// notices or `max_mailbox_bytes` bytes. The new notice always fits: it
/// is at most `max_notice_bytes`, which is at most the mailbox's.
pub fn push<N: AsRef<Notice>>(queue: &mut Vec<N>, notice: N, cfg: &RegistryConfig, now: i64) {
    let id = &notice.as_ref().id;
    queue.retain(|n| &n.as_ref().id != id && n.as_ref().expires_at_ms > now);
    queue.push(notice);
    let mut bytes: usize = queue.iter().map(|n| size(n.as_ref())).sum();
    let mut excess = 0;
    while queue.len() - excess > cfg.max_notices_per_session || bytes > cfg.max_mailbox_bytes {
        if excess + 1 >= queue.len() {
            break;
        }
        bytes -= size(queue[excess].as_ref());
        excess += 1;
    }
    queue.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn n(id: &str, bytes: usize, exp: i64) -> Arc<Notice> {
        Arc::new(Notice {
            id: id.into(),
            kind: "k".into(),
            severity: "info".into(),
            text: "x".repeat(bytes),
            data_json: String::new(),
            expires_at_ms: exp,
        })
    }

    fn cfg() -> RegistryConfig {
        RegistryConfig {
            max_notices_per_session: 3,
            max_notice_bytes: 10,
            max_mailbox_bytes: 25,
            max_notice_ttl: Duration::from_secs(86_400),
            ..RegistryConfig::default()
        }
    }

    #[test]
    fn a_queue_keeps_within_its_count_and_byte_caps_dropping_the_oldest() {
        let cfg = cfg();
        let mut q = Vec::new();
        for (i, bytes) in [10, 10, 4, 10].into_iter().enumerate() {
            push(&mut q, n(&format!("n{i}"), bytes, 100), &cfg, 0);
        }
        let ids: Vec<_> = q.iter().map(|n| n.id.as_str()).collect();
        // 10 + 4 + 10 = 24 bytes; n0 went for the bytes (34 > 25).
        assert_eq!(ids, ["n1", "n2", "n3"]);
        push(&mut q, n("n2", 1, 100), &cfg, 0);
        let ids: Vec<_> = q.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n3", "n2"], "same id replaces, at the end");
        push(&mut q, n("n9", 1, 100), &cfg, 50);
        assert_eq!(q.len(), 3, "count cap");
        push(&mut q, n("late", 1, 200), &cfg, 150);
        assert_eq!(q.len(), 1, "expired ones go first");
    }

    #[test]
    fn expiry_and_size_are_checked_naming_the_field() {
        let cfg = cfg();
        let far = Notice {
            expires_at_ms: 1 << 62,
            ..(*n("a", 1, 0)).clone()
        };
        match admit(far, &cfg, 1_000) {
            Err(RegistryError::InvalidNotice { field, .. }) => {
                assert_eq!(field, "notice.expires_at_ms")
            }
            other => panic!("{other:?}"),
        }
        let big = (*n("a", 11, 0)).clone();
        assert!(matches!(
            admit(big, &cfg, 0),
            Err(RegistryError::InvalidNotice {
                field: "notice.text",
                ..
            })
        ));
        let dflt = admit((*n("a", 1, 0)).clone(), &cfg, 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(dflt.expires_at_ms, 1_000 + 86_400_000);
        assert!(admit((*n("a", 1, 999)).clone(), &cfg, 1_000)
            .unwrap()
            .is_none());
    }
}
