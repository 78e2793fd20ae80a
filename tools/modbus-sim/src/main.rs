//! `modbus-sim`: a fast Modbus TCP device simulator for benchmarks.
//!
//! Serves `--ports` listeners on consecutive ports from `--base-port` on 127.0.0.1, each one device (any
//! unit id) with `--registers` holding and input registers whose values change every second. Built on
//! tokio-modbus's server so that the simulator, not the adapter under test, is never the bottleneck.
//!
//! Prints `READY` once every port listens. When stdin closes (or reads `quit`), prints `REQUESTS <n>` (total
//! requests served) and exits, so a harness can compute requests per second on the device side.
#![forbid(unsafe_code)]

use std::future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

#[derive(Parser, Debug)]
#[command(about = "Modbus TCP simulator: many devices on consecutive ports")]
struct Args {
    /// First port.
    #[arg(long, default_value_t = 15020)]
    base_port: u16,
    /// Number of ports (devices).
    #[arg(long, default_value_t = 500)]
    ports: u16,
    /// Registers per device (holding and input, from address 0).
    #[arg(long, default_value_t = 30)]
    registers: u16,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone)]
struct Device {
    registers: u16,
    started: Instant,
    requests: Arc<AtomicU64>,
}

impl tokio_modbus::server::Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let tick = self.started.elapsed().as_secs() as u16;
        let words = |addr: u16, cnt: u16| -> Result<Vec<u16>, ExceptionCode> {
            if u32::from(addr) + u32::from(cnt) > u32::from(self.registers) {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            Ok((addr..addr + cnt)
                .map(|a| a.wrapping_mul(100).wrapping_add(tick))
                .collect())
        };
        let r = match req.request {
            Request::ReadHoldingRegisters(a, c) => words(a, c).map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, c) => words(a, c).map(Response::ReadInputRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        future::ready(r)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let requests = Arc::new(AtomicU64::new(0));
    let device = Device {
        registers: args.registers,
        started: Instant::now(),
        requests: requests.clone(),
    };
    for i in 0..args.ports {
        let addr: SocketAddr = ([127, 0, 0, 1], args.base_port + i).into();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let device = device.clone();
        tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, socket_addr| {
                let device = device.clone();
                async move { accept_tcp_connection(stream, socket_addr, |_| Ok(Some(device.clone()))) }
            };
            if let Err(e) = server
                .serve(&on_connected, |e| eprintln!("connection error: {e}"))
                .await
            {
                eprintln!("server on {addr}: {e}");
            }
        });
    }
    println!("READY");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        if l.trim() == "quit" {
            break;
        }
        if l.trim() == "count" {
            println!("REQUESTS {}", requests.load(Ordering::Relaxed));
        }
    }
    println!("REQUESTS {}", requests.load(Ordering::Relaxed));
    Ok(())
}
