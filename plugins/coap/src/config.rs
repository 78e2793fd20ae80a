//! The CoAP part of a device map: raw serde structs, then checks with positions. See `README.md` for every
//! key. No I/O: `fieldbridge check` runs exactly this.
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::RequestType;
use fieldbridge_sdk::config::{HumanDuration, HumanSize, Spanned};
use fieldbridge_sdk::{ConfigError, DeviceConfig, PointConfig};
use serde::Deserialize;

use crate::client::Transmission;
use crate::content::{Extract, Format};
use crate::uri::{split_path, CoapUri};
use crate::wire::Block;

/// How a point gets its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// GET every poll interval.
    Poll,
    /// Observe (RFC 7641): the server notifies.
    Observe,
    /// The device POSTs/PUTs to our ingest listener.
    Ingest,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "poll" | "get" => Ok(Mode::Poll),
            "observe" => Ok(Mode::Observe),
            "ingest" | "push" => Ok(Mode::Ingest),
            _ => Err(format!(
                "unknown mode `{s}`; expected poll, observe or ingest"
            )),
        }
    }
}

/// A validated CoAP device.
#[derive(Debug, Clone, PartialEq)]
pub struct CoapDevice {
    /// Device name.
    pub name: Arc<str>,
    /// The server (`uri:`), when some point polls or observes.
    pub uri: Option<CoapUri>,
    /// Retransmission and block-wise settings.
    pub transmission: Transmission,
    /// Extra silence beyond Max-Age before an observation is re-registered.
    pub observe_grace: Duration,
    /// Where the ingest listener binds, when some point is `mode: ingest`.
    pub ingest: Option<SocketAddr>,
    /// Retries of a failed poll before offline (the device map's `retries`).
    pub retries: u32,
    /// The points, in device-map order.
    pub points: Vec<CoapPoint>,
}

/// A validated point.
#[derive(Debug, Clone, PartialEq)]
pub struct CoapPoint {
    /// Point name.
    pub name: Arc<str>,
    /// Resource path (`/a/b`).
    pub path: String,
    /// Query, without `?`.
    pub query: Option<String>,
    /// How values come.
    pub mode: Mode,
    /// What to pick from the representation.
    pub extract: Extract,
    /// Poll interval (also the retry interval of an observation the server refused).
    pub interval: Duration,
    /// Whether writes are allowed.
    pub writable: bool,
    /// PUT or POST for writes.
    pub method: RequestType,
    /// How written values are encoded.
    pub write_format: Format,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    uri: Option<Spanned<String>>,
    ack_timeout: Option<Spanned<HumanDuration>>,
    ack_random_factor: Option<Spanned<f64>>,
    max_retransmit: Option<Spanned<u32>>,
    block_size: Option<Spanned<u16>>,
    max_body: Option<Spanned<HumanSize>>,
    observe_grace: Option<Spanned<HumanDuration>>,
    ingest: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    path: Spanned<String>,
    mode: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    pointer: Option<Spanned<String>>,
    senml_name: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    write_format: Option<Spanned<String>>,
}

/// Largest `max_body`: block-wise bodies are held in memory, one per resource being fetched.
pub const MAX_BODY_LIMIT: u64 = 1024 * 1024;

/// Validates a device's CoAP configuration.
pub fn validate(device: &DeviceConfig) -> Result<CoapDevice, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let raw: Option<RawConnection> = if device.connection.is_null() {
        None
    } else {
        match device.connection.deserialize_all() {
            Ok(r) => Some(r),
            Err(mut e) => {
                errors.append(&mut e);
                return Err(errors);
            }
        }
    };
    let mut tx = Transmission {
        separate_timeout: device.timeout,
        ..Transmission::default()
    };
    let mut uri = None;
    let mut ingest = None;
    let mut observe_grace = Duration::from_secs(5);
    if let Some(raw) = &raw {
        if let Some(u) = &raw.uri {
            match CoapUri::parse(&u.value) {
                Ok(parsed) if parsed.path != "/" || parsed.query.is_some() => errors.push(u.error(
                    format!("`{}`: the device `uri` is the server only (coap://host:port); put resource paths on the points", u.value),
                )),
                Ok(parsed) => uri = Some(parsed),
                Err(e) => errors.push(u.error(e.to_string())),
            }
        }
        if let Some(t) = &raw.ack_timeout {
            let d: Duration = t.value.into();
            if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
                errors.push(
                    t.error("ack_timeout must be between 10ms and 60s (RFC 7252 default 2s)"),
                );
            }
            tx.ack_timeout = d;
        }
        if let Some(f) = &raw.ack_random_factor {
            if !(1.0..=4.0).contains(&f.value) {
                errors.push(f.error(format!(
                    "ack_random_factor must be between 1.0 and 4.0 (RFC 7252 default 1.5), not {}",
                    f.value
                )));
            }
            tx.ack_random_factor = f.value;
        }
        if let Some(m) = &raw.max_retransmit {
            if m.value > 10 {
                errors.push(m.error(format!(
                    "max_retransmit must be 0 to 10 (RFC 7252 default 4), not {}",
                    m.value
                )));
            }
            tx.max_retransmit = m.value.min(10);
        }
        if let Some(b) = &raw.block_size {
            if Block::szx_for(b.value).is_none() {
                errors.push(b.error(format!(
                    "block_size must be 16, 32, 64, 128, 256, 512 or 1024, not {}",
                    b.value
                )));
            } else {
                tx.block_size = b.value;
            }
        }
        if let Some(m) = &raw.max_body {
            let n = m.value.0;
            if n == 0 || n > MAX_BODY_LIMIT {
                errors.push(m.error(format!("max_body must be 1 byte to 1MiB, not {n} bytes")));
            }
            tx.max_body = usize::try_from(n.min(MAX_BODY_LIMIT)).unwrap_or(64 * 1024);
        }
        if let Some(g) = &raw.observe_grace {
            observe_grace = g.value.into();
        }
        if let Some(a) = &raw.ingest {
            match a.value.trim().parse::<SocketAddr>() {
                Ok(addr) => ingest = Some(addr),
                Err(_) => errors.push(a.error(format!(
                    "`{}` is not a listen address; write ip:port, e.g. 0.0.0.0:5683 or [::]:5683",
                    a.value
                ))),
            }
        }
    }

    let mut points = Vec::with_capacity(device.points.len());
    for p in device.points.iter() {
        if let Some(point) = validate_point(device, p, &mut errors) {
            points.push(point);
        }
    }
    let needs_uri = points.iter().any(|p| p.mode != Mode::Ingest);
    let needs_ingest = points.iter().any(|p| p.mode == Mode::Ingest);
    let at = |key: &str| -> ConfigError {
        raw.as_ref()
            .and_then(|_| device.connection.get(key))
            .map_or_else(|| device.connection.error(""), |n| n.error(""))
    };
    if needs_uri && uri.is_none() && raw.as_ref().is_none_or(|r| r.uri.is_none()) {
        errors.push(ConfigError {
            message: "points with `mode: poll` or `mode: observe` need the server: `connection: {uri: coap://host:port}`".into(),
            ..at("uri")
        });
    }
    if needs_ingest && ingest.is_none() && raw.as_ref().is_none_or(|r| r.ingest.is_none()) {
        errors.push(ConfigError {
            message:
                "points with `mode: ingest` need the listener: `connection: {ingest: 0.0.0.0:5683}`"
                    .into(),
            ..at("ingest")
        });
    }
    if !needs_ingest && points.len() == device.points.len() {
        if let Some(a) = raw.as_ref().and_then(|r| r.ingest.as_ref()) {
            errors.push(a.error("`ingest` is set but no point has `mode: ingest`"));
        }
    }
    // Two ingest points on one path must agree on the format (one message, one decoding).
    for (i, a) in points.iter().enumerate() {
        if a.mode != Mode::Ingest {
            continue;
        }
        for b in &points[..i] {
            if b.mode == Mode::Ingest
                && b.path == a.path
                && !(a.extract.format.is_senml() && b.extract.format.is_senml()
                    || a.extract.format == Format::Auto
                    || b.extract.format == Format::Auto)
                && a.extract.format != b.extract.format
            {
                if let Some(p) = device.points.iter().find(|p| p.name == a.name) {
                    errors.push(p.spec.error(format!(
                        "ingest points `{}` and `{}` share path {} but differ in format ({} vs {})",
                        b.name, a.name, a.path, b.extract.format, a.extract.format
                    )));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CoapDevice {
        name: device.name.clone(),
        uri,
        transmission: tx,
        observe_grace,
        ingest,
        retries: device.retries,
        points,
    })
}

fn validate_point(
    device: &DeviceConfig,
    p: &PointConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<CoapPoint> {
    let raw: RawPoint = match p.spec.deserialize_all() {
        Ok(r) => r,
        Err(mut e) => {
            errors.append(&mut e);
            return None;
        }
    };
    let before = errors.len();
    let path_text = raw.path.value.trim();
    if path_text.is_empty() || path_text.contains("://") || path_text.contains('#') {
        errors.push(raw.path.error(format!(
            "`{path_text}`: a point's path is a resource path like /sensors/temp (the server is the device's `uri`)"
        )));
    }
    let (path, query) = split_path(path_text);
    if path.split('/').any(|s| s.len() > 255) {
        errors.push(raw.path.error("a path segment is longer than 255 bytes"));
    }
    let parse = |s: &Option<Spanned<String>>, errors: &mut Vec<ConfigError>| -> Option<Format> {
        s.as_ref().and_then(|f| match Format::from_str(&f.value) {
            Ok(x) => Some(x),
            Err(m) => {
                errors.push(f.error(m));
                None
            }
        })
    };
    let mode = match &raw.mode {
        None => Mode::Poll,
        Some(m) => Mode::from_str(&m.value).unwrap_or_else(|e| {
            errors.push(m.error(e));
            Mode::Poll
        }),
    };
    let format = parse(&raw.format, errors).unwrap_or(Format::Auto);
    let write_format = parse(&raw.write_format, errors).unwrap_or(Format::Text);
    if write_format.is_senml() || write_format == Format::Auto {
        if let Some(w) = &raw.write_format {
            errors.push(w.error("write_format must be text, json, cbor or raw"));
        }
    }
    let pointer = raw
        .pointer
        .as_ref()
        .map(|s| s.value.clone())
        .unwrap_or_default();
    if let Some(ptr) = &raw.pointer {
        if !matches!(format, Format::Json | Format::Cbor | Format::Auto) {
            errors.push(ptr.error(format!(
                "`pointer` applies to json and cbor, not `format: {format}`"
            )));
        }
        if !ptr.value.is_empty() && !ptr.value.starts_with('/') {
            errors.push(ptr.error(format!(
                "`{}` is not a JSON pointer: it starts with `/` (e.g. /sensors/0/temp)",
                ptr.value
            )));
        }
    }
    if let Some(n) = &raw.senml_name {
        if !matches!(format, Format::SenmlJson | Format::SenmlCbor | Format::Auto) {
            errors.push(n.error(format!(
                "`senml_name` applies to senml_json and senml_cbor, not `format: {format}`"
            )));
        }
    }
    let method = match &raw.method {
        None => RequestType::Put,
        Some(m) => match m.value.trim().to_ascii_lowercase().as_str() {
            "put" => RequestType::Put,
            "post" => RequestType::Post,
            _ => {
                errors.push(m.error(format!("method must be put or post, not `{}`", m.value)));
                RequestType::Put
            }
        },
    };
    for (key, set) in [
        ("method", raw.method.as_ref().map(|m| m.error(""))),
        (
            "write_format",
            raw.write_format.as_ref().map(|m| m.error("")),
        ),
    ] {
        if let (Some(mut e), false) = (set, p.writable) {
            e.message = format!("`{key}` applies to writes, but the point is not `writable: true`");
            errors.push(e);
        }
    }
    if mode == Mode::Ingest && p.writable {
        errors.push(p.spec.error(format!(
            "point `{}` is `mode: ingest` (the device sends to us) and cannot be `writable: true`: there is no \
             resource to write to",
            p.name
        )));
    }
    if errors.len() > before {
        return None;
    }
    Some(CoapPoint {
        name: p.name.clone(),
        path,
        query,
        mode,
        extract: Extract {
            format,
            pointer,
            senml_name: raw
                .senml_name
                .map_or_else(|| p.name.to_string(), |n| n.value),
        },
        interval: p.poll_interval.unwrap_or(device.poll_interval),
        writable: p.writable,
        method,
        write_format,
    })
}
