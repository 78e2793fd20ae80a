//! The HTTP API and the client subcommands (`status`, `query`, `reload`) against a real daemon: an `App` with
//! a simulated device, the store on a temp dir, the API on a free loopback port.
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge::api::{self, ApiServer, ApiState, HistoryDoc, PointsDoc, StatusDoc};
use fieldbridge::app::{load_config, App, Registry};
use fieldbridge::cli::{
    self, ApiClient, Console, Format, OrderArg, QueryArgs, ReloadArgs, StatusArgs, Target,
};
use hyper::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::util::{eventually, within, WAIT};

/// The daemon's configuration. The API section is disabled so that the test starts the server itself (on
/// port 0) whatever `App::start` does with `api.bind`.
const CONFIG: &str = r#"gateway:
  id: t1
broker:
  listeners:
    - bind: 127.0.0.1:0
api:
  enabled: false
storage:
  path: ./fb.db
  commit_interval: 10ms
  max_bytes: 64MiB
bridges:
  - name: cloud
    url: mqtt://127.0.0.1:9
devices:
  - name: boiler
    protocol: sim
    poll_interval: 100ms
    labels: {site: lab}
    points:
      - name: temp
        signal: sine
        period: 10s
        min: 10
        max: 20
        type: float
        unit: "°C"
      - name: count
        signal: counter
        initial: 0
        step: 1
        type: int
      - name: sp
        signal: setpoint
        min: 30
        max: 80
        initial: 42
        type: float
        writable: true
"#;

struct Daemon {
    app: Arc<App>,
    api: SocketAddr,
    /// The API token the server generated into the state directory.
    token: String,
    server: ApiServer,
    stop: CancellationToken,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start() -> Daemon {
        Daemon::start_with(CONFIG, api::Limits::default()).await
    }

    /// A daemon on `config`, its API bounded by `limits`.
    async fn start_with(config_text: &str, limits: api::Limits) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fb.yaml");
        std::fs::write(&config, config_text).unwrap();
        let registry = Registry::default();
        let cfg = load_config(&config, &registry).unwrap_or_else(|e| panic!("test config: {e}"));
        let app = App::start(cfg, registry).await.expect("daemon starts");
        let stop = CancellationToken::new();
        let state: Arc<dyn ApiState> = app.clone();
        let server = api::serve_with(state, "127.0.0.1:0".parse().unwrap(), stop.clone(), limits)
            .await
            .expect("API binds");
        let token = std::fs::read_to_string(dir.path().join("api-token"))
            .expect("the token is generated into the state directory")
            .trim()
            .to_string();
        Daemon {
            app,
            api: server.local_addr,
            token,
            server,
            stop,
            config,
            _dir: dir,
        }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(self.api, WAIT).with_token(Some(self.token.clone()))
    }

    /// Status and body of a request.
    async fn call(&self, method: Method, path: &str) -> (u16, String) {
        let (status, body) = self
            .client()
            .request(method, path)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// A 4xx and its `error` text.
    async fn refused(&self, method: Method, path: &str, want: u16) -> String {
        let (status, body) = self.call(method, path).await;
        assert_eq!(status, want, "{path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        v["error"].as_str().unwrap_or_default().to_string()
    }

    fn target(&self) -> Target {
        Target {
            api: Some(self.api.to_string()),
            config: self.config.clone(),
            token: None,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.server.task)
            .await
            .expect("the API stops")
            .unwrap();
        self.app.shutdown(Duration::from_secs(5)).await;
    }
}

fn console() -> Console<Vec<u8>, Vec<u8>> {
    Console {
        out: Vec::new(),
        err: Vec::new(),
        tty: false,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn query_args(target: Target) -> QueryArgs {
    QueryArgs {
        target,
        device: None,
        point: None,
        topic: None,
        from: None,
        to: None,
        limit: 1000,
        order: OrderArg::Asc,
        format: Format::Table,
        db: None,
        every: None,
        latest: false,
        cursor: None,
        values: false,
    }
}

/// History rows of one point, once there are at least `n`.
async fn rows_of(d: &Daemon, point: &str, n: usize) -> HistoryDoc {
    eventually(&format!("{n} logged rows of boiler/{point}"), || async {
        let v = d
            .get_json(&format!("/api/history?device=boiler&point={point}"))
            .await;
        let doc: HistoryDoc = serde_json::from_value(v).unwrap();
        (doc.rows.len() >= n).then_some(doc)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_points_devices_and_status() {
    let d = Daemon::start().await;

    let h = d.get_json("/health").await;
    assert_eq!(h["status"], "ok");
    assert!(h["uptime_secs"].is_u64(), "{h}");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));

    // Every sim point shows up with its value, unit, quality and topic.
    let points = eventually("the three sim points in /api/points", || async {
        let doc: PointsDoc = serde_json::from_value(d.get_json("/api/points").await).unwrap();
        (doc.points.len() == 3).then_some(doc)
    })
    .await;
    let names: Vec<&str> = points.points.iter().map(|p| p.point.as_str()).collect();
    assert_eq!(
        names,
        ["count", "sp", "temp"],
        "sorted by device then point"
    );
    for p in &points.points {
        assert_eq!(p.device, "boiler");
        assert_eq!(p.quality, "good");
        assert_eq!(p.topic, format!("t1/boiler/{}", p.point));
        assert!(p.ts.ends_with('Z') && p.ts.contains('T'), "{}", p.ts);
    }
    let temp = &points.points[2];
    let v = temp.value.as_f64().expect("temp is a number");
    assert!((10.0..=20.0).contains(&v), "sine within min..max: {v}");
    assert_eq!(temp.unit.as_deref(), Some("°C"));
    assert_eq!(
        points.points[1].value.as_f64(),
        Some(42.0),
        "setpoint initial value"
    );
    assert!(points.points[0].value.is_i64(), "counter is an integer");
    let only = d.get_json("/api/points?device=boiler").await;
    assert_eq!(only["points"].as_array().unwrap().len(), 3);

    let devs = d.get_json("/api/devices").await;
    assert_eq!(devs["devices"][0]["name"], "boiler");
    assert_eq!(devs["devices"][0]["protocol"], "sim");
    assert_eq!(
        devs["devices"][0]["points"],
        serde_json::json!(["temp", "count", "sp"])
    );
    assert_eq!(devs["devices"][0]["labels"]["site"], "lab");

    // /api/status: the device online, the store holding rows, the bridge listed, the pipeline counting.
    let st: StatusDoc = eventually("the device online with rows logged", || async {
        let st: StatusDoc = serde_json::from_value(d.get_json("/api/status").await).unwrap();
        (st.devices.first().is_some_and(|x| x.status == "online") && st.store.rows > 0)
            .then_some(st)
    })
    .await;
    assert_eq!(st.gateway, "t1");
    assert_eq!(st.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(st.devices[0].reason, None);
    assert!(st.store.path.ends_with("fb.db"), "{}", st.store.path);
    assert_eq!(st.store.state, "normal");
    assert!(st.store.bytes_on_disk > 0 && st.store.max_bytes > 0);
    assert!(st.store.oldest_ts.is_some() && st.store.newest_seq.is_some());
    assert_eq!(st.store.dropped.total, 0);
    assert_eq!(st.bridges.len(), 1);
    assert_eq!(st.bridges[0].name, "cloud");
    assert_eq!(st.bridges[0].url, "mqtt://127.0.0.1:9");
    assert!(!st.bridges[0].state.is_empty());
    assert!(st.pipeline.readings > 0 && st.pipeline.published > 0);
    assert!(
        st.broker["messages_received"].as_u64().unwrap() > 0,
        "{}",
        st.broker
    );

    // The dashboard: one self-contained page polling the two endpoints.
    let (status, page) = d.call(Method::GET, "/").await;
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("api/status") && page.contains("api/points") && page.contains("2000"));
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import"] {
        assert!(!page.contains(external), "no external asset: {external}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_by_device_point_topic_and_time() {
    let d = Daemon::start().await;
    let doc = rows_of(&d, "count", 8).await;
    let rows = &doc.rows;
    assert!(!doc.more);
    for w in rows.windows(2) {
        assert!(
            w[0].ts_ms <= w[1].ts_ms && w[0].seq < w[1].seq,
            "oldest first"
        );
        let (a, b) = (w[0].value.unwrap(), w[1].value.unwrap());
        assert_eq!(b, a + 1.0, "the counter steps by one per poll");
    }
    for r in rows {
        assert_eq!(r.topic, "t1/boiler/count");
        assert_eq!(r.device.as_deref(), Some("boiler"));
        assert_eq!(r.point.as_deref(), Some("count"));
        let payload: Value = serde_json::from_str(&r.payload).expect("JSON payload as text");
        assert_eq!(payload["value"].as_f64(), r.value);
        assert_eq!(payload["quality"], "good");
        assert_eq!(
            r.ts,
            payload["ts"].as_str().unwrap(),
            "the reading's own timestamp"
        );
    }

    // [from, to): RFC 3339 for one end, unix ms for the other.
    let from = &rows[2].ts;
    let to = rows[6].ts_ms;
    let v = d
        .get_json(&format!(
            "/api/history?device=boiler&point=count&from={}&to={to}",
            cli::encode_query_value(from)
        ))
        .await;
    let window: HistoryDoc = serde_json::from_value(v).unwrap();
    let seqs: Vec<u64> = window.rows.iter().map(|r| r.seq).collect();
    let want: Vec<u64> = rows[2..6].iter().map(|r| r.seq).collect();
    assert_eq!(seqs, want);

    // An offset is honoured: the same instant written at +02:00.
    let plus2 = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(rows[2].ts_ms as u64 + 2 * 3600 * 1000),
    )
    .to_string()
    .replace('Z', "+02:00");
    let v = d
        .get_json(&format!(
            "/api/history?device=boiler&point=count&from={}&to={to}",
            cli::encode_query_value(&plus2)
        ))
        .await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 4, "{plus2}");

    // Newest first, limited: `more` says there is more.
    let v = d
        .get_json("/api/history?device=boiler&point=count&order=desc&limit=2")
        .await;
    let newest: HistoryDoc = serde_json::from_value(v).unwrap();
    assert_eq!(newest.rows.len(), 2);
    assert!(newest.more);
    assert_eq!(newest.limit, 2);
    assert!(newest.rows[0].seq > newest.rows[1].seq);
    assert!(newest.rows[0].seq >= rows.last().unwrap().seq);

    // Topic filters: a wildcard over points, and one over devices.
    let v = d
        .get_json("/api/history?topic=t1/boiler/%2B&limit=500")
        .await;
    let points: HashSet<String> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["point"].as_str().unwrap().to_string())
        .collect();
    assert!(
        points.contains("count") && points.contains("temp"),
        "{points:?}"
    );
    let v = d.get_json("/api/history?topic=t1/%2B/temp").await;
    assert!(v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["topic"] == "t1/boiler/temp"));
    let v = d.get_json("/api/history?device=nobody").await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_the_server_keeps_serving() {
    let d = Daemon::start().await;
    let cases: &[(&str, &str)] = &[
        (
            "/api/history?from=yesterday",
            "parameter `from`: invalid time `yesterday`",
        ),
        (
            "/api/history?to=2026-11-22T02:00:00",
            "parameter `to`: `2026-11-22T02:00:00` has no time zone",
        ),
        (
            "/api/history?limit=0",
            "parameter `limit`: `0` is not a number between 1 and 100000",
        ),
        ("/api/history?limit=lots", "parameter `limit`"),
        (
            "/api/history?order=sideways",
            "parameter `order`: `sideways` is not `asc`",
        ),
        (
            "/api/history?topic=a/%23/b",
            "parameter `topic`: `a/#/b` is not a valid MQTT topic filter",
        ),
        (
            "/api/history?devce=boiler",
            "unknown parameter `devce`, did you mean `device`?",
        ),
        (
            "/api/history?from=now&to=-1h",
            "parameter `from` (now) must be before `to` (-1h)",
        ),
        (
            "/api/history?device=a&device=b",
            "parameter `device` is given more than once",
        ),
        (
            "/api/points?device=ghost",
            "parameter `device`: no device `ghost` is configured",
        ),
        ("/api/points?colour=red", "unknown parameter `colour`"),
    ];
    for (path, want) in cases {
        let e = d.refused(Method::GET, path, 400).await;
        assert!(
            e.starts_with(want),
            "{path}: {e:?} should start with {want:?}"
        );
    }
    let e = d.refused(Method::GET, "/api/nothing", 404).await;
    assert!(
        e.contains("no endpoint /api/nothing") && e.contains("/api/history"),
        "{e}"
    );
    let e = d.refused(Method::POST, "/health", 405).await;
    assert!(e.contains("POST is not allowed on /health"), "{e}");
    d.refused(Method::GET, "/api/reload", 405).await;

    // Malformed HTTP and an oversized head are answered (or cut) without harm.
    let mut s = tokio::net::TcpStream::connect(d.api).await.unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    assert!(
        text(&answer).starts_with("HTTP/1.1 400"),
        "{}",
        text(&answer)
    );

    let mut s = tokio::net::TcpStream::connect(d.api).await.unwrap();
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await; // the server may close before reading it all
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    let answer = text(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "an oversized head is refused: {answer}"
    );

    let h = d.get_json("/health").await;
    assert_eq!(h["status"], "ok");
    d.stop().await;
}

/// Parses the Prometheus text format strictly enough to catch what a scraper would reject: every sample's
/// family declared by `# TYPE` first, valid names and label syntax, numeric values, no duplicate series.
fn parse_prometheus(page: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (i, line) in page.lines().enumerate() {
        let at = format!("line {}: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next().unwrap_or(""), parts.next());
            assert!(valid_name(name), "{at}");
            match kw {
                Some("HELP") => assert!(arg.is_some_and(|h| !h.is_empty()), "{at}"),
                Some("TYPE") => {
                    let t = arg.unwrap_or("");
                    assert!(
                        ["counter", "gauge", "untyped", "summary", "histogram"].contains(&t),
                        "{at}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {at}"
                    );
                }
                _ => panic!("unknown comment: {at}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line: {at}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{at}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "{at}");
        let ty = types
            .get(name)
            .unwrap_or_else(|| panic!("sample before its TYPE: {at}"));
        if ty == "counter" {
            assert!(name.ends_with("_total"), "counters end in _total: {at}");
        }
        let mut rest = &line[name_end..];
        let mut series = name.to_string();
        if let Some(labels) = rest.strip_prefix('{') {
            // label="value" pairs; values may contain escaped quotes.
            let mut chars = labels.char_indices().peekable();
            let mut key = String::new();
            let end = loop {
                let (j, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated labels: {at}"));
                match c {
                    '}' if key.is_empty() => break j,
                    '=' => {
                        assert!(valid_name(&key) && !key.contains(':'), "label name: {at}");
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{at}");
                        loop {
                            match chars
                                .next()
                                .unwrap_or_else(|| panic!("unterminated value: {at}"))
                                .1
                            {
                                '\\' => {
                                    let e = chars.next().unwrap().1;
                                    assert!(matches!(e, '\\' | '"' | 'n'), "escape: {at}");
                                }
                                '"' => break,
                                _ => {}
                            }
                        }
                        key.clear();
                        if let Some((_, ',')) = chars.peek() {
                            chars.next();
                        }
                    }
                    c => key.push(c),
                }
            };
            series.push_str(&rest[..end + 2]);
            rest = &labels[end + 1..];
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{at}"));
        let value = value.split(' ').next().unwrap();
        let v: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value: {at}")),
        };
        assert!(
            samples.insert(series, v).is_none(),
            "duplicate series: {at}"
        );
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let d = Daemon::start().await;
    eventually("the device online", || async {
        let v = d.get_json("/api/devices").await;
        (v["devices"][0]["status"] == "online").then_some(())
    })
    .await;
    rows_of(&d, "count", 2).await;
    let (status, content_type, page) = scrape(d.api).await;
    assert_eq!(status, 200);
    // The exposition format's content type (a scraper takes anything else for the protobuf or OpenMetrics).
    assert_eq!(
        content_type, "text/plain; version=0.0.4; charset=utf-8",
        "{page}"
    );
    let m = parse_prometheus(&page);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in:\n{page}"));
    assert_eq!(
        get(&format!(
            "fieldbridge_info{{gateway=\"t1\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(get("fieldbridge_broker_messages_received_total") > 0.0);
    assert!(get("fieldbridge_store_rows") > 0.0);
    assert!(get("fieldbridge_store_disk_bytes") > 0.0);
    assert!(get("fieldbridge_store_max_bytes") > 0.0);
    assert_eq!(
        get("fieldbridge_store_dropped_total{reason=\"oldest\"}"),
        0.0
    );
    assert_eq!(
        get("fieldbridge_store_dropped_total{reason=\"newest\"}"),
        0.0
    );
    assert_eq!(get("fieldbridge_store_writer_state{state=\"normal\"}"), 1.0);
    assert!(
        m.contains_key("fieldbridge_bridge_lag_rows{bridge=\"cloud\"}"),
        "{page}"
    );
    assert_eq!(
        get("fieldbridge_device_online{device=\"boiler\",protocol=\"sim\"}"),
        1.0
    );
    assert!(get("fieldbridge_pipeline_readings_total") > 0.0);
    assert!(get("fieldbridge_pipeline_published_total") > 0.0);
    // Uptime is a gauge that moves: a later scrape shows more.
    let up = get("fieldbridge_uptime_seconds");
    eventually("uptime to advance", || async {
        let (_, _, later) = scrape(d.api).await;
        let m = parse_prometheus(&later);
        (m.get("fieldbridge_uptime_seconds").copied().unwrap_or(0.0) > up).then_some(())
    })
    .await;
    d.stop().await;
}

/// `GET /metrics` over a plain HTTP/1.1 connection: status, `Content-Type`, body.
async fn scrape(api: SocketAddr) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("the response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_changes_and_refuses_a_broken_config() {
    let d = Daemon::start().await;
    rows_of(&d, "count", 1).await;
    let v = d.call(Method::POST, "/api/reload").await;
    assert_eq!(v.0, 200, "{}", v.1);
    let doc: Value = serde_json::from_str(&v.1).unwrap();
    assert_eq!(doc["unchanged"], serde_json::json!(["boiler"]));
    assert_eq!(doc["added"], serde_json::json!([]));

    // A browser page elsewhere cannot trigger it.
    let mut s = tokio::net::TcpStream::connect(d.api).await.unwrap();
    s.write_all(
        format!(
            "POST /api/reload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            d.api, d.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        text(&answer).starts_with("HTTP/1.1 403"),
        "{}",
        text(&answer)
    );

    // Break the file: an unknown key in a point, and a bad poll interval.
    let broken = CONFIG
        .replace(
            "        unit: \"°C\"\n",
            "        unit: \"°C\"\n        colour: red\n",
        )
        .replace("poll_interval: 100ms", "poll_interval: often");
    std::fs::write(&d.config, &broken).unwrap();
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let file = d.config.display().to_string();

    let (status, body) = d.call(Method::POST, "/api/reload").await;
    assert_eq!(status, 422, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["error"]
        .as_str()
        .unwrap()
        .ends_with("problem(s); the running configuration is kept"));
    let errors: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let colour = format!(
        "{file}:{}:9: devices[0].points[0].colour: ",
        line_of("colour")
    );
    assert!(
        errors.iter().any(|e| e.starts_with(&colour)),
        "{colour} in {errors:#?}"
    );
    let poll = format!("{file}:{}:20: devices[0].poll_interval: ", line_of("often"));
    assert!(
        errors.iter().any(|e| e.starts_with(&poll)),
        "{poll} in {errors:#?}"
    );

    // The daemon runs on with its old configuration.
    d.get_json("/health").await;
    let before = d
        .get_json("/api/history?device=boiler&point=count&order=desc&limit=1")
        .await["rows"][0]["seq"]
        .as_u64()
        .unwrap();
    eventually("new readings after the refused reload", || async {
        let v = d
            .get_json("/api/history?device=boiler&point=count&order=desc&limit=1")
            .await;
        (v["rows"][0]["seq"].as_u64().unwrap() > before).then_some(())
    })
    .await;
    assert_eq!(
        d.app.config.read().devices[0].adapter.poll_interval,
        Duration::from_millis(100)
    );

    // The CLI: the same errors on stdout, exit 64.
    let mut con = console();
    let code = cli::reload(&ReloadArgs { target: d.target() }, &mut con).await;
    assert_eq!(code, 64, "{}", text(&con.err));
    let out = text(&con.out);
    assert!(out.lines().any(|l| l.starts_with(&colour)), "{out}");
    assert!(
        text(&con.err).contains("reload refused:"),
        "{}",
        text(&con.err)
    );

    // Fixed: the CLI reports what changed.
    std::fs::write(
        &d.config,
        CONFIG.replace("poll_interval: 100ms", "poll_interval: 150ms"),
    )
    .unwrap();
    let mut con = console();
    let code = cli::reload(&ReloadArgs { target: d.target() }, &mut con).await;
    assert_eq!(code, 0, "{}", text(&con.err));
    assert_eq!(
        text(&con.out),
        "configuration reloaded: 0 added, 0 removed, 1 restarted (boiler), 0 unchanged\n"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_and_query_print_what_the_operator_needs() {
    let d = Daemon::start().await;
    eventually("the device online", || async {
        let v = d.get_json("/api/devices").await;
        (v["devices"][0]["status"] == "online").then_some(())
    })
    .await;
    let rows = rows_of(&d, "count", 5).await.rows;

    // status: plain text (not a terminal): no escape codes.
    let args = StatusArgs {
        target: d.target(),
        watch: false,
        count: None,
        json: false,
    };
    let mut con = console();
    assert_eq!(cli::status(&args, &mut con).await, 0, "{}", text(&con.err));
    let out = text(&con.out);
    assert!(!out.contains('\x1b'), "{out}");
    assert!(out.starts_with("gateway t1 · fieldbridge "), "{out}");
    assert!(out.contains(&format!("API {}", d.api)), "{out}");
    assert!(out.contains("\nbridges\n  cloud  "), "{out}");
    assert!(out.contains("mqtt://127.0.0.1:9"), "{out}");
    assert!(out.contains("\ndevices\n  boiler  online"), "{out}");
    assert!(
        out.contains("\nstore  ") && out.contains("fb.db  writer normal"),
        "{out}"
    );
    assert!(
        out.contains("\n  size   ") && out.contains(" of 64.0 MiB ("),
        "{out}"
    );
    assert!(out.contains("\n  rows   "), "{out}");
    assert!(out.contains("\n  drops  none\n"), "{out}");

    // --json: the document itself.
    let mut con = console();
    let json_args = StatusArgs {
        json: true,
        ..args.clone()
    };
    assert_eq!(cli::status(&json_args, &mut con).await, 0);
    let v: Value = serde_json::from_slice(&con.out).unwrap();
    assert_eq!(v["gateway"], "t1");

    // --watch without a terminal: blocks of plain lines, one per refresh.
    let mut con = console();
    let watch = StatusArgs {
        watch: true,
        count: Some(2),
        ..args.clone()
    };
    assert_eq!(cli::status(&watch, &mut con).await, 0);
    let out = text(&con.out);
    assert_eq!(out.matches("--- ").count(), 2, "{out}");
    assert_eq!(out.matches("\ndevices\n").count(), 2, "{out}");
    assert!(!out.contains('\x1b'), "{out}");

    // The address can come from the configuration file's `api.bind`.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("client.yaml");
    std::fs::write(
        &cfg,
        format!("gateway: {{id: t1}}\napi:\n  bind: {}\n", d.api),
    )
    .unwrap();
    let mut con = console();
    let by_config = StatusArgs {
        target: Target {
            api: None,
            config: cfg,
            token: None,
        },
        ..args.clone()
    };
    assert_eq!(
        cli::status(&by_config, &mut con).await,
        0,
        "{}",
        text(&con.err)
    );
    assert!(text(&con.out).contains("boiler  online"));

    // query: table, CSV and JSON of the same rows.
    let mut q = query_args(d.target());
    q.device = Some("boiler".into());
    q.point = Some("count".into());
    q.to = Some((rows[4].ts_ms + 1).to_string());
    let mut con = console();
    assert_eq!(cli::query(&q, &mut con).await, 0, "{}", text(&con.err));
    let out = text(&con.out);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("SEQ") && lines[0].ends_with("VALUE"),
        "{out}"
    );
    assert_eq!(lines.len(), 6, "{out}");
    for (line, row) in lines[1..].iter().zip(&rows) {
        assert!(line.starts_with(&row.ts), "{line}");
        assert!(line.contains("t1/boiler/count"), "{line}");
        assert!(
            line.ends_with(&format!("  {}", row.value.unwrap())),
            "{line}"
        );
    }
    assert_eq!(text(&con.err), "5 row(s)\n");

    q.format = Format::Csv;
    let mut con = console();
    assert_eq!(cli::query(&q, &mut con).await, 0);
    let out = text(&con.out);
    let lines: Vec<&str> = out.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0],
        "seq,ts,ts_ms,topic,device,point,value,unit,payload,qos,retain"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{},{},{},t1/boiler/count,boiler,count,{},,\"{{\"\"value\"\":",
            rows[0].seq,
            rows[0].ts,
            rows[0].ts_ms,
            rows[0].value.unwrap()
        )),
        "{}",
        lines[1]
    );
    assert_eq!(lines.len(), 6);

    q.format = Format::Json;
    q.limit = 2;
    q.order = OrderArg::Desc;
    let mut con = console();
    assert_eq!(cli::query(&q, &mut con).await, 0);
    let v: Value = serde_json::from_slice(&con.out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["seq"].as_u64(), Some(rows[4].seq));
    assert!(
        text(&con.err).contains("more rows match"),
        "{}",
        text(&con.err)
    );

    // A bad argument: the daemon's explanation, exit 2.
    let mut bad = query_args(d.target());
    bad.from = Some("last tuesday".into());
    let mut con = console();
    assert_eq!(cli::query(&bad, &mut con).await, 2);
    assert!(
        text(&con.err).starts_with("fieldbridge: parameter `from`: invalid time `last tuesday`"),
        "{}",
        text(&con.err)
    );

    d.stop().await;

    // The daemon gone: a clear message, exit 1.
    let mut con = console();
    assert_eq!(cli::status(&args, &mut con).await, 1);
    assert_eq!(
        text(&con.err),
        format!(
            "fieldbridge: cannot reach fieldbridge at {}: connection refused — is it running? is `api.bind` set?\n",
            args.target.api.as_deref().unwrap()
        )
    );
    let mut con = console();
    assert_eq!(
        cli::query(&query_args(args.target.clone()), &mut con).await,
        1
    );
    assert!(text(&con.err).contains("connection refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_reported_at_start() {
    let d = Daemon::start().await;
    let state: Arc<dyn ApiState> = d.app.clone();
    let e = api::serve(state, d.api, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "cannot listen on {} for the HTTP API (`api.bind`): ",
            d.api
        )),
        "{e}"
    );
    d.stop().await;
}

/// Sends `head` (request line and headers, without the final blank line) and `body` on a new connection;
/// returns the status and the body.
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_to_close(&mut s, "an answer in time").await
}

/// Reads until the server closes `s` (within [`WAIT`]); returns the answer's status and body.
async fn read_to_close(s: &mut tokio::net::TcpStream, what: &str) -> (u16, String) {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect(what)
        .expect("read");
    let answer = text(&answer);
    let status = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Issue 10: the token (no token, wrong token, right token), the `Host` check against DNS rebinding, and the
/// lockout after repeated failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_the_host_check_and_the_failed_attempt_limit() {
    let d = Daemon::start().await;
    let host = format!("Host: {}", d.api);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d._dir.path().join("api-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }
    assert_eq!(d.token.len(), 64);

    // Reads need no token by default; state changes do.
    let (s, _) = raw(
        d.api,
        &format!("GET /api/v1/devices HTTP/1.1\r\n{host}"),
        "",
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = raw(d.api, &format!("POST /api/reload HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("needs the API token"), "{b}");
    let (s, b) = raw(
        d.api,
        &format!(
            "POST /api/reload HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {}x",
            d.token
        ),
        "",
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("wrong API token"), "{b}");
    let (s, b) = raw(
        d.api,
        &format!("POST /api/v1/devices/boiler/points/sp HTTP/1.1\r\n{host}"),
        "50",
    )
    .await;
    assert_eq!(s, 401, "a write without the token: {b}");
    let (s, b) = raw(
        d.api,
        &format!(
            "POST /api/reload HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {}",
            d.token
        ),
        "",
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own name. Refused, reads too,
    // with or without the token; the loopback names pass.
    for path in ["/api/v1/history", "/health", "/", "/api/reload"] {
        let (s, b) = raw(
            d.api,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {}",
                d.api.port(),
                d.token
            ),
            "",
        )
        .await;
        assert_eq!(s, 403, "{path}: {b}");
    }
    let (s, _) = raw(
        d.api,
        &format!("GET /health HTTP/1.1\r\nHost: localhost:{}", d.api.port()),
        "",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = raw(d.api, "GET /health HTTP/1.1\r\nHost: 127.0.0.1:1", "").await;
    assert_eq!(s, 403, "another port is another origin");

    // Requests without a token are refused but are not guesses: however many, the token still works
    // (a scraper without the token used to lock the operator out).
    for _ in 0..20 {
        let (s, _) = raw(d.api, &format!("POST /api/reload HTTP/1.1\r\n{host}"), "").await;
        assert_eq!(s, 401);
    }
    let (s, b) = raw(
        d.api,
        &format!(
            "POST /api/reload HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {}",
            d.token
        ),
        "",
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Repeated wrong tokens lock the address out, even with the right token afterwards.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (s, _) = raw(
            d.api,
            &format!(
                "POST /api/reload HTTP/1.1\r\n{host}\r\nAuthorization: Bearer wrong-token-123456"
            ),
            "",
        )
        .await;
        statuses.push(s);
    }
    // One wrong token above already counted: nine more 401s, then 429.
    assert_eq!(statuses[..9], [401; 9], "{statuses:?}");
    assert!(statuses[9..].iter().all(|s| *s == 429), "{statuses:?}");
    let (s, b) = raw(
        d.api,
        &format!(
            "POST /api/reload HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {}",
            d.token
        ),
        "",
    )
    .await;
    assert_eq!(s, 429, "{b}");
    assert!(b.contains("too many failed token attempts"), "{b}");
    d.stop().await;
}

/// Issue 10: a device map symlinked to a secret file (shadow format) makes the reload fail; the 422 names
/// the position and key path, never the file's contents. Nor does any other error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_never_contain_file_contents() {
    let d = Daemon::start().await;
    let dir = d._dir.path();
    let secret =
        "root:$6$Zq3kR8sT$wB1c9Kx0yT4mJv7nQe2LpH5aRz8dFu3gYi6oNs1Xc0VbMt9Wq.:19700:0:99999:7:::";
    std::fs::write(
        dir.join("shadow"),
        format!("{secret}\ndaemon:*:19700:0:99999:7:::\n"),
    )
    .unwrap();
    std::fs::create_dir(dir.join("devices")).unwrap();
    std::os::unix::fs::symlink(dir.join("shadow"), dir.join("devices/meter.yaml")).unwrap();
    // A second map with a secret-looking value where a number belongs.
    std::fs::write(
        dir.join("devices/pump.yaml"),
        "devices:\n  - name: pump\n    protocol: sim\n    poll_interval: hunter2-secret-value\n    points: []\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{cfg}device_maps: [\"devices/*.yaml\"]\n"),
    )
    .unwrap();

    let (status, body) = d.call(Method::POST, "/api/reload").await;
    assert_eq!(status, 422, "{body}");
    for leaked in ["$6$", "Zq3kR8sT", "root:", "daemon:", "hunter2", "19700"] {
        assert!(!body.contains(leaked), "`{leaked}` in {body}");
    }
    let doc: Value = serde_json::from_str(&body).unwrap();
    let errors: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let meter = dir.join("devices/meter.yaml").display().to_string();
    let pump = dir.join("devices/pump.yaml").display().to_string();
    assert!(
        errors.iter().any(|e| e.starts_with(&format!("{meter}:1:"))),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{pump}:4:20: devices[0].poll_interval: "))),
        "{errors:#?}"
    );

    // Other refusals: parameters, unknown endpoints, bad bodies.
    for (m, p) in [
        (Method::GET, "/api/v1/history?every=banana&device=boiler"),
        (Method::GET, "/api/v1/history?from=root:$6$x"),
        (Method::GET, "/nope"),
        (Method::POST, "/api/v1/devices/boiler/points/nope"),
    ] {
        let (s, b) = d.call(m, p).await;
        assert!((400..500).contains(&s), "{p}: {s} {b}");
        assert!(!b.contains("Zq3kR8sT") && !b.contains("hunter2"), "{b}");
    }
    d.stop().await;
}

/// Issue 10: API v1 — buckets, latest values, pages, did-you-mean, the OpenAPI document, and a write that
/// takes the same path as an MQTT `…/set` request (and is answered on `…/set/result` too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_history_buckets_latest_and_write_back() {
    let d = Daemon::start().await;
    rows_of(&d, "temp", 12).await;

    let v = d
        .get_json("/api/v1/history?device=boiler&point=temp&every=1s&from=-5m")
        .await;
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{v}");
    assert_eq!(series[0]["unit"], "°C");
    let buckets = series[0]["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty(), "{v}");
    let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert!(total >= 12, "{v}");
    for b in buckets {
        let (min, max, avg) = (
            b["min"].as_f64().unwrap(),
            b["max"].as_f64().unwrap(),
            b["avg"].as_f64().unwrap(),
        );
        assert!(
            min <= avg && avg <= max && (10.0..=20.0).contains(&avg),
            "{b}"
        );
        assert_eq!(b["start_ms"].as_i64().unwrap() % 1000, 0);
    }

    let e = d
        .refused(
            Method::GET,
            "/api/v1/history?device=boiler&every=fortnightly",
            400,
        )
        .await;
    assert!(e.starts_with("parameter `every`"), "{e}");
    let e = d
        .refused(
            Method::GET,
            "/api/v1/history?device=boiler&every=1m&cursor=1.2",
            400,
        )
        .await;
    assert!(e.contains("not paged"), "{e}");
    let e = d
        .refused(Method::GET, "/api/v1/history?device=boilr", 404)
        .await;
    assert_eq!(e, "no device `boilr` in the log; did you mean `boiler`?");

    // Pages.
    let p1 = d
        .get_json("/api/v1/history?device=boiler&point=count&limit=2")
        .await;
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = d
        .get_json(&format!(
            "/api/v1/history?device=boiler&point=count&limit=2&cursor={cursor}"
        ))
        .await;
    assert!(p2["rows"][0]["seq"].as_u64() > p1["rows"][1]["seq"].as_u64());

    let values = d
        .get_json("/api/v1/history?device=boiler&point=count&fields=values&limit=3")
        .await;
    assert_eq!(values["rows"].as_array().unwrap().len(), 3, "{values}");
    assert_eq!(values["rows"][0]["seq"], p1["rows"][0]["seq"]);
    assert_eq!(values["rows"][0]["value"], p1["rows"][0]["value"]);
    let e = d
        .refused(
            Method::GET,
            "/api/v1/history?device=boiler&fields=some",
            400,
        )
        .await;
    assert!(e.starts_with("parameter `fields`"), "{e}");

    let latest = d.get_json("/api/v1/latest?device=boiler").await;
    let topics: Vec<&str> = latest["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        topics,
        ["t1/boiler/count", "t1/boiler/sp", "t1/boiler/temp"]
    );
    assert_eq!(latest["rows"][2]["unit"], "°C");

    let points = d.get_json("/api/v1/points?device=boiler").await;
    let writable: Vec<(String, bool)> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["point"].as_str().unwrap().to_string(),
                p["writable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(writable.contains(&("sp".into(), true)), "{writable:?}");
    assert!(writable.contains(&("temp".into(), false)), "{writable:?}");
    for path in ["/api/v1/bridges", "/api/v1/store", "/api/v1/devices"] {
        d.get_json(path).await;
    }

    // The write: answered by the command task, also on `…/set/result` as for an MQTT write.
    let watcher = d.app.broker.link("test-watch");
    watcher
        .subscribe(
            "t1/boiler/sp/set/result",
            fieldbridge::mqtt::QoS::AtLeastOnce,
        )
        .unwrap();
    let (s, b) = d
        .client()
        .request_with_body(
            Method::POST,
            "/api/v1/devices/boiler/points/sp",
            bytes::Bytes::from_static(b"{\"value\": 55.5}"),
        )
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 200, "{}", text(&b));
    let doc: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(doc["ok"], true);
    let published = tokio::time::timeout(WAIT, watcher.recv()).await.unwrap();
    let published: Value = serde_json::from_slice(&published.msg.payload).unwrap();
    assert_eq!(published["ok"], true);
    eventually("the written setpoint read back", || async {
        let v = d.get_json("/api/v1/latest?device=boiler&point=sp").await;
        (v["rows"][0]["reading"] == serde_json::json!(55.5)).then_some(())
    })
    .await;

    for (path, body, want) in [
        ("/api/v1/devices/boiler/points/temp", "1", 409),
        ("/api/v1/devices/boiler/points/spp", "1", 404),
        ("/api/v1/devices/boilr/points/sp", "1", 404),
        ("/api/v1/devices/boiler/points/sp", "", 400),
    ] {
        let (s, b) = d
            .client()
            .request_with_body(Method::POST, path, bytes::Bytes::from(body))
            .await
            .unwrap();
        assert_eq!(s.as_u16(), want, "{path}: {}", text(&b));
    }
    let (s, b) = d
        .client()
        .request_with_body(
            Method::POST,
            "/api/v1/devices/boiler/points/sp",
            bytes::Bytes::from(vec![b'1'; 5000]),
        )
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 413, "{}", text(&b));

    let doc = d.get_json("/api/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/api/v1/history",
        "/api/v1/latest",
        "/api/v1/devices/{device}/points/{point}",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p}");
    }
    d.stop().await;
}

/// Reads from `s` until `end` has been received; returns everything read.
async fn read_until(s: &mut tokio::net::TcpStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(end.len()).any(|w| w == end) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    text(&got)
}

/// Reads one answer on a kept-alive connection (its body sized by `Content-Length`): status and body.
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut got = read_until(s, b"\r\n\r\n").await.into_bytes();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = text(&got[..head_end]);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut buf = [0u8; 4096];
    while got.len() < head_end + len {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the body in time")
            .expect("read");
        assert!(n > 0, "closed in the body: {}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let status = head[9..12].parse().unwrap();
    (status, text(&got[head_end..]))
}

/// Waits until the server closes `s` (end of file, or a reset), failing after [`WAIT`].
async fn assert_closed(s: &mut tokio::net::TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("{what} was not closed within {WAIT:?}"),
        }
    }
}

/// Sends `request` on a new connection; returns the status and body once the server has answered and
/// closed the connection.
async fn answer_and_close(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut s, "an answer, and the connection closed, in time").await
}

/// Connections that send nothing, or stay idle after an answer, cannot lock other clients out: at the
/// connection limit a new client is served at once and the connection idle longest is closed for it
/// (oldest first); a connection in the middle of a request is never the one closed. (It used to be 64
/// connections, then every other client waited for the 10 s header timeout, indefinitely if they reconnected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_lock_a_new_client_out() {
    // A limit of 4, and timeouts far beyond the test's WAIT: only closing an idle connection can serve the
    // new client in time.
    let limits = api::Limits {
        max_connections: 4,
        header_timeout: Duration::from_secs(600),
        body_timeout: Duration::from_secs(600),
    };
    let d = Daemon::start_with(CONFIG, limits).await;
    let host = format!("Host: {}", d.api);

    // 1. Busy: a write whose body is still to come (the `100 Continue` says its handler is reading it).
    let mut busy = tokio::net::TcpStream::connect(d.api).await.unwrap();
    busy.write_all(
        format!(
            "POST /api/v1/devices/boiler/points/sp HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {}\r\n\
             Expect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            d.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let go_on = read_until(&mut busy, b"\r\n\r\n").await;
    assert!(go_on.starts_with("HTTP/1.1 100"), "{go_on}");
    // 2. Kept alive after one answer.
    let mut kept = tokio::net::TcpStream::connect(d.api).await.unwrap();
    kept.write_all(format!("GET /health HTTP/1.1\r\n{host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);
    // 3 and 4: connected, sending nothing.
    let mut silent1 = tokio::net::TcpStream::connect(d.api).await.unwrap();
    let silent2 = tokio::net::TcpStream::connect(d.api).await.unwrap();

    // Four open: a new client is answered; the kept-alive connection, idle longest, made room.
    let (s, b) = raw(d.api, &format!("GET /health HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(s, 200, "{b}");
    assert_closed(&mut kept, "the connection idle longest").await;
    // Full again: the next one makes room, the first silent connection (idle longer than the others).
    let silent3 = tokio::net::TcpStream::connect(d.api).await.unwrap();
    let (s, b) = raw(d.api, &format!("GET /health HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(s, 200, "{b}");
    assert_closed(&mut silent1, "the next connection idle longest").await;
    // The busy connection, the oldest of all, was left alone: its write completes.
    busy.write_all(b"50").await.unwrap();
    let (s, b) = read_response(&mut busy).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"ok\":true"), "{b}");
    drop((silent2, silent3));
    d.stop().await;
}

/// A write's body must arrive in time: announced too large, it is refused at once; shorter than announced,
/// or chunked without end, the request is answered 408 and the connection closed (it used to be held forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_must_arrive_in_time() {
    let limits = api::Limits {
        body_timeout: Duration::from_millis(300),
        ..api::Limits::default()
    };
    let d = Daemon::start_with(CONFIG, limits).await;
    let head = format!(
        "POST /api/v1/devices/boiler/points/sp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}",
        d.api, d.token
    );

    let (s, b) = answer_and_close(
        d.api,
        &format!("{head}\r\nContent-Length: 1000000000\r\n\r\n"),
    )
    .await;
    assert_eq!(s, 413, "{b}");
    assert!(b.contains("at most 4096 bytes"), "{b}");

    let (s, b) = answer_and_close(d.api, &format!("{head}\r\nContent-Length: 10\r\n\r\n5")).await;
    assert_eq!(s, 408, "{b}");
    assert!(
        b.contains("the request body did not arrive within 0.3 s"),
        "{b}"
    );

    let (s, b) = answer_and_close(
        d.api,
        &format!("{head}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n5\r\n"),
    )
    .await;
    assert_eq!(s, 408, "{b}");

    // Chunks that keep coming and never end: the connection ends in time (408, or a reset when more of the
    // body arrived after the answer: the server closes with unread data).
    let s = tokio::net::TcpStream::connect(d.api).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    tx.write_all(format!("{head}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        // Traffic, not synchronisation: a client trickling its body, a chunk every 50 ms, until the server
        // hangs up.
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        loop {
            pace.tick().await;
            if tx.write_all(b"1\r\n5\r\n").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(WAIT, rx.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "a body without end held the connection");
    let answer = text(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    writer.abort();

    // Still serving, and a write whose body comes in time works.
    let (s, b) = raw(d.api, &head, "61").await;
    assert_eq!(s, 200, "{b}");
    d.stop().await;
}

/// A device that cannot be reached, for write answers from the device side.
const FLAKY: &str = "  - name: flaky
    protocol: sim
    poll_interval: 100ms
    connection: {failure_rate: 1.0}
    points:
      - name: sp
        signal: setpoint
        initial: 42
        type: float
        writable: true
";

/// A value the gateway refuses is the client's to fix (422); only what the device does is a gateway error
/// (502/504). `-d 999` for a point of range 30..80 used to be 502 Bad Gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_refusals_say_whose_fault_it_is() {
    let d = Daemon::start_with(&format!("{CONFIG}{FLAKY}"), api::Limits::default()).await;
    eventually("the boiler online", || async {
        let v = d.get_json("/api/devices").await;
        (v["devices"][0]["status"] == "online").then_some(())
    })
    .await;
    let write = |path: &'static str, body: &'static str| {
        let c = d.client();
        async move {
            let (s, b) = c
                .request_with_body(Method::POST, path, bytes::Bytes::from(body))
                .await
                .unwrap();
            (s.as_u16(), text(&b))
        }
    };
    for value in [
        "999",
        "29",
        "abc",
        "NaN",
        "inf",
        "-inf",
        "{\"value\": \"hot\"}",
    ] {
        let (s, b) = write("/api/v1/devices/boiler/points/sp", value).await;
        assert_eq!(s, 422, "{value}: {b}");
        let doc: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(doc["ok"], false, "{b}");
        assert!(
            doc["error"].as_str().unwrap().starts_with("invalid value"),
            "{value}: {b}"
        );
    }
    let (s, b) = write("/api/v1/devices/boiler/points/sp", "61").await;
    assert_eq!(s, 200, "{b}");
    // The device side: unreachable.
    let (s, b) = write("/api/v1/devices/flaky/points/sp", "50").await;
    assert_eq!(s, 502, "{b}");
    assert!(b.contains("device unreachable"), "{b}");
    d.stop().await;
}

/// A reload applies what it can and says, per key, what only a restart applies — in its answer (API, CLI)
/// and in the log, every time while it differs from what runs (a second reload used to answer `notes: []`).
/// A listener that cannot be bound again is said as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_notes_every_setting_that_needs_a_restart() {
    let d = Daemon::start().await;
    let (s, b) = d.call(Method::POST, "/api/reload").await;
    assert_eq!(s, 200, "{b}");
    let doc: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(doc["notes"], serde_json::json!([]), "nothing changed");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let api_port = crate::util::free_low_port();
    let changed = CONFIG
        .replace(
            "api:\n  enabled: false\n",
            &format!("api:\n  bind: 127.0.0.1:{api_port}\n  auth_reads: true\n"),
        )
        .replace(
            "  path: ./fb.db\n",
            "  path: ./elsewhere.db\n  synchronous: normal\n",
        )
        .replace("max_bytes: 64MiB", "max_bytes: 128MiB")
        .replace(
            "    - bind: 127.0.0.1:0\n",
            &format!("    - bind: 127.0.0.1:0\n    - name: second\n      bind: {taken_addr}\n"),
        )
        .replace(
            "gateway:\n  id: t1\n",
            "gateway:\n  id: t1\n  status_topic: t1/gateway-state\n",
        )
        .replace("devices:\n  - name: boiler", "devices:\n  - name: boiler2");
    assert_ne!(changed, CONFIG);
    std::fs::write(&d.config, &changed).unwrap();
    let want = [
        format!(
            "api.bind changed (disabled → 127.0.0.1:{api_port}): takes effect at the next restart"
        ),
        "api.auth_reads changed (false → true): takes effect at the next restart".to_string(),
        format!(
            "storage.path changed ({} → {}): takes effect at the next restart",
            d._dir.path().join("fb.db").display(),
            d._dir.path().join("elsewhere.db").display()
        ),
        "storage.max_bytes changed (67108864 → 134217728): takes effect at the next restart"
            .to_string(),
        "storage.synchronous changed (full → normal): takes effect at the next restart".to_string(),
    ];

    // SIGHUP's path: the daemon's own reload.
    let summary = within("reload", d.app.reload())
        .await
        .expect("a valid config");
    assert_eq!(summary.added, ["boiler2"], "applied: {summary:?}");
    assert_eq!(summary.removed, ["boiler"]);
    assert_eq!(summary.notes.len(), want.len() + 1, "{:#?}", summary.notes);
    assert_eq!(summary.notes[..want.len()], want, "{:#?}", summary.notes);
    // A new `gateway.status_topic` is applied: the gateway's retained `online` is there now.
    let status = d.app.broker.link("test-status");
    status
        .subscribe("t1/gateway-state", fieldbridge::mqtt::QoS::AtLeastOnce)
        .unwrap();
    let online = within("the retained gateway status", status.recv()).await;
    assert_eq!(&online.msg.payload[..], b"online");
    let listener = &summary.notes[want.len()];
    assert!(
        listener.starts_with(&format!(
            "broker.listeners[1] is not listening: listener `second`: cannot bind {taken_addr}: "
        )),
        "{listener}"
    );

    // The API's, again: still the same notes (what runs still differs), the listener tried again.
    let (s, b) = d.call(Method::POST, "/api/reload").await;
    assert_eq!(s, 200, "{b}");
    let doc: Value = serde_json::from_str(&b).unwrap();
    let notes: Vec<&str> = doc["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(notes.len(), want.len() + 1, "{notes:#?}");
    assert_eq!(notes[..want.len()], want, "{notes:#?}");
    assert!(notes[want.len()].starts_with("broker.listeners[1] is not listening"));

    // The CLI prints them; once the port is free the listener comes up and its note goes.
    drop(taken);
    let mut con = console();
    let code = cli::reload(&ReloadArgs { target: d.target() }, &mut con).await;
    assert_eq!(code, 0, "{}", text(&con.err));
    let out = text(&con.out);
    for w in &want {
        assert!(out.contains(&format!("note: {w}\n")), "{out}");
    }
    assert!(!out.contains("broker.listeners"), "{out}");
    assert_eq!(d.app.listener_addrs().len(), 2);
    assert_eq!(d.app.listener_addrs()[1], taken_addr);

    // What runs is what was started with: the log file, and reads without the token.
    let st: StatusDoc = serde_json::from_value(d.get_json("/api/status").await).unwrap();
    assert!(st.store.path.ends_with("fb.db"), "{}", st.store.path);
    let (s, b) = raw(
        d.api,
        &format!("GET /api/v1/devices HTTP/1.1\r\nHost: {}", d.api),
        "",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    d.stop().await;
}

/// Buckets (`every`) refuse what applies to rows by its own name (`fields` used to be reported as
/// `cursor`, `limit` was ignored), and honour `order`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_refuse_row_parameters_by_name_and_honour_order() {
    let d = Daemon::start().await;
    rows_of(&d, "count", 3).await;
    let e = d
        .refused(
            Method::GET,
            "/api/v1/history?every=1m&device=boiler&point=count&fields=values",
            400,
        )
        .await;
    assert!(
        e.starts_with("parameter `fields` does not go with `every`"),
        "{e}"
    );
    assert!(!e.contains("cursor"), "{e}");
    let e = d
        .refused(
            Method::GET,
            "/api/v1/history?every=1m&device=boiler&point=count&limit=5",
            400,
        )
        .await;
    assert!(
        e.starts_with("parameter `limit` does not go with `every`"),
        "{e}"
    );

    // Two buckets at least (100 ms readings in 200 ms buckets), then the same range newest first.
    let base = eventually("readings in two buckets", || async {
        let v = d
            .get_json("/api/v1/history?every=200ms&device=boiler&point=count&from=-5m")
            .await;
        let n = v["series"][0]["buckets"].as_array().map_or(0, |b| b.len());
        (n >= 2).then(|| v["to_ms"].as_i64().unwrap())
    })
    .await;
    let range = format!(
        "every=200ms&device=boiler&point=count&from={}&to={base}",
        base - 300_000
    );
    let asc = d
        .get_json(&format!("/api/v1/history?{range}&order=asc"))
        .await;
    let desc = d
        .get_json(&format!("/api/v1/history?{range}&order=desc"))
        .await;
    let starts = |v: &Value| -> Vec<i64> {
        v["series"][0]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["start_ms"].as_i64().unwrap())
            .collect()
    };
    let (a, mut z) = (starts(&asc), starts(&desc));
    assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
    z.reverse();
    assert_eq!(a, z, "desc is asc reversed");

    // The CLI: its default --limit is not sent with --every; one given is refused by name (exit 2).
    let mut args = query_args(d.target());
    args.device = Some("boiler".into());
    args.point = Some("count".into());
    args.every = Some("1m".into());
    args.from = Some("-5m".into());
    let mut con = console();
    assert_eq!(cli::query(&args, &mut con).await, 0, "{}", text(&con.err));
    args.limit = 5;
    let mut con = console();
    assert_eq!(cli::query(&args, &mut con).await, 2);
    assert!(
        text(&con.err).starts_with("fieldbridge: parameter `limit` does not go with `every`"),
        "{}",
        text(&con.err)
    );
    d.stop().await;
}

/// The CLI says what it cannot read and where: a directory given as the log, a log file that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_the_log_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = query_args(Target {
        api: None,
        config: dir.path().join("none.yaml"),
        token: None,
    });
    args.db = Some(dir.path().to_path_buf());
    let mut con = console();
    assert_eq!(cli::query(&args, &mut con).await, 1);
    assert_eq!(
        text(&con.err),
        format!(
            "fieldbridge: cannot read the log: {} is a directory, not a log file: pass the database file \
             itself (`storage.path` of the configuration, e.g. {})\n",
            dir.path().display(),
            dir.path().join("fieldbridge.db").display()
        )
    );

    let missing = dir.path().join("missing.db");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::store_main(
        &cli::StoreCmd::Check {
            db: missing.clone(),
        },
        &mut out,
        &mut err,
    );
    assert_eq!(code, 1);
    assert_eq!(
        text(&err),
        format!(
            "fieldbridge store: no log file {} (no such file in {}; the log is `storage.path` of the \
             configuration)\n",
            missing.display(),
            dir.path().display()
        )
    );
    assert!(!missing.exists(), "a check creates nothing");
}
