//! deploy/'s dashboard and alert rules name only metrics the broker exports
//! (src/metrics_names.rs). Their PromQL and the manifests are checked by
//! promtool and kubernetes-validate in .ci/deploy.

use std::collections::BTreeSet;

const METRIC_NAMES: &str = include_str!("../src/metrics_names.rs");
const DASHBOARD: &str = include_str!("../deploy/grafana/turnstile.json");
const RULES: &str = include_str!("../deploy/alerts/turnstile.rules.yml");

/// The metric names declared as string constants in metrics_names.rs.
fn exported() -> BTreeSet<String> {
    METRIC_NAMES
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("turnstile_"))
        .map(str::to_string)
        .collect()
}

/// Every `turnstile_*` token in `text` (alert names are CamelCase).
fn named_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|t| t.starts_with("turnstile_"))
        .map(str::to_string)
        .collect()
}

fn unknown(text: &str) -> Vec<String> {
    let exported = exported();
    named_in(text)
        .into_iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !exported.contains(name) && !exported.contains(base)
        })
        .collect()
}

#[test]
fn the_dashboard_names_only_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut exprs = String::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(t["expr"].as_str().expect("a query"));
            exprs.push('\n');
        }
    }
    assert!(
        named_in(&exprs).len() >= 15,
        "the dashboard shows most metrics"
    );
    assert_eq!(
        unknown(&exprs),
        Vec::<String>::new(),
        "not in metrics_names.rs"
    );
}

#[test]
fn the_alert_rules_name_only_exported_metrics() {
    assert!(named_in(RULES).contains("turnstile_ready"));
    assert_eq!(
        unknown(RULES),
        Vec::<String>::new(),
        "not in metrics_names.rs"
    );
}

#[test]
fn the_check_sees_an_unknown_name() {
    assert_eq!(
        unknown("rate(turnstile_nonsense_total[5m])"),
        vec!["turnstile_nonsense_total"]
    );
    assert!(unknown("turnstile_claim_seconds_bucket").is_empty());
}
