//! `--shard I/N`: which slice of the logins and stations this generator
//! drives, so N generators on N machines load one deployment together
//! without touching each other's logins or stations.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Generator `index` of `count`: it owns the agents (and their stations)
/// whose number is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether agent (or tenant, or station) number `i` is this shard's.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count.max(1) == self.index
    }

    /// This shard's numbers below `n`, in order.
    pub fn indices(&self, n: usize) -> Vec<usize> {
        (self.index..n).step_by(self.count.max(1)).collect()
    }

    /// Whether this is the one generator of an unsharded run.
    pub fn is_whole(&self) -> bool {
        self.count <= 1
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N` with `0 <= I < N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_every_number_once() {
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        let mut all: Vec<usize> = shards.iter().flat_map(|s| s.indices(10)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(shards[1].owns(4) && !shards[1].owns(5));
        assert_eq!(Shard::default().indices(3), vec![0, 1, 2]);
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("--shard"), "{e}");
        }
    }
}
