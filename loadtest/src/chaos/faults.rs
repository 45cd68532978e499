//! The faults a chaos run injects, one at a time, each bounded in time and
//! followed by its recovery: a node killed (-9) and restarted, a node
//! paused (SIGSTOP/SIGCONT), a node restarted under a skewed wall clock
//! (libfaketime), the Redis master restarted empty, the nodes' Redis
//! subscriptions killed (`CLIENT KILL TYPE pubsub`), and a Sentinel
//! failover to a replica that was behind.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::history::{Event, History};
use super::world::{redis_cmd, until, World};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 of a node, restarted after up to 2 s.
    Kill9,
    /// SIGSTOP of a node for 1–4 s (past its lease), then SIGCONT.
    Stop,
    /// A node restarted (SIGTERM) under a wall clock 8 s ahead or behind
    /// for 3–6 s, then restarted without it.
    Skew,
    /// The master killed and started again at once with no data.
    RedisEmpty,
    /// `CLIENT KILL TYPE pubsub` on the master: every node's subscription.
    Pubsub,
    /// The replica cut off from the master (its PSYNC refused by ACL) while
    /// writes go on for 1–2 s, then the master killed: Sentinel promotes
    /// the replica, which lacks those writes.
    Failover,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill9,
        Fault::Stop,
        Fault::Skew,
        Fault::RedisEmpty,
        Fault::Pubsub,
        Fault::Failover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill9",
            Fault::Stop => "sigstop",
            Fault::Skew => "skew",
            Fault::RedisEmpty => "redis-empty",
            Fault::Pubsub => "pubsub-kill",
            Fault::Failover => "lagging-failover",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("--faults: unknown fault {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Injects `fault` and recovers from it; records both in `history`.
/// Errors are faults the world could not recover from.
pub async fn inject(
    world: &mut World,
    fault: Fault,
    rng: &mut StdRng,
    history: &History,
) -> Result<(), String> {
    let n = rng.random_range(0..world.nodes.len());
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
    let detail;
    let start = |detail: &str| {
        let d = detail.to_string();
        history.record(|t| Event::Fault {
            t,
            kind: fault.name().into(),
            phase: "start".into(),
            detail: d,
        })
    };
    match fault {
        Fault::Kill9 => {
            detail = format!("node {}", world.nodes[n].name);
            start(&detail);
            world.nodes[n].kill9().await;
            tokio::time::sleep(ms(rng, 200, 2000)).await;
            world.spawn_node(n, None).await?;
        }
        Fault::Stop => {
            let d = ms(rng, 1000, 4000);
            detail = format!("node {} for {} ms", world.nodes[n].name, d.as_millis());
            start(&detail);
            world.nodes[n].signal("STOP");
            tokio::time::sleep(d).await;
            world.nodes[n].signal("CONT");
        }
        Fault::Skew => {
            let skew = if rng.random_bool(0.5) { "+8s" } else { "-8s" };
            let d = ms(rng, 3000, 6000);
            detail = format!(
                "node {} at {skew} for {} ms",
                world.nodes[n].name,
                d.as_millis()
            );
            start(&detail);
            world.nodes[n].terminate().await;
            world.spawn_node(n, Some(skew)).await?;
            tokio::time::sleep(d).await;
            world.nodes[n].terminate().await;
            world.spawn_node(n, None).await?;
        }
        Fault::RedisEmpty => {
            let (m, _) = roles(world).await?;
            detail = format!("master :{}", world.redis[m].port);
            start(&detail);
            world.redis[m].kill().await;
            world.redis[m].spawn(None).await?;
        }
        Fault::Pubsub => {
            let (m, _) = roles(world).await?;
            let port = world.redis[m].port;
            let killed: i64 = redis_cmd(port, &["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
            detail = format!("master :{port}, {killed} subscription(s)");
            start(&detail);
        }
        Fault::Failover => {
            let (m, r) = roles(world).await?;
            let (mp, rp) = (world.redis[m].port, world.redis[r].port);
            let lag = ms(rng, 1000, 2000);
            detail = format!(
                "master :{mp} → replica :{rp}, {} ms behind",
                lag.as_millis()
            );
            start(&detail);
            let _: String =
                redis_cmd(mp, &["ACL", "SETUSER", "default", "-psync", "-sync"]).await?;
            let _: i64 = redis_cmd(mp, &["CLIENT", "KILL", "TYPE", "replica"]).await?;
            tokio::time::sleep(lag).await;
            world.redis[m].kill().await;
            if !until(Duration::from_secs(30), || async {
                world.master_port().await == Some(rp)
            })
            .await
            {
                return Err(format!(
                    "{fault}: the sentinels did not promote :{rp} in 30 s"
                ));
            }
            world.redis[m].spawn(Some(rp)).await?;
        }
    }
    recovered(world).await?;
    history.record(|t| Event::Fault {
        t,
        kind: fault.name().into(),
        phase: "end".into(),
        detail,
    });
    Ok(())
}

/// (master, replica) indexes into `world.redis`, as the sentinels see them.
async fn roles(world: &World) -> Result<(usize, usize), String> {
    let port = world
        .master_port()
        .await
        .ok_or("no sentinel names a master")?;
    let m = world
        .redis_index(port)
        .ok_or_else(|| format!("the sentinels' master :{port} is none of ours"))?;
    Ok((m, 1 - m))
}

/// Waits (bounded) until the sentinels agree, the replica is in sync and
/// every node answers `/readyz` with 200.
pub async fn recovered(world: &World) -> Result<(), String> {
    if !world.sentinels_agree(Duration::from_secs(60)).await {
        return Err("the sentinels did not settle within 60 s".into());
    }
    let (_, r) = roles(world).await?;
    let rp = world.redis[r].port;
    let synced = || async move {
        redis_cmd::<String>(rp, &["INFO", "replication"])
            .await
            .is_ok_and(|i| i.contains("master_link_status:up"))
    };
    if !until(Duration::from_secs(30), synced).await {
        // Point it at the master again (Sentinel may not have yet).
        let (m, _) = roles(world).await?;
        let mp = world.redis[m].port.to_string();
        let _: Result<String, _> = redis_cmd(rp, &["REPLICAOF", "127.0.0.1", &mp]).await;
        if !until(Duration::from_secs(30), synced).await {
            return Err(format!("the replica :{rp} did not sync within 60 s"));
        }
    }
    for node in &world.nodes {
        let addr = node.http;
        if !until(Duration::from_secs(60), || ready(addr)).await {
            return Err(format!("node {} not ready within 60 s", node.name));
        }
    }
    Ok(())
}

/// `GET /readyz` answered 200 (within 2 s).
async fn ready(addr: std::net::SocketAddr) -> bool {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), fut).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_parse_and_unknown_ones_are_named() {
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>(), Ok(f));
        }
        let e = "reboot".parse::<Fault>().unwrap_err();
        assert!(e.contains("--faults") && e.contains("\"reboot\""), "{e}");
    }
}
