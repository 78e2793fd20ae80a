//! `coap-peer`: the other side of `coap-bench`, in its own process so that the benchmark's CPU figure is the
//! adapter's alone. It serves N observable resources (`/obs/0` … `/obs/N-1`, text counters, each notified
//! once per `--notify-interval`, as NON notifications) and, on request, sends confirmable POSTs at a fixed
//! rate to an ingest listener, counting the 2.04 answers.
//!
//! stdin commands: `load ADDR RATE` starts the ingest load; `count` prints
//! `STATS notifications=N registrations=N posts=N acks=N`. It prints `READY PORT` once listening.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use coap_lite::{CoapOption, MessageClass, MessageType, RequestType, ResponseType};
use fieldbridge_coap::wire;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;

#[derive(Parser, Debug)]
struct Args {
    /// Observable resources.
    #[arg(long, default_value_t = 1000)]
    observables: usize,
    /// How often each resource changes (and is notified).
    #[arg(long, default_value = "1s")]
    notify_interval: String,
    /// UDP port of the server (0: any).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[derive(Default)]
struct Counters {
    notifications: AtomicU64,
    registrations: AtomicU64,
    posts: AtomicU64,
    acks: AtomicU64,
}

const TICK: Duration = Duration::from_millis(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let every = fieldbridge_sdk::config::parse_duration(&args.notify_interval)
        .map_err(anyhow::Error::msg)?;
    let socket = Arc::new(UdpSocket::bind(("127.0.0.1", args.port)).await?);
    let counters = Arc::new(Counters::default());
    println!("READY {}", socket.local_addr()?.port());
    tokio::spawn(serve(socket, args.observables, every, counters.clone()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["load", addr, rate] => {
                let addr: SocketAddr = addr.parse().context("load address")?;
                let rate: u64 = rate.parse().context("load rate")?;
                tokio::spawn(load(addr, rate, counters.clone()));
            }
            ["count"] => println!(
                "STATS notifications={} registrations={} posts={} acks={}",
                counters.notifications.load(Ordering::Relaxed),
                counters.registrations.load(Ordering::Relaxed),
                counters.posts.load(Ordering::Relaxed),
                counters.acks.load(Ordering::Relaxed),
            ),
            _ => eprintln!("coap-peer: unknown command `{line}`"),
        }
    }
    Ok(())
}

/// Observable resources: one observer each (the benchmark's adapter), re-registration replaces it.
async fn serve(socket: Arc<UdpSocket>, n: usize, every: Duration, counters: Arc<Counters>) {
    let mut observers: Vec<Option<(SocketAddr, Vec<u8>)>> = vec![None; n];
    let mut values = vec![0u64; n];
    let mut seq: u32 = 2;
    let mut mid: u16 = 1;
    let mut next = 0usize;
    // Resources notified per tick, so that each is notified once per `every`.
    let per_tick = ((n as f64) * TICK.as_secs_f64() / every.as_secs_f64()).max(1.0);
    let mut owed = 0.0f64;
    let mut tick = tokio::time::interval(TICK);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                owed += per_tick;
                while owed >= 1.0 && n > 0 {
                    owed -= 1.0;
                    let i = next;
                    next = (next + 1) % n;
                    values[i] += 1;
                    let Some((peer, token)) = &observers[i] else { continue };
                    let mut p = coap_lite::Packet::new();
                    p.header.set_version(1);
                    p.header.set_type(MessageType::NonConfirmable);
                    p.header.code = MessageClass::Response(ResponseType::Content);
                    p.header.message_id = mid;
                    mid = mid.wrapping_add(1);
                    p.set_token(token.clone());
                    seq = (seq + 1) & 0x00FF_FFFF;
                    p.add_option(CoapOption::Observe, wire::uint_bytes(seq));
                    p.add_option(CoapOption::MaxAge, wire::uint_bytes(60));
                    p.payload = values[i].to_string().into_bytes();
                    if let Ok(b) = wire::encode(&p) {
                        let _ = socket.send_to(&b, *peer).await;
                        counters.notifications.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((len, peer)) = r else { continue };
                let Ok(req) = wire::decode(&buf[..len]) else { continue };
                if req.header.code != MessageClass::Request(RequestType::Get) {
                    continue;
                }
                let path = wire::uri_path(&req);
                let index = path.strip_prefix("/obs/").and_then(|s| s.parse::<usize>().ok()).filter(|&i| i < n);
                let Some(i) = index else {
                    let resp = wire::response_to(&req, ResponseType::NotFound, b"");
                    if let Ok(b) = wire::encode(&resp) {
                        let _ = socket.send_to(&b, peer).await;
                    }
                    continue;
                };
                let mut resp = wire::response_to(&req, ResponseType::Content, values[i].to_string().as_bytes());
                if req.get_first_option(CoapOption::Observe).is_some() {
                    observers[i] = Some((peer, req.get_token().to_vec()));
                    counters.registrations.fetch_add(1, Ordering::Relaxed);
                    seq = (seq + 1) & 0x00FF_FFFF;
                    resp.add_option(CoapOption::Observe, wire::uint_bytes(seq));
                }
                resp.add_option(CoapOption::MaxAge, wire::uint_bytes(60));
                if let Ok(b) = wire::encode(&resp) {
                    let _ = socket.send_to(&b, peer).await;
                }
            }
        }
    }
}

/// Confirmable POSTs at `rate`/s to `/bench/p0`…`/bench/p9`, counting 2.04 answers.
async fn load(addr: SocketAddr, rate: u64, counters: Arc<Counters>) {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return;
    };
    if socket.connect(addr).await.is_err() {
        return;
    }
    let socket = Arc::new(socket);
    let rx = socket.clone();
    let acks = counters.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let mut seen: HashMap<u16, ()> = HashMap::new();
        while let Ok(n) = rx.recv(&mut buf).await {
            if let Ok(p) = wire::decode(&buf[..n]) {
                if p.header.code == MessageClass::Response(ResponseType::Changed)
                    && seen.insert(p.header.message_id, ()).is_none()
                {
                    acks.acks.fetch_add(1, Ordering::Relaxed);
                }
                if seen.len() > 60_000 {
                    seen.clear();
                }
            }
        }
    });
    let per_tick = rate as f64 * TICK.as_secs_f64();
    let mut owed = 0.0f64;
    let mut k: u64 = 0;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let mut p = wire::request(RequestType::Post, &format!("/bench/p{}", k % 10), None);
            p.header.set_type(MessageType::Confirmable);
            p.header.message_id = k as u16;
            p.set_token((k as u32).to_be_bytes().to_vec());
            p.payload = k.to_string().into_bytes();
            k += 1;
            if let Ok(b) = wire::encode(&p) {
                let _ = socket.send(&b).await;
                counters.posts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
