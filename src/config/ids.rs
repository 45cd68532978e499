//! Serde for the validated identifiers a configuration holds (`node`,
//! `tenants`, an API key's `tenant`), so a bad one is refused while the
//! configuration loads, naming the setting, and never parsed again.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::session::{InvalidField, NodeId, Tenant};

/// An identifier type the configuration can hold.
pub trait Id: Sized {
    fn parse(text: &str) -> Result<Self, InvalidField>;
    fn text(&self) -> &str;
}

impl Id for NodeId {
    fn parse(text: &str) -> Result<Self, InvalidField> {
        NodeId::parse(text)
    }
    fn text(&self) -> &str {
        self.as_str()
    }
}

impl Id for Tenant {
    fn parse(text: &str) -> Result<Self, InvalidField> {
        Tenant::parse(text)
    }
    fn text(&self) -> &str {
        self.as_str()
    }
}

/// One identifier's text. Numbers are accepted as text too: an environment
/// variable or flag `12` arrives as a number, and `12` is a fine node name.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an identifier")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse<T: Id, E: de::Error>(t: Text) -> Result<T, E> {
    T::parse(&t.0).map_err(E::custom)
}

/// `Option<T>`.
pub mod opt {
    use super::*;

    pub fn serialize<T: Id, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(Id::text).serialize(s)
    }

    pub fn deserialize<'de, T: Id, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Option::<Text>::deserialize(d)?.map(parse).transpose()
    }
}

/// `Option<Vec<T>>`.
pub mod opt_list {
    use super::*;

    pub fn serialize<T: Id, S: Serializer>(v: &Option<Vec<T>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|list| list.iter().map(Id::text).collect::<Vec<_>>())
            .serialize(s)
    }

    pub fn deserialize<'de, T: Id, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
        match Option::<Vec<Text>>::deserialize(d)? {
            Some(list) => list
                .into_iter()
                .map(parse)
                .collect::<Result<_, _>>()
                .map(Some),
            None => Ok(None),
        }
    }
}

/// `HashMap<T, u32>`: a number per identifier (`seat_limits = { acme = 100 }`).
pub mod map_u32 {
    use std::collections::{BTreeMap, HashMap};
    use std::hash::Hash;

    use super::*;

    pub fn serialize<T: Id, S: Serializer>(v: &HashMap<T, u32>, s: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&str, u32> = v.iter().map(|(k, n)| (k.text(), *n)).collect();
        sorted.serialize(s)
    }

    pub fn deserialize<'de, T: Id + Eq + Hash, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<T, u32>, D::Error> {
        BTreeMap::<String, u32>::deserialize(d)?
            .into_iter()
            .map(|(k, n)| Ok((parse(Text(k))?, n)))
            .collect()
    }
}
