//! One-shot requests for `fieldbridge coap discover|get|put` (commissioning), on the adapter's own client,
//! decoder and link-format parser.
use coap_lite::link_format::LinkFormatParser;
pub use coap_lite::RequestType;

/// PUT, for [`put`].
pub const PUT: RequestType = RequestType::Put;
/// POST, for [`put`].
pub const POST: RequestType = RequestType::Post;

use crate::client::{Client, ClientError, Response, Transmission};
use crate::content::{cf, encode_write, parse_text, Format};
use crate::uri::{CoapUri, UriError};

/// One link of a `/.well-known/core` document (RFC 6690).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The target (`/sensors/temp`).
    pub target: String,
    /// Attributes in document order (`rt`, `if`, `ct`, `obs`, …); a flag attribute has an empty value.
    pub attrs: Vec<(String, String)>,
}

impl Link {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the resource is observable (`obs`).
    pub fn observable(&self) -> bool {
        self.attr("obs").is_some()
    }
}

/// Most links parsed from one document.
pub const MAX_LINKS: usize = 4096;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Bad arguments.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// Bad arguments other than the URI.
    #[error("{0}")]
    Invalid(String),
    /// The server could not be reached.
    #[error(transparent)]
    Transport(#[from] ClientError),
    /// The server answered with an error code.
    #[error("{0}")]
    Refused(String),
    /// The link-format document does not parse.
    #[error("link format: {0}")]
    LinkFormat(String),
}

/// Parses an RFC 6690 link-format document.
pub fn parse_links(doc: &str) -> Result<Vec<Link>, ProbeError> {
    let mut out = Vec::new();
    for item in LinkFormatParser::new(doc) {
        let (target, attrs) = item.map_err(|e| ProbeError::LinkFormat(format!("{e:?}")))?;
        if out.len() >= MAX_LINKS {
            return Err(ProbeError::LinkFormat(format!(
                "more than {MAX_LINKS} links"
            )));
        }
        out.push(Link {
            target: target.to_owned(),
            attrs: attrs.map(|(k, v)| (k.to_owned(), v.to_string())).collect(),
        });
    }
    Ok(out)
}

async fn client(uri: &CoapUri, tx: Transmission) -> Result<Client, ProbeError> {
    Ok(Client::connect(&uri.authority(), tx).await?)
}

/// GET `/.well-known/core` of `uri`'s server and parse it.
pub async fn discover(uri: &str, tx: Transmission) -> Result<Vec<Link>, ProbeError> {
    let u = CoapUri::parse(uri)?;
    let c = client(&u, tx).await?;
    let resp = c.get("/.well-known/core", None).await?;
    if !resp.is_success() {
        return Err(ProbeError::Refused(resp.describe()));
    }
    if resp.content_format.is_some_and(|f| f != cf::LINK_FORMAT) {
        return Err(ProbeError::LinkFormat(format!(
            "content format {} is not application/link-format (40)",
            resp.content_format.unwrap_or_default()
        )));
    }
    let text =
        String::from_utf8(resp.payload).map_err(|_| ProbeError::LinkFormat("not UTF-8".into()))?;
    parse_links(&text)
}

/// GET a resource (block-wise if needed).
pub async fn get(uri: &str, tx: Transmission) -> Result<Response, ProbeError> {
    let u = CoapUri::parse(uri)?;
    let c = client(&u, tx).await?;
    let resp = c.get(&u.path, u.query.as_deref()).await?;
    if !resp.is_success() {
        return Err(ProbeError::Refused(resp.describe()));
    }
    Ok(resp)
}

/// PUT or POST a value, encoded as the daemon would for `write_format`.
pub async fn put(
    uri: &str,
    payload: &str,
    method: RequestType,
    format: Format,
    tx: Transmission,
) -> Result<Response, ProbeError> {
    let u = CoapUri::parse(uri)?;
    let (bytes, cf) = encode_write(&parse_text(payload), format).map_err(ProbeError::Invalid)?;
    let c = client(&u, tx).await?;
    let resp = c
        .send(method, &u.path, u.query.as_deref(), &bytes, Some(cf))
        .await?;
    if !resp.is_success() {
        return Err(ProbeError::Refused(resp.describe()));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        let l =
            parse_links(r#"</sensors/temp>;rt="temperature";obs;ct=0,</a>;if="sensor""#).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].target, "/sensors/temp");
        assert_eq!(l[0].attr("rt"), Some("temperature"));
        assert!(l[0].observable());
        assert!(!l[1].observable());
        assert!(parse_links("garbage").is_err());
    }
}
