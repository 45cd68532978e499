//! turnstile-loadtest: drives real agents against a turnstile deployment.
//!
//! The scenarios (idle, storm, takeover, stations, churn) land with the
//! load-test issue; until then this binary only explains itself.

fn main() -> anyhow::Result<()> {
    eprintln!("turnstile-loadtest: scenarios are not implemented yet (see docs/benchmarks.md)");
    std::process::exit(2)
}
