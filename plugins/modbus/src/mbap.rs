//! Modbus TCP (MBAP framing) on a plain socket, with one buffer sized to the protocol.
//!
//! tokio-modbus frames its TCP client through `tokio_util`'s `Framed`, which reserves 8 KiB for reading and
//! 8 KiB for writing per connection, while a Modbus TCP frame is at most 260 bytes. A gateway with one
//! connection per meter spent 16 KiB per device on those buffers (heaptrack, 500 devices: 8 MB of a 55 MB
//! heap). This client keeps one 260-byte buffer per connection and behaves as tokio-modbus did for a line:
//! a transaction id per request; the answer's transaction id, unit and function code checked against the
//! request; an exception answer returned as the device's answer; anything malformed is a protocol error (the
//! line then drops the connection). RTU framing (serial lines, RTU over TCP) still goes through tokio-modbus.
use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_modbus::{ExceptionCode, Request, Response};

/// The MBAP header: transaction id, protocol id (0), length of what follows, unit id.
const HEADER: usize = 7;
/// A Modbus TCP application data unit is at most 260 bytes: the header and a 253-byte PDU.
const MAX_ADU: usize = 260;
const MAX_PDU: usize = MAX_ADU - HEADER;
/// Reads of stale bytes before a request, at most (each up to the buffer's size).
const MAX_DISCARD_READS: usize = 128;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum MbapError {
    /// The socket failed or closed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The device had closed (or reset) the connection before any byte of the answer arrived: seen before
    /// the request was sent, or instead of its answer. On a connection that served earlier requests this is
    /// a device that allows one request per connection, or closed an idle one; the line reconnects and sends
    /// the request again.
    #[error("{0}")]
    Closed(io::Error),
    /// The answer (or the request) breaks the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// One Modbus TCP connection.
pub struct TcpClient {
    stream: TcpStream,
    next_tid: u16,
    buf: [u8; MAX_ADU],
}

impl TcpClient {
    /// Wraps a connected socket.
    pub fn new(stream: TcpStream) -> Self {
        TcpClient {
            stream,
            next_tid: 0,
            buf: [0; MAX_ADU],
        }
    }

    /// Sends `request` to `unit` and reads its answer: the device's response or exception, or an error.
    /// Not cancel-safe: a caller that drops the future half-way must drop the connection (the line does).
    pub async fn call(
        &mut self,
        unit: u8,
        request: &Request<'_>,
    ) -> Result<Result<Response, ExceptionCode>, MbapError> {
        let (fc, pdu_len) = encode_pdu(request, &mut self.buf[HEADER..])?;
        let tid = self.next_tid;
        self.next_tid = tid.wrapping_add(1);
        // pdu_len <= 253, so the length field (unit + PDU) fits.
        let len = (pdu_len + 1) as u16;
        self.buf[0..2].copy_from_slice(&tid.to_be_bytes());
        self.buf[2..4].copy_from_slice(&[0, 0]);
        self.buf[4..6].copy_from_slice(&len.to_be_bytes());
        self.buf[6] = unit;
        let frame_len = HEADER + pdu_len;
        self.discard_stale(frame_len)?;
        if let Err(e) = self.stream.write_all(&self.buf[..frame_len]).await {
            return Err(closed_or_io(e, 0));
        }

        // One read usually brings the whole answer (the socket is read into the full buffer, and only one
        // request is ever outstanding); bytes past the answer's end are dropped with it.
        let mut have = 0;
        let total = loop {
            let n = match self.stream.read(&mut self.buf[have..]).await {
                Ok(n) => n,
                Err(e) => return Err(closed_or_io(e, have)),
            };
            if n == 0 {
                return Err(closed_or_io(io::ErrorKind::UnexpectedEof.into(), have));
            }
            have += n;
            if have < HEADER {
                continue;
            }
            let proto = u16::from_be_bytes([self.buf[2], self.buf[3]]);
            let rlen = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
            if proto != 0 {
                return Err(MbapError::Protocol(format!(
                    "protocol id {proto} in the answer, expected 0"
                )));
            }
            if !(2..=MAX_PDU + 1).contains(&rlen) {
                return Err(MbapError::Protocol(format!(
                    "answer length {rlen} out of range 2..={}",
                    MAX_PDU + 1
                )));
            }
            if have >= HEADER + rlen - 1 {
                break HEADER + rlen - 1;
            }
        };
        let rtid = u16::from_be_bytes([self.buf[0], self.buf[1]]);
        let runit = self.buf[6];
        if rtid != tid {
            return Err(MbapError::Protocol(format!(
                "answer to transaction {rtid}, expected transaction {tid}"
            )));
        }
        if runit != unit {
            return Err(MbapError::Protocol(format!(
                "answer from unit {runit}, expected unit {unit}"
            )));
        }
        decode_response(fc, &self.buf[HEADER..total])
    }

    /// Throws away whatever is waiting to be read: bytes present before a request can only be the late answer
    /// to an abandoned request (or noise) and would be taken for the new request's answer. `keep` bytes at
    /// the start of the buffer (the encoded request) are left alone. A connection the device has already
    /// closed is reported as [`MbapError::Closed`], and the request is not sent.
    fn discard_stale(&mut self, keep: usize) -> Result<(), MbapError> {
        for _ in 0..MAX_DISCARD_READS {
            match self.stream.try_read(&mut self.buf[keep..]) {
                Ok(0) => {
                    return Err(MbapError::Closed(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => tracing::debug!(bytes = n, "discarded stale bytes before a request"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(closed_or_io(e, 0)),
            }
        }
        Ok(())
    }
}

/// Whether `e` says that the peer closed or reset the connection.
pub(crate) fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// `e` as [`MbapError::Closed`] if the peer closed the connection before any byte of the answer arrived
/// (`have` bytes did), else as [`MbapError::Io`].
fn closed_or_io(e: io::Error, have: usize) -> MbapError {
    if have == 0 && is_closed(&e) {
        MbapError::Closed(e)
    } else {
        MbapError::Io(e)
    }
}

/// A cursor that refuses to write past the end of a PDU.
struct PduWriter<'b> {
    out: &'b mut [u8],
    len: usize,
}

impl PduWriter<'_> {
    fn u8(&mut self, v: u8) -> Result<(), MbapError> {
        if self.len >= MAX_PDU || self.len >= self.out.len() {
            return Err(MbapError::Protocol(format!(
                "request longer than a Modbus PDU ({MAX_PDU} bytes)"
            )));
        }
        self.out[self.len] = v;
        self.len += 1;
        Ok(())
    }

    fn u16(&mut self, v: u16) -> Result<(), MbapError> {
        let [hi, lo] = v.to_be_bytes();
        self.u8(hi)?;
        self.u8(lo)
    }
}

/// Writes `request`'s PDU at the start of `out`: its function code and length.
fn encode_pdu(request: &Request<'_>, out: &mut [u8]) -> Result<(u8, usize), MbapError> {
    let mut w = PduWriter { out, len: 0 };
    let fc = match request {
        Request::ReadCoils(a, q)
        | Request::ReadDiscreteInputs(a, q)
        | Request::ReadHoldingRegisters(a, q)
        | Request::ReadInputRegisters(a, q) => {
            let fc = match request {
                Request::ReadCoils(..) => 0x01,
                Request::ReadDiscreteInputs(..) => 0x02,
                Request::ReadHoldingRegisters(..) => 0x03,
                _ => 0x04,
            };
            w.u8(fc)?;
            w.u16(*a)?;
            w.u16(*q)?;
            fc
        }
        Request::WriteSingleCoil(a, on) => {
            w.u8(0x05)?;
            w.u16(*a)?;
            w.u16(if *on { 0xFF00 } else { 0x0000 })?;
            0x05
        }
        Request::WriteSingleRegister(a, v) => {
            w.u8(0x06)?;
            w.u16(*a)?;
            w.u16(*v)?;
            0x06
        }
        Request::WriteMultipleCoils(a, coils) => {
            let (qty, bytes) = counts(coils.len(), coils.len().div_ceil(8))?;
            w.u8(0x0F)?;
            w.u16(*a)?;
            w.u16(qty)?;
            w.u8(bytes)?;
            for chunk in coils.chunks(8) {
                let byte = chunk
                    .iter()
                    .enumerate()
                    .fold(0u8, |b, (i, on)| if *on { b | (1 << i) } else { b });
                w.u8(byte)?;
            }
            0x0F
        }
        Request::WriteMultipleRegisters(a, words) => {
            let (qty, bytes) = counts(words.len(), words.len() * 2)?;
            w.u8(0x10)?;
            w.u16(*a)?;
            w.u16(qty)?;
            w.u8(bytes)?;
            for v in words.iter() {
                w.u16(*v)?;
            }
            0x10
        }
        other => {
            return Err(MbapError::Protocol(format!(
                "request {other:?} is not supported on a Modbus TCP line"
            )))
        }
    };
    Ok((fc, w.len))
}

/// The quantity and byte count fields of a multiple write, refused when they do not fit a PDU.
fn counts(quantity: usize, bytes: usize) -> Result<(u16, u8), MbapError> {
    match (u16::try_from(quantity), u8::try_from(bytes)) {
        (Ok(q), Ok(b)) if q > 0 => Ok((q, b)),
        _ => Err(MbapError::Protocol(format!(
            "a write of {quantity} values does not fit a Modbus PDU"
        ))),
    }
}

fn malformed(fc: u8, what: &str) -> MbapError {
    MbapError::Protocol(format!("malformed answer to function {fc:#04x}: {what}"))
}

/// Decodes the answer's PDU to a request with function code `fc`.
fn decode_response(fc: u8, pdu: &[u8]) -> Result<Result<Response, ExceptionCode>, MbapError> {
    let Some((&rfc, body)) = pdu.split_first() else {
        return Err(malformed(fc, "empty"));
    };
    if rfc == fc | 0x80 {
        return match body {
            [code] => Ok(Err(ExceptionCode::new(*code))),
            _ => Err(malformed(fc, "exception answer of the wrong length")),
        };
    }
    if rfc != fc {
        return Err(MbapError::Protocol(format!(
            "function code {rfc:#04x} in the answer to function {fc:#04x}"
        )));
    }
    let counted = |body: &[u8]| -> Result<Vec<u8>, MbapError> {
        match body.split_first() {
            Some((&n, data)) if data.len() == usize::from(n) => Ok(data.to_vec()),
            _ => Err(malformed(fc, "byte count does not match the data")),
        }
    };
    let pair = |body: &[u8]| -> Result<(u16, u16), MbapError> {
        match body {
            [a, b, c, d] => Ok((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
            _ => Err(malformed(fc, "expected 4 bytes after the function code")),
        }
    };
    let response = match fc {
        0x01 | 0x02 => {
            let bytes = counted(body)?;
            // The answer does not say how many bits were asked for: every bit of every byte is returned
            // (the caller truncates), as tokio-modbus does.
            let bits: Vec<bool> = bytes
                .iter()
                .flat_map(|b| (0..8).map(move |i| b & (1 << i) != 0))
                .collect();
            if fc == 0x01 {
                Response::ReadCoils(bits)
            } else {
                Response::ReadDiscreteInputs(bits)
            }
        }
        0x03 | 0x04 => {
            let bytes = counted(body)?;
            if bytes.len() % 2 != 0 {
                return Err(malformed(fc, "odd byte count for registers"));
            }
            let words: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
                .collect();
            if fc == 0x03 {
                Response::ReadHoldingRegisters(words)
            } else {
                Response::ReadInputRegisters(words)
            }
        }
        0x05 => {
            let (a, v) = pair(body)?;
            let on = match v {
                0xFF00 => true,
                0x0000 => false,
                _ => return Err(malformed(fc, "coil value neither 0xFF00 nor 0x0000")),
            };
            Response::WriteSingleCoil(a, on)
        }
        0x06 => {
            let (a, v) = pair(body)?;
            Response::WriteSingleRegister(a, v)
        }
        0x0F => {
            let (a, q) = pair(body)?;
            Response::WriteMultipleCoils(a, q)
        }
        0x10 => {
            let (a, q) = pair(body)?;
            Response::WriteMultipleRegisters(a, q)
        }
        _ => return Err(malformed(fc, "unsupported function")),
    };
    Ok(Ok(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(req: Request<'_>) -> Vec<u8> {
        let mut out = [0u8; MAX_PDU];
        let (_, n) = encode_pdu(&req, &mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn requests_encode_as_the_spec_says() {
        assert_eq!(
            pdu(Request::ReadHoldingRegisters(0x006B, 3)),
            [0x03, 0x00, 0x6B, 0x00, 0x03]
        );
        assert_eq!(pdu(Request::ReadCoils(19, 19)), [0x01, 0, 19, 0, 19]);
        assert_eq!(pdu(Request::ReadDiscreteInputs(1, 2)), [0x02, 0, 1, 0, 2]);
        assert_eq!(pdu(Request::ReadInputRegisters(8, 1)), [0x04, 0, 8, 0, 1]);
        assert_eq!(
            pdu(Request::WriteSingleCoil(0xAC, true)),
            [0x05, 0, 0xAC, 0xFF, 0]
        );
        assert_eq!(pdu(Request::WriteSingleRegister(1, 3)), [0x06, 0, 1, 0, 3]);
        // The spec's example: coils 20..29 = 1 0 1 1 0 0 1 1 | 1 0 -> 0xCD 0x01.
        let coils = [
            true, false, true, true, false, false, true, true, true, false,
        ];
        assert_eq!(
            pdu(Request::WriteMultipleCoils(19, coils[..].into())),
            [0x0F, 0, 19, 0, 10, 2, 0xCD, 0x01]
        );
        assert_eq!(
            pdu(Request::WriteMultipleRegisters(
                1,
                [0x000A, 0x0102][..].into()
            )),
            [0x10, 0, 1, 0, 2, 4, 0, 0x0A, 1, 2]
        );
    }

    #[test]
    fn oversized_and_empty_writes_are_refused() {
        let mut out = [0u8; MAX_PDU];
        let words = vec![0u16; 124];
        assert!(encode_pdu(&Request::WriteMultipleRegisters(0, words.into()), &mut out).is_err());
        let words = vec![0u16; 123];
        assert!(encode_pdu(&Request::WriteMultipleRegisters(0, words.into()), &mut out).is_ok());
        let none: Vec<u16> = Vec::new();
        assert!(encode_pdu(&Request::WriteMultipleRegisters(0, none.into()), &mut out).is_err());
    }

    #[test]
    fn answers_decode_and_malformed_ones_are_errors() {
        assert_eq!(
            decode_response(0x03, &[0x03, 4, 0x02, 0x2B, 0, 0x64]).unwrap(),
            Ok(Response::ReadHoldingRegisters(vec![0x022B, 0x0064]))
        );
        assert_eq!(
            decode_response(0x04, &[0x04, 2, 0, 10]).unwrap(),
            Ok(Response::ReadInputRegisters(vec![10]))
        );
        let Ok(Response::ReadCoils(bits)) = decode_response(0x01, &[0x01, 1, 0b0000_0101]).unwrap()
        else {
            panic!("coils expected")
        };
        assert_eq!(&bits[..3], [true, false, true]);
        assert_eq!(bits.len(), 8);
        assert_eq!(
            decode_response(0x05, &[0x05, 0, 0xAC, 0xFF, 0]).unwrap(),
            Ok(Response::WriteSingleCoil(0xAC, true))
        );
        assert_eq!(
            decode_response(0x10, &[0x10, 0, 1, 0, 2]).unwrap(),
            Ok(Response::WriteMultipleRegisters(1, 2))
        );
        assert_eq!(
            decode_response(0x03, &[0x83, 0x02]).unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        for bad in [
            &[][..],
            &[0x03, 4, 0, 1][..],    // byte count larger than the data
            &[0x03, 3, 0, 1, 2][..], // odd byte count
            &[0x04, 2, 0, 1][..],    // another function's answer
            &[0x83, 2, 0][..],       // exception of the wrong length
            &[0x03][..],             // no byte count
        ] {
            assert!(decode_response(0x03, bad).is_err(), "{bad:?}");
        }
        assert!(decode_response(0x05, &[0x05, 0, 1, 0x12, 0x34]).is_err());
    }

    /// How a test server answers one 12-byte read request.
    type Answer = fn(&[u8; 12]) -> Vec<u8>;

    /// A loopback server that answers each 12-byte read request with `answer(request)`.
    async fn server(answers: Vec<Answer>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for answer in answers {
                let mut req = [0u8; 12];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                s.write_all(&answer(&req)).await.unwrap();
            }
        });
        (addr, task)
    }

    fn answer_with_tid(req: &[u8; 12], tid: u16) -> Vec<u8> {
        let mut a = tid.to_be_bytes().to_vec();
        a.extend([0, 0, 0, 5, req[6], 0x03, 2, 0, 42]);
        a
    }

    #[tokio::test]
    async fn answers_are_matched_to_their_request() {
        let (addr, task) = server(vec![
            |r| answer_with_tid(r, u16::from_be_bytes([r[0], r[1]])),
            |r| answer_with_tid(r, u16::from_be_bytes([r[0], r[1]]).wrapping_add(7)),
        ])
        .await;
        let mut c = TcpClient::new(TcpStream::connect(addr).await.unwrap());
        let req = Request::ReadHoldingRegisters(0, 1);
        assert_eq!(
            c.call(5, &req).await.unwrap(),
            Ok(Response::ReadHoldingRegisters(vec![42]))
        );
        let e = c.call(5, &req).await.unwrap_err();
        assert!(
            matches!(&e, MbapError::Protocol(m) if m.contains("transaction 8") && m.contains("expected transaction 1")),
            "{e}"
        );
        task.await.unwrap();
        // The server hung up between two requests: the next call says the connection was closed before any
        // answer (the line then reconnects and sends it again).
        assert!(matches!(c.call(5, &req).await, Err(MbapError::Closed(_))));
    }

    #[tokio::test]
    async fn an_answer_from_another_unit_says_which() {
        let (addr, task) = server(vec![|r| {
            let mut a = answer_with_tid(r, u16::from_be_bytes([r[0], r[1]]));
            a[6] = 2;
            a
        }])
        .await;
        let mut c = TcpClient::new(TcpStream::connect(addr).await.unwrap());
        let e = c
            .call(1, &Request::ReadHoldingRegisters(0, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, MbapError::Protocol(m) if m == "answer from unit 2, expected unit 1"),
            "{e}"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_closed_half_way_through_an_answer_is_not_a_clean_close() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 12];
            s.read_exact(&mut req).await.unwrap();
            // Half an answer, then the device hangs up.
            s.write_all(&answer_with_tid(&req, 0)[..5]).await.unwrap();
        });
        let mut c = TcpClient::new(TcpStream::connect(addr).await.unwrap());
        let e = c
            .call(1, &Request::ReadHoldingRegisters(0, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, MbapError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e:?}"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stale_bytes_before_a_request_are_discarded() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            // The late answer to a request the client gave up on.
            s.write_all(&[0, 9, 0, 0, 0, 5, 1, 0x03, 2, 0, 7])
                .await
                .unwrap();
            let mut req = [0u8; 12];
            s.read_exact(&mut req).await.unwrap();
            let tid = u16::from_be_bytes([req[0], req[1]]);
            s.write_all(&answer_with_tid(&req, tid)).await.unwrap();
        });
        let mut c = TcpClient::new(TcpStream::connect(addr).await.unwrap());
        // Wait until the stale answer is there, so that it is waiting when the request goes out.
        c.stream.readable().await.unwrap();
        assert_eq!(
            c.call(1, &Request::ReadHoldingRegisters(0, 1))
                .await
                .unwrap(),
            Ok(Response::ReadHoldingRegisters(vec![42]))
        );
        task.await.unwrap();
    }
}
