//! `merge`: the reports of several generators (shards) of one run combined
//! into one — histograms added (never percentiles averaged), counts and
//! errors summed, time series aligned by each shard's start time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::report::{Phase, Report, Timeline};

impl Report {
    /// Reads the JSON reports in `paths` and merges them.
    pub fn merge_files(paths: &[PathBuf]) -> Result<Report, String> {
        let mut reports = Vec::new();
        for p in paths {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("report {}: {e}", p.display()))?;
            let r: Report = serde_json::from_str(&text).map_err(|e| {
                format!(
                    "report {}: not a turnstile-loadtest JSON report: {e}",
                    p.display()
                )
            })?;
            reports.push(r);
        }
        merge(reports)
    }
}

/// One report from several; they must be of the same scenario.
pub fn merge(reports: Vec<Report>) -> Result<Report, String> {
    let Some(first) = reports.first() else {
        return Err("merge: no reports given".into());
    };
    let scenario = first.scenario.clone();
    if let Some(other) = reports.iter().find(|r| r.scenario != scenario) {
        return Err(format!(
            "merge: reports of different scenarios ({scenario} and {})",
            other.scenario
        ));
    }
    let start = reports.iter().map(|r| r.started_unix_ms).min().unwrap_or(0);
    let mut out = Report {
        scenario,
        started_unix_ms: start,
        ..Default::default()
    };
    out.params = first.params.clone();
    out.params.remove("shard");
    let shards: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| r.params.get("shard").cloned().unwrap_or_default())
        .collect();
    out.param("merged_shards", shards);
    let mut timeline: Option<Timeline> = None;
    for r in reports {
        let offset_s = (r.started_unix_ms.saturating_sub(start)) as f64 / 1e3;
        out.wall_seconds = out.wall_seconds.max(offset_s + r.wall_seconds);
        add(&mut out.counts, &r.counts);
        add(&mut out.errors, &r.errors);
        // Throughputs of disjoint slices add up.
        for (k, v) in &r.rates {
            *out.rates.entry(k.clone()).or_default() += v;
        }
        // The shards read the same nodes: their figures are not summed.
        for (k, v) in &r.machine {
            let e = out.machine.entry(k.clone()).or_insert(*v);
            *e = e.max(*v);
        }
        out.violations.extend(r.violations);
        for n in r.notes {
            if !out.notes.contains(&n) {
                out.notes.push(n);
            }
        }
        for (k, h) in &r.histograms {
            out.histograms.entry(k.clone()).or_default().merge(h);
        }
        for ph in r.phases {
            match out.phases.iter_mut().find(|p| p.name == ph.name) {
                Some(p) => merge_phase(p, &ph, offset_s),
                None => {
                    let mut p = Phase {
                        name: ph.name.clone(),
                        from_s: ph.from_s + offset_s,
                        to_s: ph.to_s + offset_s,
                        ..Default::default()
                    };
                    merge_phase(&mut p, &ph, offset_s);
                    out.phases.push(p);
                }
            }
        }
        if let Some(tl) = r.timeline {
            let into = timeline.get_or_insert_with(|| Timeline {
                every_s: tl.every_s,
                buckets: Vec::new(),
            });
            for b in tl.buckets {
                let at = b.at_s + offset_s + into.every_s / 2.0;
                let m = into.bucket(at);
                m.ops.merge(&b.ops);
                m.errors += b.errors;
                m.sessions += b.sessions;
                m.broker_rss_kib = max_opt(m.broker_rss_kib, b.broker_rss_kib);
                m.broker_cpu_cores = max_opt(m.broker_cpu_cores, b.broker_cpu_cores);
            }
        }
    }
    out.latencies = out
        .histograms
        .iter()
        .map(|(k, h)| (k.clone(), h.summary()))
        .collect();
    for p in &mut out.phases {
        p.summarise();
    }
    if let Some(tl) = timeline.as_mut() {
        tl.summarise();
    }
    out.timeline = timeline;
    out.notes.push(
        "merged: histograms added, counts, errors and rates summed; node figures \
         (RSS, CPU) are the largest any shard read, as every shard reads the same nodes"
            .into(),
    );
    Ok(out)
}

fn merge_phase(into: &mut Phase, ph: &Phase, offset_s: f64) {
    into.from_s = into.from_s.min(ph.from_s + offset_s);
    into.to_s = into.to_s.max(ph.to_s + offset_s);
    add(&mut into.counts, &ph.counts);
    add(&mut into.errors, &ph.errors);
    for (k, h) in &ph.histograms {
        into.histograms.entry(k.clone()).or_default().merge(h);
    }
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::Latency;

    fn shard(name: &str, from_us: u64, start_ms: u64) -> Report {
        let mut r = Report::new("claim");
        r.started_unix_ms = start_ms;
        r.param("shard", name);
        let mut l = Latency::default();
        for us in from_us..from_us + 500 {
            l.record(Duration::from_micros(us));
        }
        r.latency("claim", &l);
        r.count("granted", 500);
        r.rates.insert("claims".into(), 100.0);
        r.machine.insert("broker_rss_kib".into(), 10.0);
        let mut tl = Timeline {
            every_s: 1.0,
            buckets: Vec::new(),
        };
        tl.bucket(0.5).ops.merge(&l);
        tl.bucket(0.5).sessions = 5;
        r.timeline = Some(tl);
        r
    }

    #[test]
    fn merges_histograms_not_percentiles() {
        let a = shard("0/2", 1, 1_000);
        let b = shard("1/2", 501, 2_000);
        // Through JSON, as the files are.
        let a: Report = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let b: Report = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let m = merge(vec![a, b]).unwrap();
        let p = &m.latencies["claim"];
        assert_eq!(p.count, 1000);
        // The median of 1..=1000 µs, not the mean of the two medians.
        assert!((495..=505).contains(&p.p50_us), "{p:?}");
        assert_eq!(m.counts["granted"], 1000);
        assert_eq!(m.rates["claims"], 200.0);
        assert_eq!(m.machine["broker_rss_kib"], 10.0);
        let tl = m.timeline.as_ref().unwrap();
        // Shard b started a second later: its bucket is the second one.
        assert_eq!(tl.buckets.len(), 2);
        assert_eq!(tl.buckets[0].count, 500);
        assert_eq!(tl.buckets[1].sessions, 5);
        assert!(m.timeline_svg().unwrap().contains("<polyline"));
        assert!(m.table().contains("over time"));
        let mut other = Report::new("storm");
        other.started_unix_ms = 1;
        assert!(merge(vec![m, other])
            .unwrap_err()
            .contains("different scenarios"));
    }
}
