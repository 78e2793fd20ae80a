//! API v1: history with time buckets and page cursors, latest values from the log, devices, points, bridges,
//! store, write-back, and the OpenAPI document (`GET /api/openapi.json`).
//!
//! A write (`POST /api/v1/devices/{device}/points/{point}`) is published on the embedded broker as
//! `{gateway}/{device}/{point}/set`, exactly as an MQTT client's write request, with an MQTT 5 response topic
//! of its own: the pipeline's command task executes it and answers as it answers every write (the answer also
//! goes to `…/set/result`). The HTTP answer is that answer, with the status of who refused it (see
//! [`write_refusal_status`]): `422` a value the gateway refuses, `502`/`504` the device. Its body must arrive
//! within the server's body timeout ([`super::BODY_TIMEOUT`]), else `408` and the connection is closed.
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::model::{
    BucketsDoc, HistoryDoc, HistoryRow, LatestDoc, SeriesView, ValueRow, ValuesDoc, WriteDoc,
};
use super::params::{self, ParamError};
use super::{
    bad_request, blocking, pairs, point_rules, reject, store_error, unless_configured, Ctx, Reject,
};
use crate::store::{BucketQuery, HistoryQuery};

/// The OpenAPI 3.1 document of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// Largest write request body: a value, not a document.
pub const MAX_WRITE_BODY: usize = 4096;

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/history", get(history))
        .route("/api/v1/latest", get(latest))
        .route("/api/v1/devices", get(super::devices))
        .route("/api/v1/points", get(super::points))
        .route("/api/v1/bridges", get(bridges))
        .route("/api/v1/store", get(store))
        .route("/api/v1/devices/{device}/points/{point}", post(write))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The parameters of `GET /api/v1/history`.
pub const V1_HISTORY_PARAMS: &[&str] = &[
    "device", "point", "topic", "from", "to", "limit", "order", "cursor", "every", "fields",
];

/// Encodes a page cursor: the last row's key.
pub fn encode_cursor(ts_ms: i64, seq: u64) -> String {
    format!("{ts_ms}.{seq}")
}

/// Decodes a page cursor.
pub fn decode_cursor(text: &str) -> Result<(i64, i64), ParamError> {
    text.split_once('.')
        .and_then(|(t, s)| Some((t.parse().ok()?, s.parse::<u64>().ok()? as i64)))
        .filter(|(_, s)| *s >= 0)
        .ok_or_else(|| {
            ParamError(format!(
                "parameter `cursor`: `{text}` is not a cursor (pass `next_cursor` of the previous answer)"
            ))
        })
}

/// Parses a bucket width (`1m`, `15m`, `1h`, `30s`) to ms.
pub fn parse_every(text: &str) -> Result<i64, ParamError> {
    fieldbridge_sdk::config::parse_duration(text)
        .ok()
        .map(|d| d.as_millis())
        .filter(|ms| *ms >= 1 && *ms <= 366 * 86_400_000)
        .map(|ms| ms as i64)
        .ok_or_else(|| {
            ParamError(format!(
                "parameter `every`: `{text}` is not a bucket width between 1ms and 366d (`30s`, `1m`, `1h`)"
            ))
        })
}

/// The parameters of `GET /api/v1/history` that apply to rows, not to buckets (`every`), and why.
const ROWS_ONLY: [(&str, &str); 3] = [
    (
        "cursor",
        "`cursor` pages rows; bucket answers are not paged (narrow `from`/`to`)",
    ),
    (
        "fields",
        "`fields` picks the fields of rows (`values`: time and value); buckets are aggregates (count, min, \
         max, avg, first, last) — drop `fields` for buckets, or `every` for readings",
    ),
    (
        "limit",
        "`limit` counts rows; the number of buckets is set by `from`, `to` and `every` — narrow the range \
         or widen the buckets (`order=desc` puts the newest bucket first)",
    ),
];

/// Puts each series' buckets in the query's order: the store returns them oldest first.
pub fn order_buckets(series: &mut [crate::store::Series], order: crate::store::Order) {
    if order == crate::store::Order::Desc {
        for s in series {
            s.buckets.reverse();
        }
    }
}

/// What `GET /api/v1/history` asks: rows (with a page cursor) or buckets.
#[derive(Debug, Clone, PartialEq)]
pub enum V1Query {
    /// Rows.
    Rows(HistoryQuery),
    /// Buckets.
    Buckets(BucketQuery),
    /// Readings: time and value only, from the index (`fields=values`).
    Values(HistoryQuery),
}

/// Parses the parameters of `GET /api/v1/history`. Buckets default to the last hour.
pub fn v1_query(pairs: &[(String, String)], now: SystemTime) -> Result<V1Query, ParamError> {
    let p = params::check_params(pairs, V1_HISTORY_PARAMS)?;
    let base: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor" && k != "every" && k != "fields")
        .cloned()
        .collect();
    let mut q = params::history_query(&base, now)?;
    if let Some(every) = p.get("every") {
        // What applies to rows only is refused by name; `order` applies to buckets too (newest first).
        for (name, why) in ROWS_ONLY {
            if p.contains_key(name) {
                return Err(ParamError(format!(
                    "parameter `{name}` does not go with `every`: {why}"
                )));
            }
        }
        let every_ms = parse_every(every)?;
        let to_ms = match q.to_ms {
            Some(t) => t,
            None => params::parse_time("now", now).map_err(ParamError)?,
        };
        let from_ms = q.from_ms.unwrap_or(to_ms - 3_600_000);
        q.from_ms = None;
        q.to_ms = None;
        let b = BucketQuery {
            filter: q,
            from_ms,
            to_ms,
            every_ms,
        };
        crate::store::check_buckets(&b).map_err(|e| ParamError(e.to_string()))?;
        return Ok(V1Query::Buckets(b));
    }
    if let Some(c) = p.get("cursor") {
        q.after = Some(decode_cursor(c)?);
    }
    match p.get("fields").copied() {
        None | Some("all") => Ok(V1Query::Rows(q)),
        Some("values") => Ok(V1Query::Values(q)),
        Some(other) => Err(ParamError(format!(
            "parameter `fields`: `{other}` is not `all` (whole rows) or `values` (time and value only)"
        ))),
    }
}

async fn history(
    State(ctx): State<Ctx>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Reject> {
    let pairs = pairs(q)?;
    let q = v1_query(&pairs, SystemTime::now()).map_err(|e| bad_request(e.0))?;
    let state = ctx.state.clone();
    match q {
        V1Query::Buckets(b) => {
            let (from_ms, to_ms, every_ms) = (b.from_ms, b.to_ms, b.every_ms);
            let (device, point) = (b.filter.device.clone(), b.filter.point.clone());
            let order = b.filter.order;
            let cfg = ctx.state.config();
            let series = blocking(move || state.buckets(&b)).await?;
            let mut series = unless_configured(series, &cfg, device.as_deref(), point.as_deref())
                .map_err(|e| store_error(e, &ctx.state.store_path()))?;
            order_buckets(&mut series, order);
            let series = series
                .into_iter()
                .map(|s| SeriesView {
                    unit: match (&s.device, &s.point) {
                        (Some(d), Some(p)) => point_rules(&cfg, d, p).and_then(|r| r.unit.clone()),
                        _ => None,
                    },
                    topic: s.topic.to_string(),
                    device: s.device.map(|d| d.to_string()),
                    point: s.point.map(|p| p.to_string()),
                    skipped: s.skipped,
                    buckets: s.buckets,
                })
                .collect();
            Ok(Json(BucketsDoc {
                from_ms,
                to_ms,
                every_ms,
                series,
            })
            .into_response())
        }
        V1Query::Values(q) => {
            let (rows, limit) = rows_of(&ctx, q, |s, q| s.readings(q)).await?;
            Ok(Json(values_page(rows, limit)).into_response())
        }
        V1Query::Rows(q) => {
            let (rows, limit) = rows_of(&ctx, q, |s, q| s.query(q)).await?;
            Ok(Json(page(rows, limit)).into_response())
        }
    }
}

/// Runs a query of rows off the runtime, asking one more than its limit (which tells whether there is
/// more). Returns the rows and the limit.
async fn rows_of<R: Send + 'static>(
    ctx: &Ctx,
    mut q: HistoryQuery,
    run: Run<R>,
) -> Result<(Vec<R>, usize), Reject> {
    let limit = q.limit;
    q.limit += 1;
    Ok((logged(ctx, q, run).await?, limit))
}

type Run<R> = fn(&dyn super::ApiState, &HistoryQuery) -> Result<Vec<R>, crate::store::StoreError>;

/// Runs a store query off the runtime; a configured name that is not logged yet means no rows.
async fn logged<R: Send + 'static>(
    ctx: &Ctx,
    q: HistoryQuery,
    run: Run<R>,
) -> Result<Vec<R>, Reject> {
    let (device, point) = (q.device.clone(), q.point.clone());
    let state = ctx.state.clone();
    let rows = blocking(move || run(&*state, &q)).await?;
    unless_configured(
        rows,
        &ctx.state.config(),
        device.as_deref(),
        point.as_deref(),
    )
    .map_err(|e| store_error(e, &ctx.state.store_path()))
}

/// One page of rows: at most `limit`, with the cursor of the next page when there is more.
pub fn page(rows: Vec<crate::store::LogRow>, limit: usize) -> HistoryDoc {
    let more = rows.len() > limit;
    let rows: Vec<HistoryRow> = rows.into_iter().take(limit).map(HistoryRow::from).collect();
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.ts_ms, r.seq)))
        .flatten();
    HistoryDoc {
        rows,
        limit,
        more,
        next_cursor,
    }
}

/// One page of readings (`fields=values`).
pub fn values_page(rows: Vec<crate::store::Reading>, limit: usize) -> ValuesDoc {
    let more = rows.len() > limit;
    let rows: Vec<ValueRow> = rows
        .into_iter()
        .take(limit)
        .map(|r| ValueRow {
            ts: params::ms_to_rfc3339(r.ts_ms),
            ts_ms: r.ts_ms,
            seq: r.seq,
            topic: r.topic.to_string(),
            value: r.value,
        })
        .collect();
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.ts_ms, r.seq)))
        .flatten();
    ValuesDoc {
        rows,
        limit,
        more,
        next_cursor,
    }
}

async fn latest(
    State(ctx): State<Ctx>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Reject> {
    let pairs = pairs(q)?;
    let q = params::history_query(&pairs, SystemTime::now()).map_err(|e| bad_request(e.0))?;
    let rows = logged(&ctx, q, |s, q| s.latest(q)).await?;
    Ok(Json(LatestDoc {
        rows: rows.into_iter().map(HistoryRow::from).collect(),
    })
    .into_response())
}

async fn bridges(State(ctx): State<Ctx>) -> Result<Response, Reject> {
    let doc = blocking(move || super::Snapshot::take(&*ctx.state).into_doc()).await?;
    Ok(Json(serde_json::json!({ "bridges": doc.bridges })).into_response())
}

async fn store(State(ctx): State<Ctx>) -> Result<Response, Reject> {
    let doc = blocking(move || super::Snapshot::take(&*ctx.state).into_doc()).await?;
    Ok(Json(doc.store).into_response())
}

/// Whether `name` can stand as one topic level of a write request.
fn level_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.contains(['/', '+', '#', '\0'])
}

/// Reads a request body of at most `max` bytes, which must arrive within `timeout`: a client that announces
/// more, or sends it too slowly (or never), is answered and its connection closed.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, Reject> {
    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is a value: at most {max} bytes"),
        )
        .closing()
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(bad_request(format!("cannot read the request body: {e}")).closing()),
        Err(_) => Err(reject(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (send the value with its request)",
                timeout.as_secs_f64()
            ),
        )
        .closing()),
    }
}

/// The HTTP status of a write the command task refused. Its answer carries the text of the
/// [`fieldbridge_sdk::CommandError`], whose beginning says who refused: the gateway (the value, the point:
/// 4xx, the client must change the request) or the device (5xx, the request was fine).
pub fn write_refusal_status(error: &str) -> StatusCode {
    if error.starts_with("invalid value") {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if error.starts_with("unknown point") {
        StatusCode::NOT_FOUND
    } else if error.starts_with("point `") && error.ends_with("is read-only") {
        StatusCode::CONFLICT
    } else if error == "timed out" {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        // The device refused it, cannot be reached, read back another value, or its adapter is down.
        StatusCode::BAD_GATEWAY
    }
}

async fn write(
    State(ctx): State<Ctx>,
    Path((device, point)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Reject> {
    let body = read_body(&headers, body, MAX_WRITE_BODY, ctx.limits.body_timeout).await?;
    if !level_ok(&device) || !level_ok(&point) {
        return Err(bad_request(
            "device and point names cannot be empty nor contain `/`, `+`, `#`",
        ));
    }
    let cfg = ctx.state.config();
    let Some(spec) = cfg.devices.iter().find(|d| *d.adapter.name == *device) else {
        let names: Vec<&str> = cfg.devices.iter().map(|d| &*d.adapter.name).collect();
        return Err(reject(
            StatusCode::NOT_FOUND,
            fieldbridge_sdk::config::unknown_name_message("device", &device, &names),
        ));
    };
    let Some(rules) = spec.points.iter().find(|p| *p.name == *point) else {
        let names: Vec<&str> = spec.points.iter().map(|p| &*p.name).collect();
        return Err(reject(
            StatusCode::NOT_FOUND,
            fieldbridge_sdk::config::unknown_name_message(
                &format!("point of `{device}`"),
                &point,
                &names,
            ),
        ));
    };
    if !rules.writable {
        return Err(reject(
            StatusCode::CONFLICT,
            format!("point `{point}` of `{device}` is read-only (`writable: true` in its device map makes it writable)"),
        ));
    }
    if let Err(e) = crate::pipeline::parse_command_value(&body) {
        return Err(bad_request(e.to_string()));
    }
    let answer = ctx
        .state
        .write_point(&device, &point, body)
        .await
        .map_err(|e| reject(StatusCode::GATEWAY_TIMEOUT, e))?;
    let doc: WriteDoc = serde_json::from_slice(&answer).unwrap_or_else(|_| WriteDoc {
        ok: false,
        error: Some("unreadable answer from the command task".into()),
        ts: String::new(),
    });
    let status = match (&doc.ok, &doc.error) {
        (true, _) => StatusCode::OK,
        (false, Some(e)) => write_refusal_status(e),
        (false, None) => StatusCode::BAD_GATEWAY,
    };
    Ok((status, Json(doc)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn v1_params() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let q = v1_query(&p(&[("device", "m"), ("every", "1m")]), now).unwrap();
        let V1Query::Buckets(b) = q else {
            panic!("{q:?}")
        };
        assert_eq!((b.every_ms, b.to_ms - b.from_ms), (60_000, 3_600_000));
        let e = v1_query(&p(&[("device", "m"), ("every", "soon")]), now).unwrap_err();
        assert!(e.0.contains("parameter `every`"), "{e}");
        let e = v1_query(&p(&[("every", "1m")]), now).unwrap_err();
        assert!(e.0.contains("need a device"), "{e}");
        let e = v1_query(
            &p(&[("device", "m"), ("every", "1ms"), ("from", "-7d")]),
            now,
        )
        .unwrap_err();
        assert!(e.0.contains("buckets in the range"), "{e}");
        let V1Query::Rows(r) = v1_query(&p(&[("cursor", "5.7")]), now).unwrap() else {
            panic!()
        };
        assert_eq!(r.after, Some((5, 7)));
        assert!(v1_query(&p(&[("cursor", "x")]), now).is_err());
        assert!(v1_query(&p(&[("cursor", "1.-1")]), now).is_err());
    }

    /// What applies to rows only is refused with buckets, naming the parameter really given; `order` is
    /// kept for the buckets.
    #[test]
    fn buckets_refuse_row_parameters_by_name() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let bucket = |extra: (&str, &str)| {
            v1_query(
                &p(&[("device", "m"), ("point", "n"), ("every", "1m"), extra]),
                now,
            )
        };
        let e = bucket(("fields", "values")).unwrap_err().0;
        assert!(
            e.starts_with("parameter `fields` does not go with `every`: "),
            "{e}"
        );
        assert!(!e.contains("cursor"), "{e}");
        let e = bucket(("limit", "5")).unwrap_err().0;
        assert!(
            e.starts_with("parameter `limit` does not go with `every`: "),
            "{e}"
        );
        let e = bucket(("cursor", "1.2")).unwrap_err().0;
        assert!(e.contains("not paged"), "{e}");
        let Ok(V1Query::Buckets(b)) = bucket(("order", "desc")) else {
            panic!("order goes with buckets")
        };
        assert_eq!(b.filter.order, crate::store::Order::Desc);
    }

    /// Every refusal of the command task maps to the status that says whose fault it is: the value or the
    /// point (4xx) or the device (5xx).
    #[test]
    fn write_refusals_map_to_statuses() {
        use fieldbridge_sdk::CommandError as E;
        let cases = [
            (E::InvalidValue("999 is outside 30..80".into()), 422),
            (E::UnknownPoint("x".into()), 404),
            (E::ReadOnly("x".into()), 409),
            (E::Device("exception 2".into()), 502),
            (E::Transport("connection refused".into()), 502),
            (
                E::Verify {
                    wrote: "1".into(),
                    read: "2".into(),
                },
                502,
            ),
            (E::Timeout, 504),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            assert_eq!(write_refusal_status(&text).as_u16(), want, "{text}");
        }
        assert_eq!(write_refusal_status("something new").as_u16(), 502);
    }
}
