//! Logging (tracing) and metrics (Prometheus) set-up, each installed once
//! per process so a test binary can start many nodes.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::metrics_names as m;

/// Installs the tracing subscriber (human or JSON, `RUST_LOG` filter,
/// default `info`). Later calls do nothing.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
