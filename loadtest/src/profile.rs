//! The `shift` profile: how many agents in how many tenants, how long each
//! phase lasts and how often each thing happens — read from a TOML or JSON
//! file (every field optional; the defaults below are a small, realistic
//! shift compressed into minutes). `loadtest/profiles/` has examples.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One shift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Agents in the whole run (over every shard).
    pub agents: usize,
    /// Tenants the agents are spread over (round-robin).
    pub tenants: usize,
    /// Shift start: sign-ins spread evenly over this.
    #[serde(with = "secs")]
    pub ramp_in: Duration,
    /// Everyone signed in, working.
    #[serde(with = "secs")]
    pub steady: Duration,
    /// Shift end: sign-outs spread evenly over this.
    #[serde(with = "secs")]
    pub ramp_out: Duration,
    /// Mean time between one agent's status changes (exponential).
    #[serde(with = "secs")]
    pub status_every: Duration,
    /// The statuses agents move between.
    pub statuses: Vec<String>,
    /// Mean time between one agent's network blips (socket lost, resumed
    /// with the same token after `blip_length`; 0: none).
    #[serde(with = "secs")]
    pub blip_every: Duration,
    /// How long a blip keeps the socket down; keep it well inside the
    /// nodes' grace period.
    #[serde(with = "secs")]
    pub blip_length: Duration,
    /// Share of agents (0..1) who move to another desk once, mid-shift.
    pub desk_moves: f64,
    /// Share of agents (0..1) who sign in a second time (a takeover).
    pub takeovers: f64,
    /// Time between tenant-wide notices, per tenant (0: none).
    #[serde(with = "secs")]
    pub tenant_notice_every: Duration,
    /// Mean time between one agent's personal notices (0: none).
    #[serde(with = "secs")]
    pub personal_notice_every: Duration,
    /// Width of one time-series bucket (latency, sessions, node figures).
    #[serde(with = "secs")]
    pub sample_every: Duration,
    /// Seeds every agent's schedule: the same profile and seed give the
    /// same actions, however the agents are sharded.
    pub seed: u64,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            agents: 300,
            tenants: 3,
            ramp_in: Duration::from_secs(30),
            steady: Duration::from_secs(120),
            ramp_out: Duration::from_secs(30),
            status_every: Duration::from_secs(20),
            statuses: ["available", "busy", "wrap_up", "away"]
                .map(String::from)
                .to_vec(),
            blip_every: Duration::from_secs(300),
            blip_length: Duration::from_secs(2),
            desk_moves: 0.05,
            takeovers: 0.02,
            tenant_notice_every: Duration::from_secs(30),
            personal_notice_every: Duration::from_secs(120),
            sample_every: Duration::from_secs(1),
            seed: 1,
        }
    }
}

impl Profile {
    /// Reads a TOML (`.toml`) or JSON (anything else) profile.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("profile {}: {e}", path.display()))?;
        let p: Profile = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| format!("profile {}: {e}", path.display()))?
        } else {
            serde_json::from_str(&text).map_err(|e| format!("profile {}: {e}", path.display()))?
        };
        p.check()
            .map_err(|e| format!("profile {}: {e}", path.display()))?;
        Ok(p)
    }

    /// Names the first field out of range.
    pub fn check(&self) -> Result<(), String> {
        if self.agents == 0 {
            return Err("agents: must be at least 1".into());
        }
        if self.tenants == 0 || self.tenants > self.agents {
            return Err(format!(
                "tenants: must be 1..=agents ({}), got {}",
                self.agents, self.tenants
            ));
        }
        for (name, v) in [
            ("desk_moves", self.desk_moves),
            ("takeovers", self.takeovers),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name}: a share between 0 and 1, got {v}"));
            }
        }
        if self.statuses.is_empty() || self.statuses.iter().any(|s| s.is_empty() || s.len() > 64) {
            return Err("statuses: 1..64-byte names, at least one".into());
        }
        if self.sample_every.is_zero() {
            return Err("sample_every: must be above 0".into());
        }
        if self.steady.is_zero() && (self.desk_moves > 0.0 || self.takeovers > 0.0) {
            return Err("steady: desk moves and takeovers happen in it; it must be above 0".into());
        }
        Ok(())
    }

    /// The whole shift.
    pub fn length(&self) -> Duration {
        self.ramp_in + self.steady + self.ramp_out
    }
}

/// `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 30s, 500ms, 2m, 1h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Durations as `"30s"` strings (or bare seconds) in profile files.
mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms % 1000 == 0 {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
            Raw::Secs(n) if n >= 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n)),
            Raw::Secs(n) => Err(serde::de::Error::custom(format!("not a duration: {n}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_profiles_fill_in_defaults_and_name_bad_fields() {
        let dir = std::env::temp_dir().join(format!("profile-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("p.toml");
        std::fs::write(
            &toml_path,
            "agents = 40\ntenants = 2\nsteady = \"1m\"\nblip_length = 0.5\n",
        )
        .unwrap();
        let p = Profile::load(&toml_path).unwrap();
        assert_eq!(p.agents, 40);
        assert_eq!(p.steady, Duration::from_secs(60));
        assert_eq!(p.blip_length, Duration::from_millis(500));
        assert_eq!(p.statuses, Profile::default().statuses);
        let json_path = dir.join("p.json");
        std::fs::write(&json_path, serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(Profile::load(&json_path).unwrap(), p);
        std::fs::write(&json_path, r#"{"desk_moves": 2}"#).unwrap();
        let e = Profile::load(&json_path).unwrap_err();
        assert!(e.contains("desk_moves"), "{e}");
        std::fs::write(&toml_path, "agent = 3\n").unwrap();
        let e = Profile::load(&toml_path).unwrap_err();
        assert!(e.contains("agent"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(parse_duration("2x").is_err());
    }

    #[test]
    fn the_example_profiles_parse_and_the_documented_one_is_the_default() {
        let doc: Profile = toml::from_str(include_str!("../profiles/shift.toml")).unwrap();
        assert_eq!(doc, Profile::default());
        let bench: Profile =
            toml::from_str(include_str!("../profiles/shift-cluster-bench.toml")).unwrap();
        bench.check().unwrap();
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }
}
