//! How the configuration spells MQTT values (a QoS, a protocol version): serde forms shared by every section
//! that names one.
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::QoS;

/// `0`, `1` or `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QosRaw(pub QoS);

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

/// The MQTT version of a bridge: `5` (or `"5.0"`) or `"3.1.1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttVersion(pub super::Protocol);

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use super::Protocol;
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
