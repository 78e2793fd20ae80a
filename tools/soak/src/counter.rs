//! A counting MQTT 3.1.1 subscriber on the upstream broker: what actually arrived "in the cloud".
//!
//! Raw packets over a TCP stream (CONNECT, SUBSCRIBE at QoS 0, PINGREQ; PUBLISH packets are counted and
//! skipped), so that counting 15,000 messages a second costs the machine little and depends on nothing but
//! tokio. Packets larger than [`MAX_PACKET`] end the connection (the soak's own readings are ~100 bytes).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_PACKET: usize = 1 << 20;
const KEEPALIVE_SECS: u16 = 60;

fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    remaining_length(&mut p, body.len());
    p.extend_from_slice(body);
    p
}

/// Parses one packet header at the start of `buf`: (first byte, header length, body length), or `None` when
/// more bytes are needed.
fn header(buf: &[u8]) -> anyhow::Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if len > MAX_PACKET {
                bail!("upstream sent a packet of {len} bytes");
            }
            return Ok(Some((first, 2 + i, len)));
        }
    }
    bail!("malformed remaining length from the upstream")
}

/// Connects, subscribes to `filter` and counts PUBLISH packets into `count` until the connection ends.
pub async fn run(addr: SocketAddr, filter: &str, count: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .context("connect to the upstream: timeout")?
        .context("connect to the upstream")?;
    s.set_nodelay(true)?;
    let mut connect = Vec::new();
    mqtt_str(&mut connect, "MQTT");
    connect.push(4); // 3.1.1
    connect.push(0x02); // clean session
    connect.extend_from_slice(&KEEPALIVE_SECS.to_be_bytes());
    mqtt_str(&mut connect, "soak-counter");
    s.write_all(&packet(0x10, &connect)).await?;
    let mut sub = vec![0, 1];
    mqtt_str(&mut sub, filter);
    sub.push(0);
    s.write_all(&packet(0x82, &sub)).await?;

    let mut buf = vec![0u8; 256 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEPALIVE_SECS / 2)));
    ping.tick().await;
    loop {
        // Consume every whole packet in the buffer.
        while let Some((first, hl, bl)) = header(&buf[start..end])? {
            if end - start < hl + bl {
                break;
            }
            match first >> 4 {
                3 => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                2 if bl < 2 || buf[start + hl + 1] != 0 => {
                    bail!("the upstream refused the connection")
                }
                _ => {}
            }
            start += hl + bl;
        }
        // Make room: move the partial packet to the front, grow for a large one (bounded by MAX_PACKET).
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_PACKET + 8), 0);
        }
        tokio::select! {
            n = s.read(&mut buf[end..]) => {
                let n = n?;
                if n == 0 {
                    bail!("the upstream closed the connection");
                }
                end += n;
            }
            _ = ping.tick() => s.write_all(&[0xc0, 0]).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(header(&[0x30]).unwrap(), None);
        assert_eq!(header(&[0x30, 5]).unwrap(), Some((0x30, 2, 5)));
        assert_eq!(header(&[0x30, 0x80, 0x01]).unwrap(), Some((0x30, 3, 128)));
        assert_eq!(header(&[0x30, 0x80]).unwrap(), None);
        assert!(header(&[0x30, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert!(header(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut v = Vec::new();
        remaining_length(&mut v, 321);
        assert_eq!(
            header(&[&[0x30][..], &v].concat()).unwrap(),
            Some((0x30, 3, 321))
        );
    }
}
