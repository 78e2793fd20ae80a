//! A minimal raw-TCP MQTT 3.1.1 client on the project's codec: just what the load generator needs (CONNECT,
//! SUBSCRIBE, pipelined PUBLISH/PUBACK). Every wait is bounded by a timeout.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use fieldbridge::mqtt::{
    self, Connect, Packet, Properties, Protocol, PubResp, Publish, QoS, RetainHandling, Subscribe,
    Subscription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Both brokers are driven with MQTT 3.1.1, the version most field clients speak.
pub const PROTO: Protocol = Protocol::V311;

/// No client-side packet size limit.
pub const MAX_PACKET: u32 = u32::MAX;

/// Payload layout (little endian): publisher id u32, sequence u64, send time in ns since the run's base u64,
/// then filler up to the payload size.
pub const HEADER_LEN: usize = 20;

/// Bound on a single handshake step (CONNECT, SUBSCRIBE).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client: the socket and the bytes read but not yet decoded.
pub struct Client {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
}

impl Client {
    /// Connects, sends CONNECT (clean session, keepalive 0) and waits for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Result<Client> {
        let fut = async {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let mut c = Client {
                stream,
                rbuf: BytesMut::with_capacity(4096),
            };
            let connect = Connect {
                protocol: PROTO,
                clean_start: true,
                keep_alive: 0,
                client_id: client_id.to_string(),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            };
            c.send(&Packet::Connect(Box::new(connect))).await?;
            match c.recv().await? {
                Packet::ConnAck(ack) if ack.reason_code == 0 => Ok(c),
                Packet::ConnAck(ack) => {
                    bail!("CONNACK refused with code 0x{:02x}", ack.reason_code)
                }
                other => bail!("expected CONNACK, got {other:?}"),
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
            .await
            .with_context(|| format!("no CONNACK from {addr} within {HANDSHAKE_TIMEOUT:?}"))?
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut buf = BytesMut::with_capacity(mqtt::encoded_len(packet, PROTO));
        mqtt::encode(packet, PROTO, &mut buf);
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    /// Reads until one whole packet is decoded (unbounded: callers wrap it in a timeout).
    pub async fn recv(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = mqtt::decode(&mut self.rbuf, Some(PROTO), MAX_PACKET)? {
                return Ok(p);
            }
            self.rbuf.reserve(4096);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Subscribes to one filter and waits for a SUBACK granting it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let fut = async {
            let sub = Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                subscriptions: vec![Subscription {
                    filter: filter.to_string(),
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::default(),
                }],
            };
            self.send(&Packet::Subscribe(sub)).await?;
            match self.recv().await? {
                Packet::SubAck(ack) => {
                    let code = ack.reason_codes.first().copied().unwrap_or(0x80);
                    if code >= 0x80 {
                        bail!("SUBACK refused {filter}: 0x{code:02x}");
                    }
                    if code < qos as u8 {
                        bail!(
                            "SUBACK for {filter} granted QoS {code}, asked for {}",
                            qos as u8
                        );
                    }
                    Ok(())
                }
                // Retained messages cannot come first: every topic the bench uses is fresh.
                other => bail!("expected SUBACK, got {other:?}"),
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
            .await
            .with_context(|| format!("no SUBACK for {filter} within {HANDSHAKE_TIMEOUT:?}"))?
    }
}

/// Appends PUBLISH packets to a write buffer with the payload header patched in place, so that the hot path
/// costs one codec call and no allocation per message.
pub struct PublishEncoder {
    template: Publish,
    payload_len: usize,
    publisher: u32,
}

impl PublishEncoder {
    pub fn new(topic: Arc<str>, qos: QoS, payload_len: usize, publisher: u32) -> Self {
        assert!(
            payload_len >= HEADER_LEN,
            "payload must hold the {HEADER_LEN}-byte header"
        );
        PublishEncoder {
            template: Publish {
                dup: false,
                qos,
                retain: false,
                topic,
                packet_id: 0,
                properties: Properties::default(),
                payload: Bytes::from(vec![0xAB; payload_len]),
            },
            payload_len,
            publisher,
        }
    }

    /// Appends one PUBLISH with `seq` and `ts_ns`; for QoS > 0 the packet id cycles through 1..=65535.
    pub fn push(&mut self, out: &mut BytesMut, seq: u64, ts_ns: u64) {
        if self.template.qos != QoS::AtMostOnce {
            self.template.packet_id = (seq % 65_535) as u16 + 1;
        }
        mqtt::encode_publish(&self.template, PROTO, out);
        let end = out.len();
        let p = &mut out[end - self.payload_len..end - self.payload_len + HEADER_LEN];
        p[0..4].copy_from_slice(&self.publisher.to_le_bytes());
        p[4..12].copy_from_slice(&seq.to_le_bytes());
        p[12..20].copy_from_slice(&ts_ns.to_le_bytes());
    }
}

/// The header of a payload the load generator produced.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub ts_ns: u64,
}

pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < HEADER_LEN {
        return None;
    }
    Some(Stamp {
        publisher: u32::from_le_bytes(payload[0..4].try_into().ok()?),
        seq: u64::from_le_bytes(payload[4..12].try_into().ok()?),
        ts_ns: u64::from_le_bytes(payload[12..20].try_into().ok()?),
    })
}

/// Appends a PUBACK.
pub fn push_puback(out: &mut BytesMut, packet_id: u16) {
    let ack = Packet::PubAck(PubResp {
        packet_id,
        reason_code: 0,
        properties: Properties::default(),
    });
    mqtt::encode(&ack, PROTO, out);
}
