//! Logging (tracing) and metrics (Prometheus) set-up, each installed once
//! per process so a test binary can start many nodes.

mod log_queue;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::metrics_names as m;

pub use log_queue::LOG_QUEUE_BYTES;

/// Lines dropped because the log queue was full: the sink (stderr) stopped
/// reading or fell behind. Set once by [`init_logging`].
static DROPPED: OnceLock<log_queue::Dropped> = OnceLock::new();

/// Keeps the log writer thread running; dropping it flushes what is queued
/// (for at most a second, so a stuck sink cannot hold up the exit).
pub struct LogGuard(#[allow(dead_code)] Option<log_queue::Flusher>);

/// Installs the tracing subscriber (human or JSON, `RUST_LOG` filter,
/// default `info`). Later calls do nothing.
///
/// Lines go to stderr through a bounded queue ([`LOG_QUEUE_BYTES`]) and a
/// dedicated thread, never from a runtime worker: when stderr blocks (a
/// pipe nobody reads, a log driver that fell behind) lines are dropped and
/// counted in `turnstile_log_lines_dropped_total` instead of stalling
/// claims and heartbeats. Keep the returned guard alive for the life of the
/// process.
pub fn init_logging(format: LogFormat) -> LogGuard {
    if DROPPED.get().is_some() {
        return LogGuard(None);
    }
    let Ok((writer, dropped, flusher)) = log_queue::start(std::io::stderr(), LOG_QUEUE_BYTES)
    else {
        // No thread for the writer: log nothing rather than block workers.
        return LogGuard(None);
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_err() {
        return LogGuard(None);
    }
    let _ = DROPPED.set(dropped);
    LogGuard(Some(flusher))
}

/// Publishes how many log lines were dropped so far; called for every scrape.
pub fn collect_log_metrics() {
    if let Some(dropped) = DROPPED.get() {
        metrics::counter!(m::LOG_LINES_DROPPED).absolute(dropped.lines());
    }
}

/// Refreshes the standard process metrics (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`, …) from /proc; called
/// for every scrape, so a load test can read a remote broker's memory and
/// CPU from `/metrics`.
pub fn collect_process_metrics() {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR
        .get_or_init(|| {
            let c = metrics_process::Collector::default();
            c.describe();
            c
        })
        .collect();
}

/// The process-wide Prometheus recorder, installed on first use. `None` if
/// another recorder was installed first.
pub fn metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(m::CLAIM_SECONDS.to_string()),
                    &[
                        0.000_05, 0.000_1, 0.000_15, 0.000_25, 0.000_4, 0.000_5, 0.001, 0.002,
                        0.005, 0.01, 0.05, 0.25, 1.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
