//! What an agent keeps between sockets: commands that wait for the next
//! welcome, and the notices already shown (the broker re-delivers un-acked
//! ones on every connect). Both are bounded.

use std::collections::VecDeque;

use serde_json::Value;

/// Notice ids remembered for de-duplication (the broker keeps 32).
const REMEMBERED_NOTICES: usize = 256;
/// Acks kept while disconnected; the oldest is dropped beyond this (the
/// broker then re-delivers that notice, which is harmless).
const PENDING_ACKS: usize = 256;

/// What the application asked for while no socket could carry it; sent
/// after the next welcome.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) status: Option<String>,
    pub(crate) acks: VecDeque<String>,
    /// Watch presence on every socket.
    pub(crate) watching: bool,
    /// The current socket has not been told to watch yet.
    pub(crate) watch_unsent: bool,
}

impl Pending {
    /// Queues an ack once; beyond the bound the oldest is dropped.
    pub(crate) fn ack(&mut self, id: String) {
        if !self.acks.contains(&id) {
            self.acks.push_back(id);
            if self.acks.len() > PENDING_ACKS {
                self.acks.pop_front();
            }
        }
    }
}

/// Notices already shown, by id, with their content.
#[derive(Default)]
pub(crate) struct Seen(VecDeque<(String, String)>);

impl Seen {
    /// True for a notice not shown before, or shown with other content.
    pub(crate) fn fresh(&mut self, notice: &Value) -> bool {
        let Some(id) = notice["id"].as_str() else {
            return true;
        };
        let content = notice.to_string();
        if self.0.iter().any(|(i, c)| i == id && *c == content) {
            return false;
        }
        self.0.retain(|(i, _)| i != id);
        self.0.push_back((id.to_string(), content));
        if self.0.len() > REMEMBERED_NOTICES {
            self.0.pop_front();
        }
        true
    }
}
