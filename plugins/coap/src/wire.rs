//! CoAP messages on the wire (RFC 7252 §3): decoding datagrams with checks coap-lite leaves out, building
//! requests and responses, reading the options this adapter uses. Pure: no I/O. The datagram path of the
//! ingest server and of the client starts with [`decode`], which is what the fuzz target drives.
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// Largest datagram the ingest listener accepts (and the bound of [`decode`] and [`encode`]). RFC 7252 §4.6
/// keeps messages within an IP packet (1152 bytes of message is the advice); we accept up to this so that
/// 1024-byte blocks with generous options fit, and drop anything longer.
pub const MAX_DATAGRAM: usize = 1500;

/// Largest UDP payload: the 16-bit UDP length less its 8-byte header (IPv4 allows at most 65,507 of it, IPv6
/// 65,527). The client receives and decodes responses up to this ([`decode_up_to`]): a server may answer a
/// block-wise request with the whole representation in one datagram (RFC 7959 lets it ignore Block2), and
/// it is the client's `max_body`, not [`MAX_DATAGRAM`], that bounds what it accepts.
pub const MAX_UDP_PAYLOAD: usize = 65_527;

/// Option numbers (RFC 7252 §5.10, RFC 7641, RFC 7959).
pub mod opt {
    /// If-Match.
    pub const IF_MATCH: u16 = 1;
    /// Uri-Host.
    pub const URI_HOST: u16 = 3;
    /// ETag.
    pub const ETAG: u16 = 4;
    /// If-None-Match.
    pub const IF_NONE_MATCH: u16 = 5;
    /// Observe.
    pub const OBSERVE: u16 = 6;
    /// Uri-Port.
    pub const URI_PORT: u16 = 7;
    /// Uri-Path.
    pub const URI_PATH: u16 = 11;
    /// Content-Format.
    pub const CONTENT_FORMAT: u16 = 12;
    /// Max-Age.
    pub const MAX_AGE: u16 = 14;
    /// Uri-Query.
    pub const URI_QUERY: u16 = 15;
    /// Accept.
    pub const ACCEPT: u16 = 17;
    /// Block2.
    pub const BLOCK2: u16 = 23;
    /// Block1.
    pub const BLOCK1: u16 = 27;
    /// Size2.
    pub const SIZE2: u16 = 28;
    /// Size1.
    pub const SIZE1: u16 = 60;
    /// No-Response (RFC 7967).
    pub const NO_RESPONSE: u16 = 258;
}

/// Why a datagram is not a CoAP message we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than the bound ([`MAX_DATAGRAM`] for [`decode`]).
    #[error("datagram of {0} bytes is too long")]
    TooLong(usize),
    /// Not version 1.
    #[error("CoAP version {0} is not 1")]
    Version(u8),
    /// Header, token or options do not parse.
    #[error("malformed message: {0}")]
    Format(String),
    /// RFC 7252 §4.1: an empty message (code 0.00) must have no token, options or payload.
    #[error("empty message with content")]
    EmptyWithContent,
}

/// Decodes one datagram of at most [`MAX_DATAGRAM`] bytes. Every failure is an error, never a panic (fuzzed).
pub fn decode(buf: &[u8]) -> Result<Packet, WireError> {
    decode_up_to(buf, MAX_DATAGRAM)
}

/// Decodes one datagram of at most `max` bytes, with the checks of [`decode`] (which is this with
/// [`MAX_DATAGRAM`]).
pub fn decode_up_to(buf: &[u8], max: usize) -> Result<Packet, WireError> {
    if buf.len() > max {
        return Err(WireError::TooLong(buf.len()));
    }
    if let Some(first) = buf.first() {
        let version = first >> 6;
        if version != 1 {
            return Err(WireError::Version(version));
        }
    }
    let p = Packet::from_bytes(buf).map_err(|e| WireError::Format(format!("{e:?}")))?;
    if p.header.code == MessageClass::Empty
        && (!p.get_token().is_empty() || p.options().next().is_some() || !p.payload.is_empty())
    {
        return Err(WireError::EmptyWithContent);
    }
    Ok(p)
}

/// Encodes a packet we built; our packets always fit (bounded payloads), so a failure is reported, not
/// unwrapped.
pub fn encode(p: &Packet) -> Result<Vec<u8>, WireError> {
    p.to_bytes_with_limit(MAX_DATAGRAM)
        .map_err(|e| WireError::Format(format!("{e:?}")))
}

/// A CoAP code as `c.dd` (e.g. `2.05`, `4.04`).
pub fn code_string(code: MessageClass) -> String {
    code.to_string()
}

/// A human name for a response code, for diagnostics (`4.04 Not Found`).
pub fn code_name(code: MessageClass) -> String {
    let name = match code {
        MessageClass::Response(r) => format!("{r:?}"),
        MessageClass::Request(r) => format!("{r:?}"),
        MessageClass::Empty => "Empty".into(),
        MessageClass::Reserved(_) => "Reserved".into(),
    };
    // CamelCase -> words.
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            words.push(' ');
        }
        words.push(c);
    }
    format!("{} {words}", code_string(code))
}

/// Whether a response code is a success (2.xx).
pub fn is_success(code: MessageClass) -> bool {
    let raw: u8 = code.into();
    raw >> 5 == 2
}

/// An unsigned option value (RFC 7252 §3.2 `uint`): big-endian, leading zeros dropped, at most 4 bytes here.
pub fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

/// Reads a `uint` option value; `None` when longer than 4 bytes.
pub fn parse_uint(v: &[u8]) -> Option<u32> {
    if v.len() > 4 {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// The first value of an option as a `uint`.
pub fn uint_option(p: &Packet, number: u16) -> Option<u32> {
    p.get_first_option(CoapOption::from(number))
        .and_then(|v| parse_uint(v))
}

/// A Block1/Block2 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block size is `2^(szx+4)`, 16 to 1024 (7 is reserved for BERT and refused).
    pub szx: u8,
}

impl Block {
    /// Block size in bytes.
    pub fn size(&self) -> usize {
        1usize << (self.szx + 4)
    }

    /// The size exponent for a block size (a power of two, 16 to 1024).
    pub fn szx_for(size: u16) -> Option<u8> {
        (0u8..=6).find(|&s| (1u32 << (s + 4)) == u32::from(size))
    }

    /// Parses an option value; `None` if malformed (more than 3 bytes, or szx 7).
    pub fn parse(v: &[u8]) -> Option<Block> {
        if v.len() > 3 {
            return None;
        }
        let x = parse_uint(v)?;
        let szx = (x & 0x7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block {
            num: x >> 4,
            more: x & 0x8 != 0,
            szx,
        })
    }

    /// The option value.
    pub fn to_bytes(self) -> Vec<u8> {
        uint_bytes((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }
}

/// The Block2 option of a packet, if present and well-formed.
pub fn block2(p: &Packet) -> Option<Block> {
    p.get_first_option(CoapOption::Block2)
        .and_then(|v| Block::parse(v))
}

/// The request path from the Uri-Path options, as `/a/b` (`/` when there are none).
pub fn uri_path(p: &Packet) -> String {
    let mut s = String::new();
    if let Some(segs) = p.get_option(CoapOption::UriPath) {
        for seg in segs {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(seg));
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Builds a request with a path (`/a/b`) and an optional query (`x=1&y=2`).
pub fn request(method: RequestType, path: &str, query: Option<&str>) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.code = MessageClass::Request(method);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if let Some(q) = query {
        for part in q.split('&').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriQuery, part.as_bytes().to_vec());
        }
    }
    p
}

/// The response to `req` (piggybacked on the ACK of a CON, a NON for a NON), with a payload.
pub fn response_to(req: &Packet, code: ResponseType, payload: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(match req.header.get_type() {
        MessageType::Confirmable => MessageType::Acknowledgement,
        _ => MessageType::NonConfirmable,
    });
    p.header.code = MessageClass::Response(code);
    // A NON response gets its own message id; the caller replaces it. A piggybacked one echoes the request's.
    p.header.message_id = req.header.message_id;
    p.set_token(req.get_token().to_vec());
    if !payload.is_empty() {
        p.payload = payload.to_vec();
    }
    p
}

/// An empty message (ACK or RST) for `mid`.
pub fn empty(kind: MessageType, mid: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p
}

/// Whether an option number is critical (RFC 7252 §5.4.1: odd numbers).
pub fn is_critical(number: u16) -> bool {
    number & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_round_trip() {
        for v in [0u32, 1, 255, 256, 65535, 70000, u32::MAX] {
            assert_eq!(parse_uint(&uint_bytes(v)), Some(v));
        }
        assert_eq!(uint_bytes(0), Vec::<u8>::new());
        assert_eq!(parse_uint(&[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn block_values() {
        let b = Block {
            num: 3,
            more: true,
            szx: 6,
        };
        assert_eq!(Block::parse(&b.to_bytes()), Some(b));
        assert_eq!(b.size(), 1024);
        assert_eq!(Block::szx_for(64), Some(2));
        assert_eq!(Block::szx_for(100), None);
        assert_eq!(Block::parse(&[0x0F]), None, "szx 7 (BERT) is refused");
    }

    #[test]
    fn decode_rejects_garbage_and_accepts_requests() {
        assert!(decode(&[]).is_err());
        assert!(matches!(
            decode(&[0x80, 1, 0, 1]),
            Err(WireError::Version(2))
        ));
        assert!(
            decode(&[0x49, 1, 0, 1]).is_err(),
            "token length past the end"
        );
        assert!(matches!(
            decode(&[0x41, 0, 0, 1, 7]),
            Err(WireError::EmptyWithContent)
        ));
        assert!(matches!(
            decode(&vec![0x40; MAX_DATAGRAM + 1]),
            Err(WireError::TooLong(_))
        ));
        let mut req = request(RequestType::Put, "/a/b", Some("x=1"));
        req.header.set_type(MessageType::Confirmable);
        req.header.message_id = 7;
        req.set_token(vec![1, 2]);
        req.payload = b"21.5".to_vec();
        let back = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(uri_path(&back), "/a/b");
        assert_eq!(back.payload, b"21.5");
        assert_eq!(back.get_token(), &[1, 2]);
    }

    #[test]
    fn decode_up_to_takes_its_own_bound() {
        let mut resp = response_to(
            &{
                let mut r = request(RequestType::Get, "/big", None);
                r.header.set_type(MessageType::Confirmable);
                r
            },
            ResponseType::Content,
            &[b'x'; 3000],
        );
        resp.header.message_id = 9;
        let bytes = resp.to_bytes_unlimited().unwrap();
        assert!(matches!(decode(&bytes), Err(WireError::TooLong(_))));
        let back = decode_up_to(&bytes, MAX_UDP_PAYLOAD).unwrap();
        assert_eq!(back.payload.len(), 3000);
        assert!(matches!(
            decode_up_to(&bytes, bytes.len() - 1),
            Err(WireError::TooLong(n)) if n == bytes.len()
        ));
    }

    #[test]
    fn code_names() {
        assert_eq!(
            code_name(MessageClass::Response(ResponseType::NotFound)),
            "4.04 Not Found"
        );
        assert!(is_success(MessageClass::Response(ResponseType::Changed)));
        assert!(!is_success(MessageClass::Response(
            ResponseType::BadRequest
        )));
    }
}
