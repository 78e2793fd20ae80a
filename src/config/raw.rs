//! The configuration as written: serde structs with `deny_unknown_fields`, every key optional unless the file
//! cannot mean anything without it. The broker's, store's and bridges' sections are written next to those
//! components (`broker/config.rs`, `store/config.rs`, `bridge/config.rs`, with their validation); the gateway,
//! API, logging and device sections are here, and their defaults and cross-key rules in `validate.rs`. The
//! annotated `config/fieldbridge.yaml` documents every key, and `tests/fixtures/config/valid/full.yaml` sets
//! them all, so the example and the code cannot drift apart silently.
//!
//! Values that a later check may reject are kept [`Spanned`], so that error still points at the value.
use std::fmt;

use fieldbridge_sdk::config::{HumanDuration, Spanned};
use fieldbridge_sdk::ConfigNode;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub(super) use crate::broker::config::RawTls;
pub(super) use crate::mqtt::yaml::QosRaw;

/// A device-map file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeviceMap {
    pub devices: Option<Vec<ConfigNode>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub id: Option<Spanned<String>>,
    pub status_topic: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub enabled: Option<bool>,
    pub bind: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub auth_reads: Option<bool>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub level: Option<Spanned<String>>,
}

/// A device, with the point list kept as nodes (each point is split into the core's keys and the adapter's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub name: Spanned<String>,
    pub protocol: Spanned<String>,
    /// For humans reading the file; accepted so that documenting a device is not an error.
    #[allow(dead_code)]
    pub description: Option<String>,
    pub labels: Option<ConfigNode>,
    pub connection: Option<ConfigNode>,
    pub poll_interval: Option<Spanned<HumanDuration>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub retries: Option<u32>,
    pub enabled: Option<bool>,
    pub topic: Option<Spanned<String>>,
    pub payload: Option<PayloadRaw>,
    pub qos: Option<QosRaw>,
    pub retain: Option<bool>,
    pub publish: Option<Spanned<PublishRaw>>,
    pub record: Option<bool>,
    pub points: Option<Vec<ConfigNode>>,
}

/// The core's keys of a point (`fieldbridge_sdk::config::POINT_CORE_KEYS`); the rest is the adapter's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoint {
    pub name: Spanned<String>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    pub deadband: Option<Spanned<DeadbandRaw>>,
    pub publish: Option<Spanned<PublishRaw>>,
    pub unit: Option<String>,
    pub topic: Option<Spanned<String>>,
    pub payload: Option<PayloadRaw>,
    pub qos: Option<QosRaw>,
    pub retain: Option<bool>,
    pub writable: Option<bool>,
    pub poll_interval: Option<Spanned<HumanDuration>>,
    /// For humans reading the file (the API may show it one day).
    #[allow(dead_code)]
    pub description: Option<String>,
    pub record: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum PublishRaw {
    EveryPoll,
    OnChange,
    OnChangeOrEvery(u32),
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum PayloadRaw {
    Json,
    Value,
}

/// `2.5` (absolute, in published units) or `"2%"` (of the last published value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum DeadbandRaw {
    Absolute(f64),
    Percent(f64),
}

impl<'de> Deserialize<'de> for DeadbandRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DeadbandRaw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a percentage like `2%`")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DeadbandRaw, E> {
                Ok(DeadbandRaw::Absolute(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DeadbandRaw, E> {
                Ok(DeadbandRaw::Absolute(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DeadbandRaw, E> {
                Ok(DeadbandRaw::Absolute(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeadbandRaw, E> {
                v.trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .map(DeadbandRaw::Percent)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}
