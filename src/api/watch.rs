//! One WatchPresence stream: the tenant's presence events from the event
//! log after the caller's `after_sequence`, then live, numbered, with no
//! gap and no duplicate at the seam.
//!
//! The hub's watcher is registered before the log is read, so an event is
//! either in what the log returns or arrives live afterwards (or both: the
//! live copy is skipped by its sequence number). A live event whose
//! sequence jumps, or a gap the hub reports (bus overflow, lost
//! subscription, unconfirmed lease), makes the stream read the log again
//! from the last sequence it sent; only what the log no longer holds (or a
//! log that cannot be read) reaches the caller, as a `gap` item.

use std::sync::Arc;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert;
use crate::hub::{PresenceWatch, Watched};
use crate::metrics_names as m;
use crate::pb;
use crate::registry::Registry;
use crate::session::{PresenceEvent, Tenant};

/// Events read from the log per call.
const PAGE: usize = 256;

type Tx = Sender<Result<pb::WatchPresenceResponse, Status>>;

/// What one stream needs.
pub(super) struct Feed {
    pub registry: Arc<dyn Registry>,
    pub watch: PresenceWatch,
    pub tenant: Tenant,
    pub tx: Tx,
    pub stop: CancellationToken,
}

/// Why a stream stopped early.
enum Stop {
    /// The caller went away.
    Gone,
    /// The log could not be read: the caller is told and the stream ends.
    Failed,
}

impl Feed {
    /// Runs the stream until the caller leaves, the node stops, or the
    /// watcher falls behind.
    pub(super) async fn run(mut self, after_sequence: Option<u64>) {
        // The sequence of the last event sent (`None`: live-only and no
        // event yet, so nothing to resume from).
        let mut last = None;
        if let Some(after) = after_sequence {
            match self.catch_up(after).await {
                Ok(l) => last = Some(l),
                Err(_) => return,
            }
        }
        loop {
            let item = tokio::select! {
                _ = self.tx.closed() => return,
                _ = self.stop.cancelled() => {
                    let _ = self.tx.send(Err(Status::unavailable("node is shutting down; watch another node"))).await;
                    return;
                }
                item = self.watch.recv() => item,
            };
            let result = match item {
                None => break,
                Some(Watched::Event(event)) => self.live(event, &mut last).await,
                Some(Watched::Gap(_)) => {
                    let from = match last {
                        Some(l) => Ok(l),
                        None => self.head().await,
                    };
                    match from {
                        Ok(from) => self.catch_up(from).await.map(|l| last = Some(l)),
                        Err(e) => Err(e),
                    }
                }
            };
            if result.is_err() {
                return;
            }
        }
        if self.watch.lagged() {
            metrics::counter!(m::PRESENCE_LAGGED).increment(1);
            let _ = self
                .tx
                .send(Err(Status::resource_exhausted(
                    "presence watcher fell behind; watch again with after_sequence = the last sequence received",
                )))
                .await;
        }
    }

    /// Sends a live event unless the log already gave it; reads the log
    /// first when events before it are missing.
    async fn live(&self, event: Arc<PresenceEvent>, last: &mut Option<u64>) -> Result<(), Stop> {
        if let Some(l) = *last {
            if event.seq <= l {
                return Ok(()); // replayed already
            }
            if event.seq > l + 1 {
                // Events between were lost on the way: the log has them.
                *last = Some(self.catch_up(l).await?);
                if last.is_some_and(|l| event.seq <= l) {
                    return Ok(());
                }
            }
        }
        self.send_event(&event).await?;
        *last = Some(event.seq);
        Ok(())
    }

    /// Sends the log's events after `after`, up to its head; a `gap` item
    /// first if the log no longer holds them all. Returns the last sequence
    /// sent (or skipped over).
    async fn catch_up(&self, mut after: u64) -> Result<u64, Stop> {
        let mut first = true;
        loop {
            let replay = match self.registry.replay(&self.tenant, after, PAGE).await {
                Ok(r) => r,
                Err(e) => {
                    self.send_gap(pb::PresenceGapReason::EventsLost, after)
                        .await?;
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable(format!(
                            "could not read the event log: {e}; watch again with after_sequence = {after}"
                        ))))
                        .await;
                    return Err(Stop::Failed);
                }
            };
            if first {
                let outcome = if replay.trimmed {
                    "trimmed"
                } else {
                    "caught_up"
                };
                metrics::counter!(m::PRESENCE_REPLAYS, "outcome" => outcome).increment(1);
            }
            if replay.trimmed && first {
                let resume = replay
                    .events
                    .first()
                    .map_or(replay.head, |e| e.seq.saturating_sub(1));
                self.send_gap(pb::PresenceGapReason::LogTrimmed, resume)
                    .await?;
                after = resume;
            }
            first = false;
            let full = replay.events.len() >= PAGE;
            for event in &replay.events {
                if event.seq > after {
                    self.send_event(event).await?;
                    after = event.seq;
                }
            }
            if !full {
                return Ok(after);
            }
        }
    }

    /// The tenant's newest sequence number.
    async fn head(&self) -> Result<u64, Stop> {
        match self.registry.replay(&self.tenant, u64::MAX, 0).await {
            Ok(r) => {
                // Nothing sent yet, so the caller re-reads from here.
                self.send_gap(pb::PresenceGapReason::EventsLost, r.head)
                    .await?;
                Ok(r.head)
            }
            Err(e) => {
                let _ = self
                    .tx
                    .send(Err(Status::unavailable(format!(
                        "presence events may have been lost and the event log could not be read: {e}"
                    ))))
                    .await;
                Err(Stop::Failed)
            }
        }
    }

    async fn send_event(&self, event: &PresenceEvent) -> Result<(), Stop> {
        self.send(pb::WatchPresenceResponse {
            event: Some(convert::presence(event)),
            gap: None,
        })
        .await
    }

    async fn send_gap(&self, reason: pb::PresenceGapReason, resume: u64) -> Result<(), Stop> {
        self.send(pb::WatchPresenceResponse {
            event: None,
            gap: Some(pb::PresenceGap {
                reason: reason as i32,
                resume_after_sequence: resume,
            }),
        })
        .await
    }

    async fn send(&self, item: pb::WatchPresenceResponse) -> Result<(), Stop> {
        self.tx.send(Ok(item)).await.map_err(|_| Stop::Gone)
    }
}
