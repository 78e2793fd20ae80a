//! The read-ahead task: reads the log from the bridge's position in batches (on the blocking pool: SQLite
//! calls block; rows still in the writer's in-memory tail are taken from there, inline), keeps the rows a
//! forward rule matches, maps their topics and builds the PUBLISH each will become. The session then only
//! encodes and writes. The channel holds a few batches: enough to keep the socket busy while the next batch is
//! read, little enough that memory stays flat whatever the backlog (it lives on disk).
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::rules::Rules;
use crate::mqtt::{Properties, Publish, QoS};
use crate::store::{now_ms, LogRow, Store, StoreError};

/// Rows per read. A thousand rows is about a millisecond of SQLite and a few hundred microseconds of wire
/// at 100 bytes per message: large enough to amortise the query, small enough to keep latency low when live.
pub(crate) const BATCH_ROWS: usize = 1000;
/// Batches read ahead.
const AHEAD: usize = 4;

/// A row that will be forwarded.
#[derive(Debug)]
pub(crate) struct Item {
    pub seq: u64,
    pub publish: Publish,
}

/// The forwarded rows among the log rows up to `upto`.
#[derive(Debug)]
pub(crate) struct Batch {
    pub items: VecDeque<Item>,
    /// Every row up to this seq was read (the rest matched no rule, or was gone).
    pub upto: u64,
    /// Rows whose MQTT 5 message expiry passed while they waited in the log (not sent, as the spec says).
    pub expired: u64,
    /// Rows whose mapped topic came out empty (a `{1}` of `a/#` matching `a`): not sent.
    pub unroutable: u64,
}

/// Aborts the task when dropped: the reader lives exactly as long as the bridge task that owns it.
pub(crate) struct Reader {
    pub rx: mpsc::Receiver<Batch>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reading after `after`.
pub(crate) fn spawn(name: String, store: Store, rules: Arc<Rules>, after: u64) -> Reader {
    let (tx, rx) = mpsc::channel(AHEAD);
    let task = tokio::spawn(run(name, store, rules, after, tx));
    Reader { rx, task }
}

async fn run(name: String, store: Store, rules: Arc<Rules>, mut pos: u64, tx: mpsc::Sender<Batch>) {
    let mut appends = store.subscribe_appends();
    let mut failing = false;
    loop {
        if appends.wait_for(|head| *head > pos).await.is_err() {
            return; // the store shut down
        }
        let head = store.head();
        // Keeping up: the rows just committed are in the writer's memory; mapping a commit's worth here costs
        // less than handing it to the blocking pool and back.
        if let Some(rows) = store.read_recent(pos, BATCH_ROWS) {
            let upto = rows.last().map_or(pos, |r| r.seq);
            let batch = map_rows(&rules, rows, upto, now_ms());
            pos = batch.upto;
            if tx.send(batch).await.is_err() {
                return;
            }
            continue;
        }
        let s = store.clone();
        let r = rules.clone();
        // The rules are applied on the blocking pool too: mapping a thousand rows (topics rendered, items
        // allocated) would otherwise hold up the connection's thread, and the acks waiting on it.
        let read = move || {
            s.read_from(pos, BATCH_ROWS).map(|rows| {
                // No rows although the head is ahead: they were removed (retention); pass them.
                let upto = rows.last().map_or(head, |r| r.seq);
                map_rows(&r, rows, upto, now_ms())
            })
        };
        let batch = match tokio::task::spawn_blocking(read).await {
            Ok(Ok(batch)) => {
                if failing {
                    tracing::info!(bridge = %name, "bridge {name}: reading the log works again");
                    failing = false;
                }
                batch
            }
            Ok(Err(StoreError::Closed)) | Err(_) => return,
            Ok(Err(e)) => {
                if !failing {
                    tracing::error!(bridge = %name, "bridge {name}: cannot read the log: {e}; retrying");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        pos = batch.upto;
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Applies the forward rules to rows read from the log.
pub(crate) fn map_rows(rules: &Rules, rows: Vec<LogRow>, upto: u64, now: i64) -> Batch {
    let mut batch = Batch {
        items: VecDeque::with_capacity(rows.len()),
        upto,
        expired: 0,
        unroutable: 0,
    };
    for row in rows {
        let Some(rule) = rules.forward_for(&row.topic) else {
            continue;
        };
        let Some(topic) = rule.template.render(&rule.filter, &row.topic) else {
            batch.unroutable += 1;
            continue;
        };
        let mut properties = row
            .props
            .as_deref()
            .map(|p| p.to_properties())
            .unwrap_or_else(Properties::default);
        if let Some(expiry) = properties.message_expiry_interval {
            let waited = u64::try_from(now.saturating_sub(row.ts_ms)).unwrap_or(0) / 1000;
            if waited >= u64::from(expiry) {
                batch.expired += 1;
                continue;
            }
            properties.message_expiry_interval = Some(expiry - waited as u32);
        }
        // QoS 1 unless the rule says otherwise (QoS 2 rows keep 2): a row sent at QoS 0 is "delivered" once
        // its bytes are written, which a link that dies slowly (accepting bytes, delivering none) loses.
        let qos = rule.qos.unwrap_or(if row.qos >= 2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        });
        batch.items.push_back(Item {
            seq: row.seq,
            publish: Publish {
                dup: false,
                qos,
                retain: rule.retain && row.retain,
                topic,
                packet_id: 0,
                properties,
                payload: row.payload,
            },
        });
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::ForwardRule;

    fn row(seq: u64, topic: &str, qos: u8) -> LogRow {
        LogRow {
            seq,
            ts_ms: 0,
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"1"),
            qos,
            retain: false,
            props: None,
            device: None,
            point: None,
            num: None,
        }
    }

    fn rule(filter: &str, qos: Option<QoS>) -> ForwardRule {
        ForwardRule {
            filter: filter.into(),
            topic: "{topic}".into(),
            qos,
            retain: true,
        }
    }

    /// Issue 9: readings are QoS 0 at the source, yet go upstream at QoS 1 (acknowledged, so the cursor only
    /// moves on PUBACK) unless a rule explicitly says `qos: 0`.
    #[test]
    fn forwards_at_qos_1_unless_a_rule_says_0() {
        let rules = Rules::compile(
            &[
                rule("fire/#", Some(QoS::AtMostOnce)),
                rule("pin/#", Some(QoS::ExactlyOnce)),
                rule("#", None),
            ],
            &[],
        );
        let rows = vec![
            row(1, "gw/d/p", 0),
            row(2, "gw/d/q", 1),
            row(3, "gw/d/r", 2),
            row(4, "fire/x", 1),
            row(5, "pin/x", 0),
        ];
        let b = map_rows(&rules, rows, 5, 0);
        let qos: Vec<QoS> = b.items.iter().map(|i| i.publish.qos).collect();
        assert_eq!(
            qos,
            [
                QoS::AtLeastOnce,
                QoS::AtLeastOnce,
                QoS::ExactlyOnce,
                QoS::AtMostOnce,
                QoS::ExactlyOnce
            ]
        );
    }
}
