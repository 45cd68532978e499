//! Redis' own view of a run: the `SLOWLOG` entries written during it and
//! its CPU time (`INFO cpu`), read from the Redis the nodes share (a plain
//! connection, no broker involved).

use redis::Value;

/// The most entries read back (Redis keeps 128 by default).
const MAX_ENTRIES: i64 = 1024;

/// A connection to the Redis the nodes use.
pub struct Slowlog {
    conn: redis::aio::MultiplexedConnection,
    /// The id of the last entry before the run (-1: none).
    since: i64,
}

/// What the slow log recorded during the run.
#[derive(Debug, Default)]
pub struct Slow {
    pub entries: u64,
    pub max_us: u64,
    /// The command of the slowest entry.
    pub worst: String,
    /// Redis' `slowlog-log-slower-than` (µs), if it may be read.
    pub threshold_us: Option<i64>,
}

impl Slowlog {
    /// [`open`](Self::open) when a Redis URL was given (`--redis`); why
    /// not, in a note of the report, when it was not or did not answer.
    pub async fn open_or_note(
        url: Option<&str>,
        report: &mut crate::report::Report,
    ) -> Option<Self> {
        let Some(url) = url else {
            report
                .notes
                .push("SLOWLOG not read: no --redis given".into());
            return None;
        };
        match Self::open(url).await {
            Ok(s) => Some(s),
            Err(e) => {
                report.notes.push(format!("SLOWLOG not read: {e}"));
                None
            }
        }
    }

    /// Reads the entries written since [`open`](Self::open) into `report`:
    /// their count, the slowest (in a note naming `during`), the threshold.
    pub async fn report_into(&mut self, report: &mut crate::report::Report, during: &str) {
        match self.read().await {
            Ok(slow) => {
                report.count("redis_slowlog_entries", slow.entries);
                report
                    .machine
                    .insert("redis_slowlog_max_ms".into(), slow.max_us as f64 / 1e3);
                if let Some(th) = slow.threshold_us {
                    report
                        .machine
                        .insert("redis_slowlog_threshold_ms".into(), th as f64 / 1e3);
                }
                if slow.entries > 0 {
                    report.notes.push(format!(
                        "slowest Redis command during {during}: {} ({} µs)",
                        slow.worst, slow.max_us
                    ));
                }
            }
            Err(e) => report.notes.push(format!("SLOWLOG not read: {e}")),
        }
    }

    /// Connects to `url` and notes where the slow log stands.
    pub async fn open(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url {url:?}: {e}"))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let last = entries(&mut conn, 1).await?;
        let since = last.first().map(|e| e.0).unwrap_or(-1);
        Ok(Slowlog { conn, since })
    }

    /// Redis' CPU time so far (user + system), seconds.
    pub async fn cpu_seconds(&mut self) -> Result<f64, String> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("INFO cpu: {e}"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        match (field("used_cpu_user:"), field("used_cpu_sys:")) {
            (Some(u), Some(s)) => Ok(u + s),
            _ => Err("INFO cpu has no used_cpu_user / used_cpu_sys".into()),
        }
    }

    /// The entries written since [`open`](Self::open).
    pub async fn read(&mut self) -> Result<Slow, String> {
        let mut out = Slow::default();
        for (id, us, cmd) in entries(&mut self.conn, MAX_ENTRIES).await? {
            if id <= self.since {
                continue;
            }
            out.entries += 1;
            if us >= out.max_us {
                out.max_us = us;
                out.worst = cmd;
            }
        }
        let cfg: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("slowlog-log-slower-than")
            .query_async(&mut self.conn)
            .await;
        out.threshold_us = cfg.ok().and_then(|v| v.get(1)?.parse().ok());
        Ok(out)
    }
}

/// `(id, duration µs, command)` of the newest `n` entries.
async fn entries(
    conn: &mut redis::aio::MultiplexedConnection,
    n: i64,
) -> Result<Vec<(i64, u64, String)>, String> {
    let v: Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(n)
        .query_async(conn)
        .await
        .map_err(|e| format!("SLOWLOG GET: {e}"))?;
    let Value::Array(list) = v else {
        return Err(format!("SLOWLOG GET replied {v:?}"));
    };
    Ok(list
        .iter()
        .filter_map(|e| {
            let Value::Array(f) = e else { return None };
            let int = |v: &Value| match v {
                Value::Int(i) => Some(*i),
                _ => None,
            };
            let cmd = match f.get(3)? {
                Value::Array(args) => match args.first()? {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                },
                _ => String::new(),
            };
            Some((int(f.first()?)?, int(f.get(2)?)?.max(0) as u64, cmd))
        })
        .collect())
}
