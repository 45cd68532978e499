//! The time-series plot of a run, drawn by hand like the percentile plot:
//! latency (p50, p99, p99.9 of every operation, log scale) over time above,
//! connected sessions and the nodes' memory below, errors as red ticks.

use crate::report::Timeline;

const W: f64 = 800.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 30.0;
const LAT_H: f64 = 250.0;
const GAP: f64 = 40.0;
const SES_H: f64 = 150.0;

/// The SVG document.
pub fn draw(scenario: &str, tl: &Timeline) -> String {
    let plot_w = W - LEFT - RIGHT;
    let h = TOP + LAT_H + GAP + SES_H + 40.0;
    let span = (tl.buckets.len() as f64 * tl.every_s).max(1e-3);
    let x = |t: f64| LEFT + plot_w * t / span;
    let max_us = tl
        .buckets
        .iter()
        .map(|b| b.p999_us)
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let y_decades = max_us.log10().ceil();
    let y_lat = |us: f64| TOP + LAT_H * (1.0 - us.max(1.0).log10() / y_decades);
    let ses_top = TOP + LAT_H + GAP;
    let max_ses = tl
        .buckets
        .iter()
        .map(|b| b.sessions)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let y_ses = |n: f64| ses_top + SES_H * (1.0 - n / max_ses);
    let max_rss = tl
        .buckets
        .iter()
        .filter_map(|b| b.broker_rss_kib)
        .fold(0.0, f64::max);
    let y_rss = |k: f64| ses_top + SES_H * (1.0 - k / max_rss.max(1.0));

    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="18" font-size="14">turnstile-loadtest {scenario}: latency and sessions over time</text>
"#
    );
    // Latency grid: one line per decade.
    for e in 0..=(y_decades as i32) {
        let us = 10f64.powi(e);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        s += &format!(
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{label}</text>
"##,
            y_lat(us),
            LEFT + plot_w,
            LEFT - 6.0,
            y_lat(us) + 4.0
        );
    }
    // Time axis, on both panels: ~8 ticks.
    let step = nice_step(span / 8.0);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        s += &format!(
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>
"##,
            x(t),
            ses_top + SES_H,
            ses_top + SES_H + 18.0,
            clock(t)
        );
        t += step;
    }
    for (name, color, pick) in [
        ("p50", "#1f77b4", 0usize),
        ("p99", "#ff7f0e", 1),
        ("p99.9", "#d62728", 2),
    ] {
        let points: Vec<String> = tl
            .buckets
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| {
                let us = [b.p50_us, b.p99_us, b.p999_us][pick] as f64;
                format!("{:.1},{:.1}", x(b.at_s + tl.every_s / 2.0), y_lat(us))
            })
            .collect();
        s += &format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>
<text x="{}" y="{}" fill="{color}">{name}</text>
"#,
            points.join(" "),
            LEFT + 10.0 + 60.0 * pick as f64,
            TOP + 14.0
        );
    }
    // Sessions panel.
    s += &format!(
        r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/><text x="{2}" y="{3}" text-anchor="end">{4}</text><text x="{2}" y="{5}" text-anchor="end">0</text>
"##,
        ses_top + SES_H,
        LEFT + plot_w,
        LEFT - 6.0,
        ses_top + 4.0,
        max_ses as u64,
        ses_top + SES_H + 4.0
    );
    let sessions: Vec<String> = tl
        .buckets
        .iter()
        .map(|b| {
            format!(
                "{:.1},{:.1}",
                x(b.at_s + tl.every_s),
                y_ses(b.sessions as f64)
            )
        })
        .collect();
    s += &format!(
        r##"<polyline fill="none" stroke="#2ca02c" stroke-width="2" points="{LEFT},{:.1} {}"/>
<text x="{}" y="{}" fill="#2ca02c">connected sessions</text>
"##,
        y_ses(0.0),
        sessions.join(" "),
        LEFT + 10.0,
        ses_top + 14.0
    );
    if max_rss > 0.0 {
        let rss: Vec<String> = tl
            .buckets
            .iter()
            .filter_map(|b| {
                b.broker_rss_kib
                    .map(|k| format!("{:.1},{:.1}", x(b.at_s + tl.every_s), y_rss(k)))
            })
            .collect();
        s += &format!(
            r##"<polyline fill="none" stroke="#9467bd" stroke-width="1.5" stroke-dasharray="4 3" points="{}"/>
<text x="{}" y="{}" fill="#9467bd">node RSS (top: {:.0} MiB)</text>
"##,
            rss.join(" "),
            LEFT + 180.0,
            ses_top + 14.0,
            max_rss / 1024.0
        );
    }
    for b in tl.buckets.iter().filter(|b| b.errors > 0) {
        s += &format!(
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#d62728"><title>{3} errors</title></line>
"##,
            x(b.at_s + tl.every_s / 2.0),
            ses_top + SES_H - 8.0,
            ses_top + SES_H,
            b.errors
        );
    }
    s += "</svg>\n";
    s
}

/// 1, 2, 5 × 10^k seconds, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-3);
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

/// `90` → `1:30`.
fn clock(t: f64) -> String {
    let t = t.round() as u64;
    if t >= 3600 {
        format!("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
    } else {
        format!("{}:{:02}", t / 60, t % 60)
    }
}
