//! What a run measured: latency histograms (HDR, microseconds), counts,
//! errors by kind, and the machine figures — overall, per phase and over
//! time; printed as a table, written as JSON (the histograms serialised, so
//! reports of several generators merge exactly, see [`merge`](crate::merge))
//! and drawn as SVG plots (by percentile, and over time).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer as HdrDe, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A latency histogram in microseconds (1 µs .. 60 s, 3 significant digits).
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.0.record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// The value at quantile `q` (0..1), µs.
    pub fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// HdrHistogram's V2 compressed encoding in base64 (the form other HDR
    /// tools read, e.g. `HdrHistogram.decodeFromCompressedBase64`).
    pub fn to_base64(&self) -> String {
        let mut buf = Vec::new();
        // Writing to a Vec cannot fail short of memory.
        let _ = V2DeflateSerializer::new().serialize(&self.0, &mut buf);
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    /// The inverse of [`to_base64`](Self::to_base64).
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("histogram: not base64: {e}"))?;
        let h: Histogram<u64> = HdrDe::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| format!("histogram: not an HDR V2 encoding: {e:?}"))?;
        let mut out = Latency::default();
        out.0
            .add(&h)
            .map_err(|e| format!("histogram: values out of range: {e:?}"))?;
        Ok(out)
    }

    /// (percentile, µs) points for the plot.
    fn curve(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::new();
        for i in 0..=60 {
            // 0 .. 99.9999 on a log scale of "nines".
            let nines = i as f64 / 10.0;
            let q = 1.0 - 10f64.powf(-nines);
            out.push((q * 100.0, self.0.value_at_quantile(q)));
        }
        out
    }
}

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Latency::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One phase of a run (`shift`: ramp_in, steady, ramp_out): what was
/// measured while it lasted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// Seconds from the run's start.
    pub from_s: f64,
    pub to_s: f64,
    pub latencies: BTreeMap<String, Percentiles>,
    pub counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// The HDR histograms behind `latencies` (V2 compressed, base64).
    pub histograms: BTreeMap<String, Latency>,
}

impl Phase {
    /// `latencies` from `histograms`.
    pub fn summarise(&mut self) {
        self.latencies = self
            .histograms
            .iter()
            .map(|(k, h)| (k.clone(), h.summary()))
            .collect();
    }
}

/// One bucket of the time series.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Seconds from the run's start to the bucket's start.
    pub at_s: f64,
    /// Every operation that started in the bucket (all kinds).
    pub ops: Latency,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Errors in the bucket.
    pub errors: u64,
    /// Connected agent sockets at the bucket's end.
    pub sessions: u64,
    /// The nodes' resident memory (summed over nodes), when read.
    pub broker_rss_kib: Option<f64>,
    /// The nodes' CPU in cores (summed over nodes), averaged over the last
    /// 10 s: `process_cpu_seconds_total` may count whole seconds.
    pub broker_cpu_cores: Option<f64>,
}

/// The time series of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timeline {
    /// Bucket width, seconds.
    pub every_s: f64,
    pub buckets: Vec<Bucket>,
}

impl Timeline {
    /// The bucket `at` seconds into the run (grown as needed).
    pub fn bucket(&mut self, at_s: f64) -> &mut Bucket {
        let every = self.every_s.max(1e-3);
        let i = (at_s.max(0.0) / every) as usize;
        while self.buckets.len() <= i {
            let at_s = self.buckets.len() as f64 * every;
            self.buckets.push(Bucket {
                at_s,
                ..Default::default()
            });
        }
        &mut self.buckets[i]
    }

    /// The percentile columns from each bucket's histogram.
    pub fn summarise(&mut self) {
        for b in &mut self.buckets {
            b.count = b.ops.count();
            b.p50_us = b.ops.quantile(0.5);
            b.p99_us = b.ops.quantile(0.99);
            b.p999_us = b.ops.quantile(0.999);
        }
    }
}

/// The whole report of one run.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub scenario: String,
    /// When the run started (Unix ms); [`merge`](crate::merge) aligns the
    /// shards' time series by it.
    pub started_unix_ms: u64,
    /// Scenario parameters, as given.
    pub params: BTreeMap<String, serde_json::Value>,
    pub wall_seconds: f64,
    pub counts: BTreeMap<String, u64>,
    /// Rates (per second) computed by the scenario.
    pub rates: BTreeMap<String, f64>,
    pub latencies: BTreeMap<String, Percentiles>,
    /// Errors by kind. Kinds starting with `local_` are limits of the load
    /// generator's machine (file descriptors, ports), not broker errors.
    pub errors: BTreeMap<String, u64>,
    /// Broker and generator figures (RSS, CPU).
    pub machine: BTreeMap<String, f64>,
    /// Broken invariants seen from the client side; non-empty → exit 1.
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    /// The HDR histograms behind `latencies` (V2 compressed, base64).
    pub histograms: BTreeMap<String, Latency>,
    /// Per phase, in order (`shift`; empty for the other scenarios).
    pub phases: Vec<Phase>,
    /// Over time (`shift`).
    pub timeline: Option<Timeline>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            scenario: scenario.into(),
            started_unix_ms: now.as_millis() as u64,
            ..Default::default()
        }
    }

    pub fn param(&mut self, k: &str, v: impl Serialize) {
        self.params
            .insert(k.into(), serde_json::to_value(v).unwrap_or_default());
    }

    pub fn count(&mut self, k: &str, n: u64) {
        *self.counts.entry(k.into()).or_default() += n;
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    pub fn latency(&mut self, k: &str, h: &Latency) {
        self.histograms.entry(k.into()).or_default().merge(h);
        if let Some(h) = self.histograms.get(k) {
            self.latencies.insert(k.into(), h.summary());
        }
    }

    pub fn broker_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| !k.starts_with("local_"))
            .map(|(_, v)| v)
            .sum()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!("scenario {}  ({:.2} s)\n", self.scenario, self.wall_seconds);
        for (k, v) in &self.params {
            s += &format!("  {k:<24} {v}\n");
        }
        s += &latency_table("latency (µs)", &self.latencies);
        for ph in &self.phases {
            s += &format!(
                "\n  phase {} ({:.0}–{:.0} s)\n",
                ph.name, ph.from_s, ph.to_s
            );
            s += &latency_table("latency (µs)", &ph.latencies).replace("\n  ", "\n    ");
            let counts: Vec<String> = ph.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if !counts.is_empty() {
                s += &format!("    counts: {}\n", counts.join(", "));
            }
            let errors: Vec<String> = ph.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if !errors.is_empty() {
                s += &format!("    errors: {}\n", errors.join(", "));
            }
        }
        if let Some(tl) = &self.timeline {
            s += &timeline_table(tl);
        }
        let mut kv = |title: &str, m: &BTreeMap<String, f64>| {
            if !m.is_empty() {
                s += &format!("\n  {title}\n");
                for (k, v) in m {
                    s += &format!("    {k:<30} {v:.2}\n");
                }
            }
        };
        kv("rates (/s)", &self.rates);
        kv("machine", &self.machine);
        if !self.counts.is_empty() {
            s += "\n  counts\n";
            for (k, v) in &self.counts {
                s += &format!("    {k:<30} {v}\n");
            }
        }
        if !self.errors.is_empty() {
            s += "\n  errors\n";
            for (k, v) in &self.errors {
                s += &format!("    {k:<30} {v}\n");
            }
        }
        for n in &self.notes {
            s += &format!("\n  note: {n}\n");
        }
        if self.violations.is_empty() {
            s += "\n  invariants: ok\n";
        } else {
            s += &format!("\n  INVARIANTS BROKEN ({}):\n", self.violations.len());
            for v in self.violations.iter().take(20) {
                s += &format!("    {v}\n");
            }
        }
        s
    }

    /// The time-series plot, when the run has a timeline.
    pub fn timeline_svg(&self) -> Option<String> {
        self.timeline
            .as_ref()
            .filter(|t| !t.buckets.is_empty())
            .map(|t| crate::timeline_svg::draw(&self.scenario, t))
    }

    /// A percentile plot (log-scaled "nines" on x, µs on a log y axis).
    pub fn svg(&self) -> String {
        let (w, h, left, bottom) = (800.0, 480.0, 70.0, 50.0);
        let plot_w = w - left - 20.0;
        let plot_h = h - bottom - 30.0;
        let max_us = self
            .histograms
            .values()
            .map(|l| l.0.max())
            .max()
            .unwrap_or(1)
            .max(10) as f64;
        let y_max = max_us.log10().ceil();
        let x = |nines: f64| left + plot_w * nines / 6.0;
        let y = |us: f64| 30.0 + plot_h * (1.0 - us.max(1.0).log10() / y_max);
        let colors = [
            "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
        ];
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="18" font-size="14">turnstile-loadtest {}: latency by percentile</text>
"#,
            self.scenario
        );
        for (label, nines) in [
            ("50", 0.301),
            ("90", 1.0),
            ("99", 2.0),
            ("99.9", 3.0),
            ("99.99", 4.0),
            ("99.999", 5.0),
        ] {
            s += &format!(
                r##"<line x1="{0}" y1="30" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{label}%</text>
"##,
                x(nines),
                30.0 + plot_h,
                30.0 + plot_h + 18.0
            );
        }
        for e in 0..=(y_max as i32) {
            let us = 10f64.powi(e);
            let label = if us >= 1000.0 {
                format!("{} ms", us / 1000.0)
            } else {
                format!("{us} µs")
            };
            s += &format!(
                r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{label}</text>
"##,
                y(us),
                left + plot_w,
                left - 6.0,
                y(us) + 4.0
            );
        }
        for (i, (name, lat)) in self.histograms.iter().enumerate() {
            let color = colors[i % colors.len()];
            let points: Vec<String> = lat
                .curve()
                .into_iter()
                .map(|(pct, us)| {
                    let nines = -(1.0 - pct / 100.0).max(1e-6).log10();
                    format!("{:.1},{:.1}", x(nines), y(us as f64))
                })
                .collect();
            s += &format!(
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>
<text x="{}" y="{}" fill="{color}">{name}</text>
"#,
                points.join(" "),
                left + 10.0,
                45.0 + 16.0 * i as f64
            );
        }
        s += "</svg>\n";
        s
    }
}

/// Rows of `latencies`, under a header.
fn latency_table(title: &str, latencies: &BTreeMap<String, Percentiles>) -> String {
    let mut s = String::new();
    if latencies.is_empty() {
        return s;
    }
    s += &format!(
        "\n  {:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        title, "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (k, p) in latencies {
        s += &format!(
            "  {:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            k, p.count, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
        );
    }
    s
}

/// The time series, at most ~20 rows (buckets grouped evenly).
fn timeline_table(tl: &Timeline) -> String {
    let mut s = format!(
        "\n  over time    {:>8} {:>9} {:>9} {:>7} {:>9} {:>11} {:>9}\n",
        "ops", "p50 µs", "p99 µs", "errors", "sessions", "broker MiB", "cores"
    );
    let per = tl.buckets.len().div_ceil(20).max(1);
    for group in tl.buckets.chunks(per) {
        let mut ops = Latency::default();
        for b in group {
            ops.merge(&b.ops);
        }
        let last = &group[group.len() - 1];
        let errors: u64 = group.iter().map(|b| b.errors).sum();
        let rss = last
            .broker_rss_kib
            .map(|k| format!("{:.0}", k / 1024.0))
            .unwrap_or("-".into());
        let cpus: Vec<f64> = group.iter().filter_map(|b| b.broker_cpu_cores).collect();
        let cores = if cpus.is_empty() {
            "-".into()
        } else {
            format!("{:.2}", cpus.iter().sum::<f64>() / cpus.len() as f64)
        };
        s += &format!(
            "  {:>9.1} s  {:>8} {:>9} {:>9} {:>7} {:>9} {:>11} {:>9}\n",
            group[0].at_s,
            ops.count(),
            ops.quantile(0.5),
            ops.quantile(0.99),
            errors,
            last.sessions,
            rss,
            cores
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_outputs() {
        let mut l = Latency::default();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let p = l.summary();
        assert_eq!(p.count, 1000);
        assert!((495..=505).contains(&p.p50_us), "{p:?}");
        assert!(p.max_us >= 999);
        let mut r = Report::new("claim");
        r.latency("claim", &l);
        r.error("local_emfile");
        r.error("grpc_unavailable");
        assert_eq!(r.broker_errors(), 1);
        assert!(r.table().contains("claim"));
        assert!(r.svg().starts_with("<svg"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latencies"]["claim"]["count"], 1000);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(
            back.histograms["claim"].summary(),
            p,
            "the histogram round-trips"
        );
        assert!(Latency::from_base64("bm90IGEgaGlzdG9ncmFt").is_err());
    }
}
