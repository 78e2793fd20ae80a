//! The configuration as written: serde structs with `deny_unknown_fields`, every key optional unless the file
//! cannot mean anything without it. Defaults and cross-key rules live in `validate.rs`, in one place, so that
//! the annotated `config/fieldbridge.yaml` and the code cannot drift apart silently.
//!
//! Values that a later check may reject are kept [`Spanned`], so that error still points at the value.
use std::fmt;

use fieldbridge_sdk::config::{HumanDuration, HumanSize, Spanned};
use fieldbridge_sdk::ConfigNode;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::mqtt::QoS;

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
pub(super) struct RawBroker {
    pub listeners: Option<Spanned<Vec<Spanned<RawListener>>>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_packet_size: Option<Spanned<HumanSize>>,
    pub receive_maximum: Option<Spanned<u16>>,
    pub max_queued_messages: Option<Spanned<usize>>,
    pub max_session_expiry: Option<Spanned<HumanDuration>>,
    pub topic_alias_maximum: Option<u16>,
    pub max_keepalive: Option<Spanned<HumanDuration>>,
    pub allow_anonymous: Option<bool>,
    pub users: Option<Vec<Spanned<RawUser>>>,
    pub acl: Option<Vec<Spanned<RawAcl>>>,
    /// mosquitto_passwd file (hashed passwords), beside `users`.
    pub password_file: Option<Spanned<String>>,
    /// mosquitto ACL file, after `acl`.
    pub acl_file: Option<Spanned<String>>,
    pub client_id_binding: Option<ClientIdBindingRaw>,
    pub sys_interval: Option<HumanDuration>,
    pub max_topic_levels: Option<Spanned<usize>>,
    pub max_topic_length: Option<Spanned<usize>>,
    pub max_publish_wait: Option<Spanned<HumanDuration>>,
    pub packet_timeout: Option<Spanned<HumanDuration>>,
    pub max_subscriptions_per_client: Option<Spanned<usize>>,
    pub max_retained_messages: Option<Spanned<usize>>,
    pub max_retained_bytes: Option<Spanned<HumanSize>>,
    pub max_offline_sessions: Option<Spanned<usize>>,
    pub max_offline_queued_bytes: Option<Spanned<HumanSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub name: Option<Spanned<String>>,
    pub bind: Spanned<String>,
    pub protocol: Option<ListenerProtocol>,
    pub tls: Option<Spanned<RawTls>>,
    pub path: Option<Spanned<String>>,
    pub allow_anonymous: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum ClientIdBindingRaw {
    Strict,
    Off,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum ListenerProtocol {
    Tcp,
    Tls,
    Ws,
    Wss,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    pub require_client_cert: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub username: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
}

/// `{allow: publish, topic: "…", user: bob}` or `{deny: all, topic: "#"}`: exactly one of `allow`/`deny`,
/// whose value says what it covers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcl {
    pub user: Option<Spanned<String>>,
    pub topic: Spanned<String>,
    pub allow: Option<AclAccessRaw>,
    pub deny: Option<AclAccessRaw>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum AclAccessRaw {
    Publish,
    Subscribe,
    All,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub path: Option<Spanned<String>>,
    pub commit_interval: Option<Spanned<HumanDuration>>,
    pub commit_rows: Option<Spanned<usize>>,
    pub synchronous: Option<SynchronousRaw>,
    pub durability: Option<DurabilityRaw>,
    pub max_bytes: Option<Spanned<HumanSize>>,
    pub max_age: Option<Spanned<HumanDuration>>,
    pub when_full: Option<WhenFullRaw>,
    pub record: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum SynchronousRaw {
    Full,
    Normal,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum DurabilityRaw {
    Strict,
    Relaxed,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum WhenFullRaw {
    DropOldest,
    DropNewest,
    Block,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBridge {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub protocol: Option<Spanned<MqttVersion>>,
    pub client_id: Option<Spanned<String>>,
    pub username: Option<String>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub keepalive: Option<Spanned<HumanDuration>>,
    pub clean_start: Option<bool>,
    pub session_expiry: Option<Spanned<HumanDuration>>,
    pub reconnect_min: Option<Spanned<HumanDuration>>,
    pub reconnect_max: Option<Spanned<HumanDuration>>,
    pub inflight: Option<Spanned<u16>>,
    pub rate_limit: Option<Spanned<u32>>,
    pub forward: Option<Vec<ConfigNode>>,
    pub subscribe: Option<Vec<ConfigNode>>,
    pub status_topic: Option<Spanned<String>>,
}

/// A forward rule written out; a bare string is the same as `{filter: <string>}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    pub filter: Spanned<String>,
    pub topic: Option<Spanned<String>>,
    pub qos: Option<QosRaw>,
    pub retain: Option<bool>,
}

/// A subscribe rule written out; a bare string is the same as `{filter: <string>}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubscribe {
    pub filter: Spanned<String>,
    pub topic: Option<Spanned<String>>,
    pub qos: Option<QosRaw>,
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

/// `0`, `1` or `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QosRaw(pub QoS);

impl<'de> Deserialize<'de> for QosRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = QosRaw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a QoS of 0, 1 or 2")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QosRaw, E> {
                u8::try_from(v)
                    .ok()
                    .and_then(QoS::from_u8)
                    .map(QosRaw)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QosRaw, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
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

/// The MQTT version of a bridge: `5` (or `"5.0"`) or `"3.1.1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MqttVersion(pub crate::mqtt::Protocol);

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::mqtt::Protocol;
        struct V;
        impl Visitor<'_> for V {
            type Value = MqttVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an MQTT version, `5` or `\"3.1.1\"`")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MqttVersion, E> {
                match v {
                    5 => Ok(MqttVersion(Protocol::V5)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MqttVersion, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MqttVersion, E> {
                if v == 5.0 {
                    Ok(MqttVersion(Protocol::V5))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MqttVersion, E> {
                match v {
                    "5" | "5.0" | "v5" => Ok(MqttVersion(Protocol::V5)),
                    "3.1.1" | "v3.1.1" | "311" => Ok(MqttVersion(Protocol::V311)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}
