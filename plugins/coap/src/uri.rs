//! `coap://host[:port][/path][?query]` (RFC 7252 §6.1). Only the `coap` scheme: DTLS (`coaps`) is not built.
use std::fmt;

/// The default CoAP port.
pub const DEFAULT_PORT: u16 = 5683;

/// A parsed CoAP URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoapUri {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// Path, `/` when empty, never percent-encoded here.
    pub path: String,
    /// Query without the `?`.
    pub query: Option<String>,
}

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Not `coap://`.
    #[error("`{0}`: only coap:// URIs are supported (coaps:// needs DTLS, which this adapter does not do)")]
    Scheme(String),
    /// No host.
    #[error("`{0}`: the host is empty")]
    NoHost(String),
    /// A bad port.
    #[error("`{0}`: `{1}` is not a port (1 to 65535)")]
    Port(String, String),
    /// A fragment (not allowed in CoAP URIs).
    #[error("`{0}`: CoAP URIs have no #fragment")]
    Fragment(String),
}

impl CoapUri {
    /// Parses a URI.
    pub fn parse(s: &str) -> Result<CoapUri, UriError> {
        let s = s.trim();
        let rest = s
            .strip_prefix("coap://")
            .or_else(|| s.strip_prefix("COAP://"))
            .ok_or_else(|| UriError::Scheme(s.to_owned()))?;
        if rest.contains('#') {
            return Err(UriError::Fragment(s.to_owned()));
        }
        let (authority, path_query) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| UriError::NoHost(s.to_owned()))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UriError::NoHost(s.to_owned()));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UriError::Port(s.to_owned(), p.to_owned())),
            },
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path_query, None),
        };
        Ok(CoapUri {
            host: host.to_owned(),
            port,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_owned()
            },
            query: query.filter(|q| !q.is_empty()),
        })
    }

    /// `host:port` for resolution (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for CoapUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coap://{}{}", self.authority(), self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// Splits a point's `path` (`/a/b?x=1`) into path and query.
pub fn split_path(p: &str) -> (String, Option<String>) {
    let (path, query) = match p.split_once('?') {
        Some((a, b)) => (a, Some(b.to_owned())),
        None => (p, None),
    };
    let path = format!("/{}", path.trim_start_matches('/'));
    (path, query.filter(|q| !q.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u = CoapUri::parse("coap://10.0.0.5").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.0.5", 5683, "/")
        );
        let u = CoapUri::parse("coap://[::1]:5684/a/b?x=1").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5684);
        assert_eq!(u.path, "/a/b");
        assert_eq!(u.query.as_deref(), Some("x=1"));
        assert_eq!(u.to_string(), "coap://[::1]:5684/a/b?x=1");
        assert!(matches!(
            CoapUri::parse("coaps://h"),
            Err(UriError::Scheme(_))
        ));
        assert!(matches!(
            CoapUri::parse("coap://h:0"),
            Err(UriError::Port(..))
        ));
        assert!(matches!(
            CoapUri::parse("coap://:5683"),
            Err(UriError::NoHost(_))
        ));
        assert_eq!(split_path("a/b?q=1"), ("/a/b".into(), Some("q=1".into())));
    }
}
