//! A raw MQTT client on the project's codec: sends exactly the packets a test writes and returns every packet
//! the broker sends, so tests can check flows byte-exact (QoS 2 states, DUP, aliases, reason codes).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fieldbridge::mqtt::{
    self, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubResp, Publish,
    QoS, RetainHandling, SubAck, Subscribe, Subscription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// What [`Client::recv_within`] saw.
#[derive(Debug)]
pub enum Recv {
    Packet(Box<Packet>),
    Closed,
    Timeout,
}

pub struct Client {
    pub stream: TcpStream,
    rbuf: BytesMut,
    pub protocol: Protocol,
    next_pid: u16,
    /// Packets read while waiting for something else (an ack), handed out first by `recv`.
    pending: std::collections::VecDeque<Packet>,
}

pub fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol,
        clean_start,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub fn will(topic: &str, payload: &str, qos: QoS) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
        properties: Properties::default(),
    }
}

pub fn publish(topic: &str, payload: &str, qos: QoS, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id: pid,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

pub fn sub(filter: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: filter.into(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

pub fn resp(pid: u16) -> PubResp {
    PubResp {
        packet_id: pid,
        reason_code: 0,
        properties: Properties::default(),
    }
}

impl Client {
    /// Opens a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to broker");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            rbuf: BytesMut::new(),
            protocol,
            next_pid: 0,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Connects with `connect` and returns the CONNACK (whatever its code).
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Client, ConnAck) {
        let mut c = Client::open(addr, connect.protocol).await;
        c.send(Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean: bool,
    ) -> Client {
        let (c, ack) = Client::connect_with(addr, connect_packet(protocol, client_id, clean)).await;
        assert_eq!(ack.reason_code, 0, "CONNACK refused: {ack:?}");
        c
    }

    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        mqtt::encode(&packet, self.protocol, &mut out);
        self.stream.write_all(&out).await.expect("write to broker");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
    }

    /// The next packet; fails the test if none arrives in time or the connection closes.
    pub async fn recv(&mut self) -> Packet {
        match self.recv_within(WAIT).await {
            Recv::Packet(p) => *p,
            Recv::Closed => panic!("connection closed while waiting for a packet"),
            Recv::Timeout => panic!("no packet within {WAIT:?}"),
        }
    }

    /// The next packet, or what happened instead.
    pub async fn recv_within(&mut self, d: Duration) -> Recv {
        if let Some(p) = self.pending.pop_front() {
            return Recv::Packet(Box::new(p));
        }
        let fut = async {
            loop {
                if let Some(p) = mqtt::decode(&mut self.rbuf, Some(self.protocol), u32::MAX)
                    .expect("broker sent a valid packet")
                {
                    return Some(p);
                }
                self.rbuf.reserve(4096);
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout(d, fut).await {
            Ok(Some(p)) => Recv::Packet(Box::new(p)),
            Ok(None) => Recv::Closed,
            Err(_) => Recv::Timeout,
        }
    }

    /// The next PUBLISH, acknowledging QoS 1/2 ones fully; other packets in between fail the test.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => {
                self.ack(&p).await;
                p
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(resp(p.packet_id))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(resp(p.packet_id))).await;
                match self.recv().await {
                    Packet::PubRel(r) => assert_eq!(r.packet_id, p.packet_id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(resp(p.packet_id))).await;
            }
        }
    }

    pub async fn subscribe(&mut self, subs: Vec<Subscription>) -> SubAck {
        self.subscribe_with(subs, Properties::default()).await
    }

    pub async fn subscribe_with(
        &mut self,
        subs: Vec<Subscription>,
        properties: Properties,
    ) -> SubAck {
        let pid = self.pid();
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid,
            properties,
            subscriptions: subs,
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, pid);
                a
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Reads until a packet matching `want` arrives; other packets are kept for later `recv` calls.
    async fn recv_matching(&mut self, what: &str, want: impl Fn(&Packet) -> bool) -> Packet {
        let mut skipped = Vec::new();
        let found = loop {
            let p = match self.recv_within(WAIT).await {
                Recv::Packet(p) => *p,
                other => panic!("waiting for {what}: {other:?}"),
            };
            if want(&p) {
                break p;
            }
            skipped.push(p);
        };
        for p in skipped.into_iter().rev() {
            self.pending.push_front(p);
        }
        found
    }

    /// Publishes and completes the QoS flow from the sender's side; returns the final ack's reason code.
    pub async fn publish(&mut self, mut p: Publish) -> u8 {
        if p.qos != QoS::AtMostOnce && p.packet_id == 0 {
            p.packet_id = self.pid();
        }
        let pid = p.packet_id;
        let qos = p.qos;
        self.send(Packet::Publish(p)).await;
        let is = |kind: fn(&Packet) -> Option<u16>| move |p: &Packet| kind(p) == Some(pid);
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => match self
                .recv_matching(
                    "PUBACK",
                    is(|p| match p {
                        Packet::PubAck(a) => Some(a.packet_id),
                        _ => None,
                    }),
                )
                .await
            {
                Packet::PubAck(a) => a.reason_code,
                _ => unreachable!(),
            },
            QoS::ExactlyOnce => {
                let rec = match self
                    .recv_matching(
                        "PUBREC",
                        is(|p| match p {
                            Packet::PubRec(a) => Some(a.packet_id),
                            _ => None,
                        }),
                    )
                    .await
                {
                    Packet::PubRec(a) => a,
                    _ => unreachable!(),
                };
                if rec.reason_code >= 0x80 {
                    return rec.reason_code;
                }
                self.send(Packet::PubRel(resp(pid))).await;
                match self
                    .recv_matching(
                        "PUBCOMP",
                        is(|p| match p {
                            Packet::PubComp(a) => Some(a.packet_id),
                            _ => None,
                        }),
                    )
                    .await
                {
                    Packet::PubComp(c) => c.reason_code,
                    _ => unreachable!(),
                }
            }
        }
    }

    /// Round-trips a PINGREQ: everything the broker sent before it has been read once this returns.
    pub async fn ping(&mut self) -> Vec<Packet> {
        self.send(Packet::PingReq).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                Packet::PingResp => return before,
                p => before.push(p),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.stream.shutdown().await;
    }

    /// Reads until the broker closes the connection; returns the DISCONNECT it sent, if any.
    pub async fn closed(&mut self) -> Option<Disconnect> {
        let mut last = None;
        loop {
            match self.recv_within(WAIT).await {
                Recv::Packet(p) if matches!(*p, Packet::Disconnect(_)) => {
                    if let Packet::Disconnect(d) = *p {
                        last = Some(d);
                    }
                }
                Recv::Packet(_) => {}
                Recv::Closed => return last,
                Recv::Timeout => panic!("the broker did not close the connection within {WAIT:?}"),
            }
        }
    }
}
