//! The `redis` setting as typed values: each URL checked once, when the
//! configuration loads, and shown everywhere with its password hidden.
//!
//! A [`RedisUrl`] keeps the URL it was given (the Redis client needs the
//! password) but its `Display` and `Debug` print `redis://user:***@host`,
//! so no log line, error or `{:?}` of a config can leak the secret.

use std::fmt;
use std::str::FromStr;

use redis::{ConnectionInfo, IntoConnectionInfo, RedisResult};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One Redis URL (`redis://[user:password@]host[:port][/db]`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// As given, password included: only ever handed to the Redis client.
    secret: String,
    /// The same URL with its password replaced by `***`.
    shown: String,
}

impl RedisUrl {
    /// Checks one URL; the error says what is wrong (the caller names the
    /// setting). Only `redis://` is accepted: this build has no TLS for
    /// Redis, so `rediss://` would fail at connect time instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let Some(mut url) = redis::parse_redis_url(text) else {
            return Err(format!(
                "{:?} is not a URL like redis://host:6379",
                hide_userinfo(text)
            ));
        };
        if url.password().is_some() {
            // Cannot fail: a URL with a password has a host.
            let _ = url.set_password(Some("***"));
        }
        let shown = url.to_string();
        match url.scheme() {
            "redis" => {}
            "rediss" => {
                return Err(format!(
                    "{shown}: rediss:// (TLS to Redis) is not supported by this build"
                ))
            }
            other => return Err(format!("{shown}: scheme {other}:// is not redis://")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown}: has no host"));
        }
        if let Err(e) = text.into_connection_info() {
            return Err(format!("{shown}: {}", e.detail().unwrap_or("invalid")));
        }
        Ok(Self {
            secret: text.to_string(),
            shown,
        })
    }

    /// The URLs of a list, as shown in logs (passwords hidden), comma-separated.
    pub fn join(urls: &[RedisUrl]) -> String {
        let shown: Vec<&str> = urls.iter().map(|u| u.shown.as_str()).collect();
        shown.join(",")
    }
}

/// Hides everything before an `@` in text that did not parse as a URL, in
/// case it held a password.
fn hide_userinfo(text: &str) -> String {
    match text.rsplit_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{after}"),
            None => format!("***@{after}"),
        },
        None => text.to_string(),
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

impl IntoConnectionInfo for RedisUrl {
    fn into_connection_info(self) -> RedisResult<ConnectionInfo> {
        self.secret.as_str().into_connection_info()
    }
}

impl IntoConnectionInfo for &RedisUrl {
    fn into_connection_info(self) -> RedisResult<ConnectionInfo> {
        self.secret.as_str().into_connection_info()
    }
}

/// The `redis` setting: one URL, or seed nodes of a Redis Cluster, written
/// comma-separated (`redis://a:6379,redis://b:6379`) or as a TOML list.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrls(Vec<RedisUrl>);

impl RedisUrls {
    /// The URLs, never empty.
    pub fn urls(&self) -> &[RedisUrl] {
        &self.0
    }
}

impl FromStr for RedisUrls {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let urls = text
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(RedisUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err("needs at least one URL like redis://host:6379".into());
        }
        Ok(Self(urls))
    }
}

impl fmt::Display for RedisUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&RedisUrl::join(&self.0))
    }
}

impl fmt::Debug for RedisUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// Written as given (password included) so a config survives a round trip
/// through the loader; print it with `Display`, never serialised.
impl Serialize for RedisUrls {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let secrets: Vec<&str> = self.0.iter().map(|u| u.secret.as_str()).collect();
        s.serialize_str(&secrets.join(","))
    }
}

impl<'de> Deserialize<'de> for RedisUrls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            One(String),
            Many(Vec<String>),
        }
        let text = match Text::deserialize(d)? {
            Text::One(s) => s,
            Text::Many(list) => list.join(","),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        let urls: RedisUrls = "redis://agent:hunter2@10.0.0.1:6379/2, redis://:hunter3@b"
            .parse()
            .unwrap();
        let shown = format!("{urls} {urls:?} {:?}", urls.urls()[0]);
        assert!(!shown.contains("hunter"), "{shown}");
        assert_eq!(
            urls.to_string(),
            "redis://agent:***@10.0.0.1:6379/2,redis://:***@b"
        );
        // The client still gets the password.
        let info = urls.urls()[0].clone().into_connection_info().unwrap();
        assert_eq!(info.redis.password.as_deref(), Some("hunter2"));
        assert_eq!(info.redis.db, 2);
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (text, says) in [
            ("", "at least one URL"),
            ("127.0.0.1:6379", "is not a URL like redis://"),
            (
                "http://u:hunter2@h",
                "\"http://***@h\" is not a URL like redis://",
            ),
            ("valkey://u:hunter2@h", "scheme valkey"),
            ("rediss://u:hunter2@h", "not supported"),
            (
                "redis://u:hunter2@h/notanumber",
                "redis://u:***@h/notanumber",
            ),
            ("redis://u:hunter2@", "\"redis://***@\" is not a URL"),
        ] {
            let e = text.parse::<RedisUrls>().unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(!e.contains("hunter2"), "{text:?}: {e}");
        }
    }
}
