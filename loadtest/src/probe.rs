//! Where `idle` reads the broker's memory and CPU: /proc when one local
//! broker process is known, otherwise every node's `/metrics`
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, summed
//! over the nodes), so a remote broker or a local cluster is measured too —
//! over TLS when the nodes' HTTP listener speaks it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnstile_client::{Stream, Tls};

use crate::sys;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest `/metrics` body read.
const MAX_BODY: u64 = 8 << 20;

/// A source of the broker's figures.
#[derive(Clone, Debug)]
pub enum Probe {
    /// One local process, read from /proc.
    Local(u32),
    /// The nodes' HTTP listeners, read from `/metrics` (`https://` with
    /// `tls`).
    Metrics {
        nodes: Vec<SocketAddr>,
        tls: Option<Tls>,
    },
}

/// The broker's resident memory and CPU time at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub rss_kib: u64,
    pub cpu: Duration,
}

impl Probe {
    /// `pid` when given; else the one local `turnstile serve` when a single
    /// node is targeted; else the nodes' metrics.
    pub fn choose(pid: Option<u32>, nodes: &[SocketAddr], tls: Option<Tls>) -> Probe {
        match pid.or_else(|| (nodes.len() == 1).then(sys::find_broker).flatten()) {
            Some(pid) => Probe::Local(pid),
            None => Probe::Metrics {
                nodes: nodes.to_vec(),
                tls,
            },
        }
    }

    /// Says where the figures come from, for the report.
    pub fn describe(&self) -> String {
        match self {
            Probe::Local(pid) => format!("broker memory and CPU from /proc/{pid}"),
            Probe::Metrics { nodes, .. } => format!(
                "broker memory and CPU from the /metrics of {} node(s) \
                 (process_resident_memory_bytes, process_cpu_seconds_total)",
                nodes.len()
            ),
        }
    }

    /// The figures now, or why they could not be read.
    pub async fn sample(&self) -> Result<Sample, String> {
        match self {
            Probe::Local(pid) => {
                let rss_kib = sys::rss_kib(*pid).ok_or(format!("no /proc/{pid}/status"))?;
                let cpu = sys::cpu_time(&pid.to_string()).ok_or(format!("no /proc/{pid}/stat"))?;
                Ok(Sample { rss_kib, cpu })
            }
            Probe::Metrics { nodes, tls } => {
                let mut total = Sample {
                    rss_kib: 0,
                    cpu: Duration::ZERO,
                };
                for node in nodes {
                    let body = scrape(*node, tls.as_ref()).await?;
                    let rss = metric(&body, "process_resident_memory_bytes").ok_or(format!(
                        "{node}/metrics has no process_resident_memory_bytes"
                    ))?;
                    let cpu = metric(&body, "process_cpu_seconds_total")
                        .ok_or(format!("{node}/metrics has no process_cpu_seconds_total"))?;
                    total.rss_kib += (rss / 1024.0) as u64;
                    total.cpu += Duration::from_secs_f64(cpu.max(0.0));
                }
                Ok(total)
            }
        }
    }
}

/// The value of an unlabelled sample `name` in a Prometheus text body (or
/// of one labelled sample, `name` spelt with its labels).
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// `GET /metrics` over HTTP/1.1 (over TLS with `tls`), bounded in time
/// and size.
pub async fn scrape(node: SocketAddr, tls: Option<&Tls>) -> Result<String, String> {
    let get = async {
        let tcp = TcpStream::connect(node).await?;
        let mut s = match tls {
            Some(tls) => tls
                .handshake(tcp)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            None => Stream::Plain(tcp),
        };
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(MAX_BODY).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(SCRAPE_TIMEOUT, get)
        .await
        .map_err(|_| format!("{node}/metrics did not answer within {SCRAPE_TIMEOUT:?}"))?
        .map_err(|e| format!("{node}/metrics: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("{node}/metrics: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("{node}/metrics answered {status:?}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_samples_and_not_their_longer_namesakes() {
        let body = "# TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_extra 9\n\
                    process_cpu_seconds_total 1.5\n\
                    process_resident_memory_bytes 2048\n";
        assert_eq!(metric(body, "process_cpu_seconds_total"), Some(1.5));
        assert_eq!(metric(body, "process_resident_memory_bytes"), Some(2048.0));
        assert_eq!(metric(body, "process_open_fds"), None);
    }
}
